"""The adaptation benchmark end to end at tiny size: every method's curve, the tables and last lines."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_collapse_table_reads_the_model_and_the_critic_at_the_best_evaluation_and_the_end():
    """adapt_efficiency.py's issue-34 table on made-up runs: values at each run's best evaluation and
    at its end (the last logged at or before the step), collapsed runs apart, a critic whose mean Q
    passed 2 / (1 − γ) counted as diverged."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import adapt_efficiency

    def run(scores, obs, q):
        steps = [500, 1000, 1500]
        return {"steps": steps, "scores": scores,
                "metrics": {"charts/model_error/obs_h1": list(zip(steps, obs)), "charts/q_mean": [[250, 1.0], *zip(steps, q)]}}

    runs = {"mrcom": [run([10, 40, 20], [1.0, 1.5, 3.0], [5, 50, 450]),  # collapsed, the critic diverged
                      run([10, 30, 30], [2.0, 1.0, 1.0], [5, 20, 30])],
            "sac": [run([5, 25, 10], [9, 9, 9], [3, 4, 5])]}
    del runs["sac"][0]["metrics"]["charts/model_error/obs_h1"]  # a model-free run has no model errors
    lines = adapt_efficiency.suspect_table(runs)
    rows = {line.split(" |")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "(" in line.split("|")[1]}
    cells = lambda name: [c.strip() for c in rows[name].strip("|").split("|")]  # noqa: E731
    assert cells("mrcom (collapsed)") == ["mrcom (collapsed)", "1", "1.5 → 3", "", "50 → 450", "1/1"]
    assert cells("mrcom (the rest)") == ["mrcom (the rest)", "1", "1 → 1", "", "20 → 30", "0/1"]
    assert cells("sac (collapsed)") == ["sac (collapsed)", "1", "", "", "4 → 5", "0/1"]
    assert "sac (the rest)" not in rows
    assert adapt_efficiency.at_step([[250, 1.0], [750, 2.0]], 500) == 1.0


@pytest.mark.slow
def test_the_adaptation_benchmark_runs_every_method_and_resumes(tmp_path):
    out = tmp_path / "adapt"
    command = [sys.executable, str(ROOT / "benchmarks" / "adapt_efficiency.py"), "--smoke", "--targets", "tuning",
               "--adapt-domains", "cheetah", "--seeds", "0,1", "--world-models", "2", "--out", str(out),
               "--tracking-uri", "", "--jobs", "1"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    curves = json.loads((out / "curves-tuning.json").read_text())
    methods = {"mrcom", "null", "sac", "sac_utd", "droq", "naive_reward", "naive_obs"}
    assert set(curves["test_id/cheetah/0"]) == methods
    for method, curve in curves["test_id/cheetah/0"].items():
        assert len(curve["scores"]) == 2 and len(curve["scores"][0]) == len(curve["steps"]) == 3, method
    runs = sorted(out.glob("runs/*/*.json"))
    assert len(runs) == len(methods) * 2
    record = json.loads(runs[0].read_text())
    if record["method"] in ("mrcom", "null", "naive_reward", "naive_obs"):
        assert set(record["provenance"]) == {"world_model_seed", "model_settings", "model_weights", "data"}
    # Seeds 0 and 1 adapt with world models 0 and 1: two models, two digests.
    mrcom = [json.loads(p.read_text()) for p in runs if p.parent.name.startswith("mrcom-")]
    assert {r["provenance"]["world_model_seed"] for r in mrcom} == {0, 1}
    assert len({r["provenance"]["model_weights"] for r in mrcom}) == 2
    assert "cheetah: mrcom_over_best_control=" in first.stdout.strip().splitlines()[-1]
    assert first.stdout.strip().splitlines()[-2].startswith("cheetah: collapse_rate_mrcom=")
    assert "Holm over the 6 comparisons" in (out / "report-tuning.md").read_text()

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # every run is stored: none reruns
    assert again.returncode == 0 and "  ran " not in again.stdout
    assert f"{len(methods) * 2} of {len(methods) * 2} runs stored, 0 to run" in again.stdout
    assert again.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]

    # What ships is what was measured: `mrcom adapt` with the loop config (and --smoke's tiny values as
    # overrides) on the benchmark's own world model repeats the benchmark's MrCoM run of seed 0.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import adapt_efficiency

    overrides = [item for key, value in adapt_efficiency.SMOKE_LOOP.items() for item in (f"--adaptation.{key}", str(value))]
    adapt = subprocess.run(
        [sys.executable, "-m", "mrcom_lightning.cli", "adapt", "--config", str(ROOT / "configs" / "adapt" / "loop.yaml"),
         "--ckpt_path", str(out / "world-model-seed0.ckpt"), "--target", "[test_id/cheetah/0]", "--seeds", "[0]",
         "--progress", "false", *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert adapt.returncode == 0, adapt.stderr[-3000:]
    row = adapt.stdout.strip().splitlines()[-1].split()
    assert row[:3] == ["test_id/cheetah-0", "mrcom", "0"]
    recorded = json.loads(next(p for p in runs if p.parent.name.startswith("mrcom-") and p.name.endswith("seed0.json")).read_text())
    assert float(row[3]) == pytest.approx(recorded["scores"][-1], abs=0.005)

    # --report-only finds every stored run without a world model, and reports the same.
    report = subprocess.run(command + ["--report-only"], capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"report only: {len(methods) * 2} of {len(methods) * 2} runs stored" in report.stdout
    assert report.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]


def test_the_benchmark_reads_the_shipped_configs_into_the_settings_it_runs():
    """configs/adapt/*.yaml parse into the benchmark's settings: the loop through `mrcom adapt`'s own
    parser (so `mrcom adapt --config configs/adapt/loop.yaml` runs exactly these), every control
    derived from it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import adapt_efficiency

    from mrcom_lightning.adaptation import AdaptationConfig

    args = adapt_efficiency.parse_args([])
    configs = adapt_efficiency.method_configs(args)
    loop = configs["mrcom"][1]
    assert loop == AdaptationConfig().replace(env_steps=5000, episode_steps=250, eval_every=500, eval_episodes=5,
                                              **{"sac.warmup_steps": 1000})
    assert configs["null"][1] == loop.replace(**{"rollout.imagination": "null"})
    assert configs["sac"][1].sac.updates_per_step == 1 and configs["sac_utd"][1].sac.updates_per_step == 8
    assert configs["droq"][1].sac.critic_dropout == 0.01 and configs["droq"][1].sac.critic_layer_norm
    assert {method: uses for method, (uses, _) in configs.items()} == {
        "mrcom": True, "null": True, "sac": False, "sac_utd": False, "droq": False}
    dataset, world_model, training = adapt_efficiency.read_world_model_config(args)
    assert dataset.scenarios.domains == ("cheetah", "walker") and training.steps == 10_000
    assert world_model.embed_dim == 64 and world_model.context_length == 8
    assert world_model.obs_normalization == "standardize"  # as the adaptation defaults were measured


def test_the_reward_head_flags_reach_the_benchmarks_models_and_leave_the_defaults():
    """`--reward-head residual` makes benchmarks/imagination.py and adapt_efficiency.py build their
    world models with the residual head; left out, each keeps its config's (absolute)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import adapt_efficiency
    import imagination

    assert imagination.model_config(imagination.parse_args([])) == imagination.REDUCED
    assert imagination.REDUCED.reward_head == "absolute"
    residual = imagination.model_config(imagination.parse_args(["--reward-head", "residual"]))
    assert residual == dataclasses.replace(imagination.REDUCED, reward_head="residual")
    _, default, _ = adapt_efficiency.read_world_model_config(adapt_efficiency.parse_args([]))
    _, changed, _ = adapt_efficiency.read_world_model_config(adapt_efficiency.parse_args(["--reward-head", "residual"]))
    assert default.reward_head == "absolute" and changed == dataclasses.replace(default, reward_head="residual")


def test_the_guard_table_and_its_choice_match_a_hand_computation():
    """benchmarks/adapt_guards.py on made-up curves: the statistics, the Holm correction and the
    rule that picks a guard (collapse rate no higher than the null model's, curve mean ≥ 0.9 × the
    unguarded loop's, then the highest final)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import adapt_guards

    from mrcom_lightning.stats import holm, paired_p_value

    pairs = [("test_id/cheetah/0", 0), ("test_id/cheetah/0", 1), ("test_id/walker/0", 0)]
    curves = {  # three runs per row; unguarded collapses once (40 -> 20), share_cap never does
        "unguarded": [[10, 40, 20], [10, 30, 28], [5, 10, 12]],
        "null": [[5, 20, 19], [5, 15, 15], [2, 4, 6]],
        "share_cap": [[10, 35, 34], [10, 30, 30], [5, 9, 12]],
        "penalty": [[1, 2, 3], [1, 2, 3], [1, 2, 4]],  # never collapses, but loses the early gain
        "safeguard": [[10, 50, 10], [10, 40, 40], [5, 10, 12]],  # collapses: not chosen
    }
    rows = {name: {pair: {"scores": scores, "metrics": {"charts/q_mean": [[500, 300.0 if name == "safeguard" else 10.0]]}}
                   for pair, scores in zip(pairs, runs)} for name, runs in curves.items()}
    table, last, figures = adapt_guards.summarise(rows)
    stats = figures["stats"]
    assert stats["unguarded"]["collapse_rate"] == pytest.approx(1 / 3)
    assert stats["share_cap"]["final"] == [34, 30, 12]
    assert stats["share_cap"]["curve"] == pytest.approx([79 / 3, 70 / 3, 26 / 3])
    assert figures["choice"] == "share_cap"
    assert stats["safeguard"]["diverged"] == 3 and stats["share_cap"]["diverged"] == 0
    assert stats["safeguard"]["final_q"] == [300.0] * 3  # the last logged value, not the largest
    assert "| safeguard | " in table and "| 300.0 ± 0.0 | 3/3 |" in table
    assert last.startswith("guard_choice=share_cap final=25.33 ")
    assert last.endswith("collapse_rate=0.00 null_collapse_rate=0.00")
    # Holm over the 6 comparisons (3 guards × final and curve), in adapt_guards.GUARDS' order.
    raw = []
    for name in ("safeguard", "penalty", "share_cap"):
        for measure in ("final", "curve"):
            raw.append(paired_p_value(stats[name][measure], stats["unguarded"][measure]))
    expected = dict(zip([f"{n}/{m}" for n in ("safeguard", "penalty", "share_cap") for m in ("final", "curve")], holm(raw)))
    for key, (ratio, q) in figures["versus"].items():
        assert q == pytest.approx(expected[key], nan_ok=True)
    assert figures["versus"]["share_cap/final"][0] == pytest.approx(76 / 60)
    assert "Holm over the 6 comparisons" in table

    del rows["share_cap"]  # only penalty keeps collapse at the null model's rate, and it lost the gain
    assert adapt_guards.summarise(rows)[2]["choice"] == "none"

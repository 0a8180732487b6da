"""`mrcom study`: every variant × seed cell on one dataset, the report's ratio and p-value columns,
finished cells skipped on a re-run."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from mrcom_lightning import adapt_table, study
from mrcom_lightning.cli import main
from mrcom_lightning.compare import cell_text

DOMAINS = ("cheetah", "walker")


def fake_metrics(variant: str, seed: int) -> dict[str, float]:
    """Known test errors: a variant's error is (its rank + 1) × (1 + 0.1 × seed) on every split and
    domain (so its differences to MrCoM vary over seeds, as a paired test needs)."""
    value = (list(study.VARIANTS).index(variant) + 1) * (1 + 0.1 * seed)
    return {
        f"{split}/{domain}/{prefix}{error}": value if not prefix else 10.0 + seed
        for split in study.SPLITS
        for domain in DOMAINS
        for error in study.ERRORS
        for prefix in ("", "naive_")
    } | {f"{split}/loss": value for split in study.SPLITS} | {
        f"{split}/{domain}/{study.RAW_ERROR}": value**2 for split in study.SPLITS for domain in DOMAINS
    }


@pytest.fixture
def fake_cells(monkeypatch, tmp_path):
    """Runs no `mrcom` command: a cell's `test` writes the fake metrics its variant and seed would
    give, `collect` marks its dataset complete. The cells' calls are in `calls` (the collects in
    `calls.collects`), their environments in `calls.envs`; the MLflow store is in `tmp_path`. The
    cells must run in this process (`--workers 1`), where the fake is."""
    calls = FakeCalls()
    stems = {Path(path).stem if path else "base": name for name, path in study.VARIANTS.items()}
    real_run = subprocess.run

    def run(command, check=False, env=None, **kwargs):
        if command[:3] != [sys.executable, "-m", "mrcom_lightning.cli"]:  # git, asked by the tracking
            return real_run(command, check=check, env=env, **kwargs)
        if command[3] == "collect":
            dataset = yaml.safe_load(Path(command[command.index("--config") + 1]).read_text())["dataset"]
            Path(dataset["root"]).mkdir(parents=True, exist_ok=True)
            (Path(dataset["root"]) / "dataset.json").write_text(json.dumps({"complete": True}))
            calls.collects.append(command)
            return subprocess.CompletedProcess(command, 0)
        calls.append(command)
        calls.envs.append(env or {})
        if command[3] == "test":
            folder = Path(command[command.index("--ckpt_path") + 1]).parent.parent
            stem, seed = folder.name.rsplit("-seed", 1)
            (folder / study.TEST_METRICS).parent.mkdir(parents=True, exist_ok=True)
            (folder / study.TEST_METRICS).write_text(json.dumps(fake_metrics(stems[stem], int(seed))))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr("mrcom_lightning.launch.subprocess.run", run)
    monkeypatch.chdir(tmp_path)
    return calls


class FakeCalls(list):
    def __init__(self):
        super().__init__()
        self.envs = []
        self.collects = []

    def clear(self):
        super().clear()
        self.envs.clear()
        self.collects.clear()


def parent_runs(cwd: Path, experiment: str = "generalization") -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns.db'}")
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id]) if found else [])


def test_every_variant_and_seed_is_fitted_tested_and_reported(fake_cells, tmp_path, capsys):
    root = tmp_path / "study"
    main(["study", "--root", str(root), "--seeds", "[0, 1, 2]", "--workers", "1"])
    assert len(fake_cells) == 2 * len(study.DEFAULT_VARIANTS) * 3  # a fit and a test per cell
    (collect,) = fake_cells.collects  # the dataset every cell reads, collected once before them
    assert yaml.safe_load(Path(collect[collect.index("--config") + 1]).read_text())["dataset"]["root"] == "data/study"
    fits = [c for c in fake_cells if c[3] == "fit"]
    assert {"mamba", "cadm"} <= set(study.DEFAULT_VARIANTS) and "history_rssm" not in study.DEFAULT_VARIANTS
    for name in study.DEFAULT_VARIANTS:
        path = study.VARIANTS[name]
        for seed in (0, 1, 2):
            cell = root / study.cell_name(path, seed)
            assert (cell / "done.json").is_file() and (cell / study.TEST_METRICS).is_file(), (name, seed)
    # Every cell uses the same dataset: the same configs, only the variant's overlay and the seed differ.
    roots = {tuple(a for a in c if a.startswith("configs/study") or a == "configs/multi.yaml") for c in fits}
    assert roots == {("configs/multi.yaml", "configs/study/generalization.yaml", "configs/study/cpu.yaml")}

    text = (root / "report.md").read_text()
    assert text.strip() in capsys.readouterr().out
    assert "| test_ood_dynamics/open_loop_rel_mse | mrcom | rssm | rssm ÷ mrcom | p (Holm) |" in text
    assert text.count("| naive | naive ÷ mrcom | p (Holm) |") == len(study.SPLITS) * len(study.ERRORS)
    naive_row = next(line for line in text.splitlines() if line.startswith("| overall |"))
    assert f"| 11.0000 ± 0.8165 (n=3) | {11 / 1.1:.4f} | – |" in naive_row  # the naive forecast: 10 + seed, untested
    # rssm's errors are 2 (1 + 0.1 seed) against mrcom's 1 + 0.1 seed: ratio 2, paired p of those samples,
    # Holm over 6 variants x 4 splits x 4 errors, all with the same p.
    mrcom, rssm = [1.0, 1.1, 1.2], [2.0, 2.2, 2.4]
    p = stats.ttest_rel(rssm, mrcom).pvalue
    comparisons = (len(study.DEFAULT_VARIANTS) - 1) * len(study.SPLITS) * len(study.ERRORS)
    assert f"over this report's {comparisons} comparisons" in text
    row = next(line for line in text.splitlines() if line.startswith("| overall |") and "2.2000 ± 0.1633 (n=3)" in line)
    assert f"| {2.0:.4f} | {min(1.0, comparisons * p):.3g} |" in row
    # The summary lines end the report: MrCoM over the RSSM, MAMBA (4x MrCoM's errors), CaDM (3x), and the
    # models without L_mv (8x) and L_ms (7x); every ratio's paired p is the same here, so Holm's is 5x it.
    p = stats.ttest_rel(mrcom, rssm).pvalue
    lines = [f"mrcom_over_{name}_ood_open_loop={1 / factor:.3f} p={min(1.0, 5 * p):.3g} p_raw={p:.3g} seeds=3"
             for name, factor in (("rssm", 2), ("mamba", 4), ("cadm", 3), ("no_meta_value", 8), ("no_meta_state", 7))]
    assert text.rstrip().splitlines()[-5:] == lines
    # Before them, the same comparisons on the raw MSE (the fake one is the square: ratios squared, the
    # paired p of the squares, Holm over these five apart).
    raw = [f"mrcom_over_{name}_ood_open_loop_raw_mse={1 / factor**2:.3f} p={min(1.0, 5 * q):.3g} p_raw={q:.3g} seeds=3"
           for name, factor in (("rssm", 2), ("mamba", 4), ("cadm", 3), ("no_meta_value", 8), ("no_meta_state", 7))
           for q in [stats.ttest_rel([v**2 for v in mrcom], [(factor * v) ** 2 for v in mrcom]).pvalue]]
    assert "### The summary's comparisons in raw units (open_loop_mse, a sensitivity check)" in text
    assert text.rstrip().splitlines()[-11:-6] == raw
    assert (root / "open_loop_rel_mse.png").stat().st_size > 0 and (root / "open_loop_reward_mse.png").is_file()
    rows = (root / "report.csv").read_text().splitlines()
    assert rows[0] == "split,error,domain,variant,mean,std,seeds,ratio_to_mrcom,p_paired,p_holm"
    assert len(rows) == 1 + len(study.SPLITS) * len(study.ERRORS) * (len(DOMAINS) + 1) * (len(study.DEFAULT_VARIANTS) + 1)

    # One parent MLflow run for the grid: every cell gets its id, the report is its artifact.
    client, runs = parent_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_name == "study-cpu"
    parent = runs[0].info.run_id
    assert {env[study.tracking.PARENT_RUN_ENV] for env in fake_cells.envs} == {parent}
    assert {a.path for a in client.list_artifacts(parent, "report")} >= {"report/report.md", "report/report.csv"}
    metrics = runs[0].data.metrics
    assert metrics["mrcom_over_rssm_ood_open_loop"] == pytest.approx(0.5, abs=1e-3)
    assert metrics["mrcom_over_mamba_ood_open_loop"] == pytest.approx(0.25, abs=1e-3)
    assert metrics["mrcom_over_cadm_ood_open_loop"] == pytest.approx(1 / 3, abs=1e-3)
    assert metrics["mrcom_over_cadm_ood_open_loop_seeds"] == 3
    assert metrics["mrcom_over_no_meta_value_ood_open_loop"] == pytest.approx(1 / 8, abs=1e-3)
    assert metrics["mrcom_over_no_meta_state_ood_open_loop_p"] == pytest.approx(min(1.0, 5 * p), rel=1e-2)  # as printed (3 digits)
    assert metrics["mrcom_over_no_meta_state_ood_open_loop_p_raw"] == pytest.approx(p, rel=1e-2)
    assert metrics["mrcom_over_rssm_ood_open_loop_raw_mse"] == pytest.approx(0.25, abs=1e-3)  # the sensitivity lines too
    assert client.get_experiment(runs[0].info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    fake_cells.clear()
    main(["study", "--root", str(root), "--seeds", "[0, 1, 2]", "--workers", "1"])
    assert fake_cells == [] and fake_cells.collects == []  # every cell is done: a re-run only reports
    assert [r.info.run_id for r in parent_runs(tmp_path)[1]] == [parent]  # into the same parent run


def test_holm_corrected_paired_p_values_match_a_hand_computation(tmp_path):
    """A made-up report: three variants against MrCoM on one split and error, two domains, three
    seeds. Each p is the paired t-test of the overall errors (mean over domains) by seed; Holm
    multiplies the k-th smallest of m = 3 by m − k + 1 and keeps the sequence monotone."""
    errors = {  # variant -> seed -> (cheetah, walker)
        "mrcom": {0: (1.0, 3.0), 1: (1.2, 2.6), 2: (0.9, 3.3)},
        "rssm": {0: (1.5, 3.1), 1: (1.9, 2.9), 2: (1.1, 3.5)},
        "cadm": {0: (1.1, 3.0), 1: (1.1, 2.9), 2: (1.0, 3.2)},
        "no_context": {0: (3.0, 5.0), 1: (3.3, 4.7), 2: (2.8, 5.4)},
    }
    results = {v: {s: {f"test_id/{d}/open_loop_rel_mse": e[k] for k, d in enumerate(DOMAINS)} for s, e in by_seed.items()}
               for v, by_seed in errors.items()}  # fmt: skip
    overall = {v: [np.mean(by_seed[s]) for s in (0, 1, 2)] for v, by_seed in errors.items()}
    raw = {v: stats.ttest_rel(overall[v], overall["mrcom"]).pvalue for v in ("rssm", "cadm", "no_context")}
    order = sorted(raw, key=raw.get)
    by_hand, running = {}, 0.0
    for k, v in enumerate(order):
        running = max(running, min(1.0, (3 - k) * raw[v]))
        by_hand[v] = running
    compared = study.paired_comparisons(results, list(DOMAINS), "mrcom")
    for v in raw:
        test = compared["test_id", "open_loop_rel_mse", v]
        assert test["p"] == pytest.approx(raw[v]) and test["p_holm"] == pytest.approx(by_hand[v]), v
        assert test["ratio"] == pytest.approx(np.mean(overall[v]) / np.mean(overall["mrcom"]))
    text, lines = study.report(results, tmp_path)
    assert "over this report's 3 comparisons" in text
    assert lines and all(line.startswith("mrcom_over_") and line in text for line in lines)
    row = next(line for line in text.splitlines() if line.startswith("| overall |"))
    for v in raw:
        assert f"| {np.mean(overall[v]) / np.mean(overall['mrcom']):.4f} | {by_hand[v]:.3g} |" in row, v
    assert by_hand["no_context"] < 0.05 < by_hand["cadm"]  # the correction changes what is called a difference


def test_the_adaptation_table_matches_a_hand_computation(tmp_path):
    """A made-up adaptation table: three variants and two controls on two targets, three seeds. The
    paired tests against MrCoM, Holm over the table's 8 comparisons, the bold best per column and the
    last line (the geometric mean over columns of MrCoM ÷ the best other variant) by hand."""
    finals = {  # method -> target -> final score of seeds 0, 1, 2
        "mrcom": {"test_id/cheetah-0": [50, 55, 60], "test_ood_dynamics/walker-0": [20, 25, 22]},
        "rssm": {"test_id/cheetah-0": [40, 48, 49], "test_ood_dynamics/walker-0": [30, 29, 35]},
        "cadm": {"test_id/cheetah-0": [52, 50, 61], "test_ood_dynamics/walker-0": [10, 12, 15]},
        "null": {"test_id/cheetah-0": [45, 47, 58], "test_ood_dynamics/walker-0": [21, 20, 26]},
        "sac": {"test_id/cheetah-0": [30, 35, 33], "test_ood_dynamics/walker-0": [18, 19, 17]},
    }
    records = [{"method": m, "target": t, "seed": s, "final": v, "curve_mean": v / 2, "collapsed": False,
                "steps": [10, 20], "scores": [v / 2, v]}
               for m, by_target in finals.items() for t, values in by_target.items() for s, v in enumerate(values)]  # fmt: skip
    cheetah, walker = "test_id/cheetah-0", "test_ood_dynamics/walker-0"
    raw = {(m, t): stats.ttest_rel(finals["mrcom"][t], finals[m][t]).pvalue
           for m in ("rssm", "cadm", "null", "sac") for t in (cheetah, walker)}  # fmt: skip
    by_hand, running = {}, 0.0
    for k, key in enumerate(sorted(raw, key=raw.get)):  # Holm: the k-th smallest of 8 times 8 - k, kept monotone
        running = max(running, min(1.0, (8 - k) * raw[key]))
        by_hand[key] = running
    cells = adapt_table.cells_of(records)
    compared = adapt_table.comparisons(cells, list(finals), [cheetah, walker])
    for key, test in compared.items():
        assert test["p"] == pytest.approx(raw[key]) and test["p_holm"] == pytest.approx(by_hand[key]), key
        assert test["ratio"] == pytest.approx(np.mean(finals["mrcom"][key[1]]) / np.mean(finals[key[0]][key[1]]))
    # Best other variant: CaDM on cheetah (54.3 against MrCoM's 55), the RSSM on walker (31.3 against 22.3).
    ratios = [55 / np.mean([52, 50, 61]), np.mean([20, 25, 22]) / np.mean([30, 29, 35])]
    p = max(by_hand["cadm", cheetah], by_hand["rssm", walker])
    last = (f"mrcom_over_best_other_adapt={np.sqrt(ratios[0] * ratios[1]):.3f} p={p:.3g} seeds=3 columns=2/2 "
            f"not_ahead={walker}")  # fmt: skip
    behaviour = {("expert", cheetah): {0: 40.0, 1: 44.0}, ("medium", walker): {3: 20.0}, ("expert", "test_id/hopper-0"): {0: 9.0}}
    text = adapt_table.report(records, tmp_path, ["mrcom", "rssm", "cadm"], ["null", "sac"], behaviour=behaviour)
    assert text.rstrip().splitlines()[-1] == last
    reference = text.split("## Reference: the dataset's behaviour policies")[1].split("##")[0].strip().splitlines()
    assert reference[-4:] == ["| behaviour policy | cheetah · ID #0 | walker · OOD dynamics #0 |", "|---|---|---|",
                              "| expert | 42.0 ± 2.0 (n=2) | – |", "| medium | – | 20.0 (n=1) |"]  # (not bold; hopper not a column)
    assert text.index("## Reference") < text.index("## Against mrcom")
    assert "Holm-corrected over this table's 8 comparisons" in text
    final = text.split("## Final score")[1].split("##")[0].strip().splitlines()
    assert final[0] == "| method | cheetah · ID #0 | walker · OOD dynamics #0 |"
    assert final[2] == "| mrcom | **55.0 ± 4.1 (n=3)** | 22.3 ± 2.1 (n=3) |"
    assert final[3] == "| rssm | 45.7 ± 4.0 (n=3) | **31.3 ± 2.6 (n=3)** |"
    assert [row.split("|")[1].strip() for row in final[2:]] == ["mrcom", "rssm", "cadm", "null", "sac"]
    tests = text.split("## Against mrcom")[1].splitlines()
    assert f"| cadm | {55 / np.mean([52, 50, 61]):.3f} (p={by_hand['cadm', cheetah]:.3g}, n=3) |" in "\n".join(tests)
    rows = list(csv.DictReader((tmp_path / "report_adapt.csv").open()))
    assert len(rows) == 10 and {r["kind"] for r in rows if r["method"] == "sac"} == {"control"}
    assert (tmp_path / "adapt_curves.png").stat().st_size > 0


@pytest.mark.parametrize("size", ["cpu", "gpu"])
def test_the_table_configs_parse_and_state_their_budget(size):
    """configs/study/adapt_{cpu,gpu}.yaml: `mrcom study` configs whose loop is configs/adapt/loop.yaml's
    (CPU) or the paper's budget (GPU: 100k real steps, 1000-step episodes, 10 updates per real step),
    with an ID and an OOD target per domain and the wall time stated: measured (CPU) or an estimate (GPU)."""
    path = Path(study.__file__).parents[1] / "configs" / "study" / f"adapt_{size}.yaml"
    args = study.study_parser().parse_args(["--config", str(path)])
    study.study_adapt.check_arguments(args)
    loop = study.study_adapt.read_loop(args.adapt_config, args.adapt_overrides)
    assert args.adapt and args.controls == ["null", "sac", "sac_utd", "droq"] and len(args.seeds) >= 3
    assert ("Wall time, MEASURED" if size == "cpu" else "ESTIMATE") in path.read_text()
    assert args.adapt_config == "configs/adapt/loop.yaml"
    splits = {t.split("/")[0] for t in args.adapt_targets}
    domains = {t.split("/")[1] for t in args.adapt_targets}
    assert "test_id" in splits and splits & set(study.OOD_SPLITS) and ({"cheetah", "walker"} <= domains or domains == {"*"})
    if size == "cpu":
        assert (loop.env_steps, loop.episode_steps, loop.eval_every, args.sizes) == (5000, 250, 500, "cpu")
    else:
        assert (loop.env_steps, loop.episode_steps, args.sizes, args.adapt_device) == (100_000, 1000, "paper", "cuda")
        assert study.study_adapt.updates_per_step(loop) == 10 and splits == {"test_id", *study.OOD_SPLITS}


def test_an_adaptation_stored_under_other_code_is_redone(tmp_path):
    """The study's adaptation key holds the digest of the adaptation code: it covers the loop's,
    the agent's and the models' modules (not the launcher's), an edit to one changes it, and a unit
    stored under another digest is not reused."""
    from mrcom_lightning import study_adapt
    from mrcom_lightning.scenarios import ScenarioSpec

    sources = study_adapt.adaptation_sources()
    names = {name for name, _ in sources}
    assert {"adaptation/loop.py", "agents/sac.py", "models/world_model.py", "datamodules/meta_episodes.py",
            "training.py"} <= names and "launch.py" not in names  # fmt: skip
    copies = []
    for name, path in sources:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        copies.append((name, Path(shutil.copy(path, tmp_path / name))))
    digest = study_adapt.code_digest()
    assert study_adapt.code_digest(copies) == digest  # the same sources, the same digest
    with (tmp_path / "agents" / "sac.py").open("a") as f:
        f.write("# an edit\n")
    edited = study_adapt.code_digest(copies)
    assert edited != digest

    loop = study_adapt.read_loop(study_adapt.DEFAULT_LOOP, [])
    spec = ScenarioSpec("walker")
    unit = study_adapt.Unit("sac", "test_id/walker-0", spec, 0, False, loop, None, None, tmp_path / "u.json", digest)
    unit.path.write_text(json.dumps({"key": unit.key, "final": 1.0}))
    assert unit.stored() == {"key": unit.key, "final": 1.0}
    rerun = study_adapt.Unit("sac", "test_id/walker-0", spec, 0, False, loop, None, None, unit.path, edited)
    assert rerun.stored() is None


def test_a_world_model_enters_the_key_by_its_recipe_and_its_record_by_its_weights(tmp_path):
    """A cell retrained on another machine holds another MLflow run id, trainer state and, in the last
    bits, other weights: its recipe (fit config and settings) is the same, so its finished units are
    reused, and the weights' digest tells the realisations apart; another fit config or setting is
    another recipe."""
    from mrcom_lightning import study_adapt

    def save(cell, weight=1.0, lr=3e-4, run_id="aaa", max_steps=4500):
        (tmp_path / cell / "checkpoints").mkdir(parents=True)
        (tmp_path / cell / study_adapt.FIT_CONFIG).write_text(f"trainer:\n  max_steps: {max_steps}\n")
        checkpoint = {"state_dict": {"encoder.weight": torch.full((2, 3), weight), "head.count": torch.tensor(7)},
                      "hyper_parameters": {"lr": lr}, "datamodule_hyper_parameters": {"seed": 0}, "mrcom_seed": 0,
                      "mrcom_run": {"run_id": run_id}, "optimizer_states": [{"state": {0: {"exp_avg": torch.rand(2, 3)}}}]}  # fmt: skip
        torch.save(checkpoint, path := tmp_path / cell / study_adapt.CHECKPOINT)
        return study_adapt.model_recipe(path), study_adapt.weights_digest(path)

    recipe, weights = save("a")
    assert save("b", run_id="bbb") == (recipe, weights)  # the same model, another run
    assert save("c", weight=1.0 + 1e-6, run_id="ccc") == (recipe, save("c2", weight=1.0 + 1e-6)[1]) != (recipe, weights)
    assert save("d", lr=1e-3)[0] != recipe and save("e", max_steps=3000)[0] != recipe


def test_the_report_names_a_cell_adapted_in_two_realisations():
    from mrcom_lightning.adapt_table import realisations

    one = [{"method": "mrcom", "target": t, "checkpoint": "runs/s/base-seed2/best.ckpt", "checkpoint_weights": "w1"}
           for t in ("test_id/walker-0", "test_ood/walker-0")] + [{"method": "sac", "target": "test_id/walker-0", "checkpoint": None}]  # fmt: skip
    assert realisations(one) == "World models: each cell's units adapted one realisation of its model."
    two = one + [{"method": "null", "target": "test_id/walker-0", "checkpoint": "runs/s/base-seed2/best.ckpt"}]
    text = realisations(two)
    assert "runs/s/base-seed2/best.ckpt: w1 (mrcom test_id/walker-0, mrcom test_ood/walker-0); unrecorded (null test_id/walker-0)" in text


def test_report_only_reads_the_finished_cells(fake_cells, tmp_path, capsys):
    root = tmp_path / "study"
    main(["study", "--root", str(root), "--seeds", "[0, 1]", "--variants", "[mrcom, cadm]", "--workers", "1"])
    fake_cells.clear()
    main(["study", "--root", str(root), "--seeds", "[0, 1]", "--report_only", "true"])
    assert fake_cells == []
    out = capsys.readouterr().out
    assert "mrcom (2 seeds), cadm (2 seeds)" in out and "| cadm ÷ mrcom | p (Holm) |" in out
    assert "mrcom_over_rssm_ood_open_loop=nan" in out  # no rssm cell: no summary ratio


def test_bad_variant_and_no_results_are_clear_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["study", "--root", str(tmp_path), "--variants", "[dreamer]"])
    assert "unknown ['dreamer']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["study", "--root", str(tmp_path), "--report_only", "true"])
    assert "no finished cell" in capsys.readouterr().err
    for option, value, said in (("--controls", "[redq]", "unknown ['redq']"), ("--adapt_targets", "[test_ood/walker]", "SPLIT/DOMAIN/INDEX"),
                                ("--adapt_overrides", "[--seeds, '[1]']", "`--adaptation.*` options only"),
                                ("--adapt_overrides", "[--adaptation.env_steps, x]", 'key "adaptation.env_steps"')):  # fmt: skip
        with pytest.raises(SystemExit):  # refused before any cell starts
            main(["study", "--root", str(tmp_path), "--adapt", "true", option, value])
        assert said in capsys.readouterr().err, option


TINY_VARIANTS = "[mrcom, rssm]"
TINY_BASE = "[configs/quick.yaml, configs/study/generalization.yaml]"


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Real fits and tests of two variants × two seeds on a tiny dataset, with the OOD-kind splits,
    in the returned folder (`runs`, its MLflow store `mlruns.db`); once per module: the end-to-end
    test reads it and the adaptation table's smoke test adapts its models."""
    cwd = tmp_path_factory.mktemp("tiny_study")
    overrides = ["--data.dataset.root", str(cwd / "data"), "--trainer.max_steps", "4",
                 "--trainer.val_check_interval", "2", "--trainer.limit_test_batches", "2"]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        main(["study", "--root", "runs", "--seeds", "[0, 1]", "--variants", TINY_VARIANTS, "--base", TINY_BASE,
              "--overrides", json.dumps(overrides)])  # fmt: skip
    return cwd, overrides


@pytest.mark.slow
def test_a_tiny_study_end_to_end(tiny_study, monkeypatch):
    """Real fits and tests of two variants × two seeds on a tiny dataset, with the OOD-kind splits."""
    cwd, _ = tiny_study
    monkeypatch.chdir(cwd)
    results = study.load_results(Path("runs"), ["mrcom", "rssm"], [0, 1])
    assert {v: sorted(s) for v, s in results.items()} == {"mrcom": [0, 1], "rssm": [0, 1]}
    for cells in results.values():
        for metrics in cells.values():
            for split in study.SPLITS:
                for domain in ("cheetah", "hopper", "walker"):
                    assert np.isfinite(metrics[f"{split}/{domain}/open_loop_mse"]), (split, domain)
                    assert np.isfinite(metrics[f"{split}/{domain}/one_step_reward_mse"]), (split, domain)
    text = Path("runs/report.md").read_text()
    assert all(f"### {split} · {error}" in text for split in study.SPLITS for error in study.ERRORS)
    assert "| rssm ÷ mrcom | p (Holm) |" in text
    assert text.splitlines()[-5].startswith("mrcom_over_rssm_ood_open_loop=") and "seeds=2" in text.splitlines()[-5]
    assert text.splitlines()[-3].startswith("mrcom_over_cadm_ood_open_loop=nan")  # no CaDM cell in this grid
    # In MLflow: one parent run, the 4 fits and 4 tests nested under it and named for their cell.
    client, runs = parent_runs(cwd)
    (parent,) = [r for r in runs if r.info.run_name == "study-custom"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 9 and len(children) == 8
    assert {r.info.run_name for r in children if r.data.tags["command"] == "fit"} == {
        f"quick+generalization-{method}-seed{seed}" for method in ("mrcom", "rssm") for seed in (0, 1)
    }
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


TINY_LOOP = ["--adaptation.env_steps", "40", "--adaptation.episode_steps", "20", "--adaptation.eval_every", "20",
             "--adaptation.eval_episodes", "1", "--adaptation.history_length", "8", "--adaptation.rollout.every", "10",
             "--adaptation.rollout.starts", "8", "--adaptation.fine_tune.steps", "2", "--adaptation.error_windows", "4",
             "--adaptation.sac.warmup_steps", "20", "--adaptation.sac.hidden_dim", "32", "--adaptation.sac.batch_size", "16"]  # fmt: skip


@pytest.mark.slow
def test_the_adaptation_table_of_a_tiny_study(tiny_study, tmp_path, monkeypatch, capsys):
    """`--adapt true` on the tiny study's trained cells (a copy): each variant's model and the four
    controls adapt to one OOD target with one seed and a tiny budget; every cell of the table is
    filled, and a re-run adapts nothing again."""
    cwd, overrides = tiny_study
    shutil.copytree(cwd / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)  # a fresh MLflow store: the copied parent run is not in it, a new one starts
    args = ["study", "--root", "runs", "--seeds", "[0]", "--variants", TINY_VARIANTS, "--base", TINY_BASE,
            "--overrides", json.dumps(overrides), "--workers", "1", "--adapt", "true",
            "--adapt_targets", "[test_ood_dynamics/walker/0]", "--adapt_overrides", json.dumps(TINY_LOOP)]  # fmt: skip
    main(args)
    files = sorted(Path("runs").glob("*/adapt/*.json")) + sorted(Path("runs/controls").glob("*/*.json"))
    assert [str(f) for f in files] == [
        "runs/base-seed0/adapt/test_ood_dynamics-walker-0.json", "runs/rssm-seed0/adapt/test_ood_dynamics-walker-0.json",
        *(f"runs/controls/{c}-seed0/test_ood_dynamics-walker-0.json" for c in ("droq", "null", "sac", "sac_utd"))]  # fmt: skip
    record = json.loads(files[1].read_text())
    assert record["method"] == "rssm" and record["steps"] == [20, 40] and len(record["scores"]) == 2
    assert record["final"] == record["scores"][-1] and record["checkpoint"].endswith("rssm-seed0/checkpoints/best.ckpt")
    controls = {f.parent.name: json.loads(f.read_text()) for f in files[2:]}
    assert controls["null-seed0"]["checkpoint"].endswith("base-seed0/checkpoints/best.ckpt")  # MrCoM's model
    assert controls["sac-seed0"]["checkpoint"] is None and controls["sac-seed0"]["updates_per_step"] == 1
    assert controls["sac_utd-seed0"]["updates_per_step"] == 8 and controls["droq-seed0"]["updates_per_step"] == 8
    assert controls["droq-seed0"]["settings"]["sac"]["critic_layer_norm"] is True

    text = Path("runs/report_adapt.md").read_text()
    assert text.strip() in capsys.readouterr().out
    # The reference rows: the tiny dataset's episodes on the target, their first 20 steps (the loop's episodes).
    from mrcom_lightning.data.episodes import EpisodeStore

    store = EpisodeStore(cwd / "data")
    (spec,) = [spec for spec in store.specs().values() if str(spec) == record["spec"]]
    by_policy = {}
    for info in store.index(spec.id):
        by_policy.setdefault(info.policy, []).append(100 * store.read(info.path).reward[:20].sum() / 20)
    assert by_policy
    reference = text.split("## Reference")[1].split("##")[0]
    for policy, scores in by_policy.items():
        assert f"| {policy} | {cell_text(scores, 1)} |" in reference
    final = text.split("## Final score")[1].split("##")[0].strip().splitlines()
    assert final[0] == "| method | walker · OOD dynamics #0 |"
    assert [row.split("|")[1].strip() for row in final[2:]] == ["mrcom", "rssm", "null", "sac", "sac_utd", "droq"]
    assert all("(n=1)" in row for row in final[2:]) and sum("**" in row for row in final[2:]) >= 1
    assert text.rstrip().splitlines()[-1].startswith("mrcom_over_best_other_adapt=") and "seeds=1" in text.splitlines()[-1]
    rows = Path("runs/report_adapt.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 and Path("runs/adapt_curves.png").stat().st_size > 0
    client, runs = parent_runs(tmp_path)
    (parent,) = runs
    assert {"report/report_adapt.md", "report/report_adapt.csv", "report/adapt_curves.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "report")}

    stamps = {f: f.stat().st_mtime_ns for f in files}
    main(args)  # every adaptation is stored with the same settings: none runs again
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    assert "adaptations: 6 of 6 stored, 0 to run" in capsys.readouterr().out

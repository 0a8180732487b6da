"""Behaviour agents (DESIGN.md §3): conditioned on their scenario, experts chosen per scenario,
shipped agents loaded weights-only and refused for other settings."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mrcom_lightning.agents import SAC, SACConfig
from mrcom_lightning.checkpoints import UnsafeCheckpointError
from mrcom_lightning.data import EpisodeStore
from mrcom_lightning.data import shipped as shipped_module
from mrcom_lightning.data.behaviour import (
    SUMMARY,
    agent_folder,
    agent_settings,
    evaluate_snapshots,
    select_policies,
)
from mrcom_lightning.data.cli import collect_main
from mrcom_lightning.data.collect import DatasetConfig, _collect_one, _Job, _load_agent, collect
from mrcom_lightning.data.conditioning import ConditionedEnv
from mrcom_lightning.data.shipped import dataset_settings, referenced_files
from mrcom_lightning.scenarios import SPLITS, MetaScenarioSet, ScenarioSpec, get_domain, make_env

torch.set_num_threads(1)

TINY_SAC = SACConfig(hidden_dim=32, batch_size=32, warmup_steps=60)
SCENARIOS = MetaScenarioSet(domains=("walker",), num_train=2, num_val=1, num_test_id=1, num_test_ood=1)


def tiny_config(root, **changes) -> DatasetConfig:
    config = DatasetConfig(
        root=str(root), scenarios=SCENARIOS, behaviour="sac", train_agents=True, episodes_per_scenario=2,
        test_episodes_per_scenario=1, episode_steps=40, sac_steps=400, sac=TINY_SAC, seed=0,
    )  # fmt: skip
    return dataclasses.replace(config, **changes)


def test_the_conditioned_agent_sees_the_scenario_and_acts_on_its_target_speed(tmp_path):
    spec = ScenarioSpec("cheetah", length_scale=1.1, size_scale=0.9, target_speed=0.4, seed=3)
    plain = make_env(spec, seed=1, episode_steps=5)
    env = ConditionedEnv(make_env(spec, seed=1, episode_steps=5))
    obs, plain_obs = env.reset(), plain.reset()
    assert env.obs_dim == plain.obs_dim + 3 == obs.shape[0]
    np.testing.assert_array_equal(obs[:-3], plain_obs)
    np.testing.assert_allclose(obs[-3:], [0.4, 0.1, -0.1], atol=1e-6)

    path = tmp_path / "agent.pt"
    torch.save(SAC(env.obs_dim, env.act_dim, SACConfig(hidden_dim=32), seed=0).policy_checkpoint(), path)
    episodes = {}
    for speed in (0.4, 0.6):  # the same initial states; only the target speed differs
        job = _Job(dataclasses.replace(spec, target_speed=speed), "expert", 0, 5, 7, str(path))
        episodes[speed] = EpisodeStore.read(_collect_one((str(tmp_path / "data"), job)))
    slow, fast = episodes[0.4], episodes[0.6]
    assert slow.obs.shape == (6, plain.obs_dim)  # episode files hold the plain observation
    np.testing.assert_array_equal(slow.obs[0], fast.obs[0])
    assert not np.allclose(slow.action[0], fast.action[0])


def snapshot(step: int, returns: dict) -> dict:
    return {"step": step, "file": f"snapshot-{step:07d}.pt", "returns": returns, "mean_return": float(np.mean(list(returns.values())))}


def test_expert_and_medium_are_chosen_per_scenario():
    specs = [ScenarioSpec("walker", target_speed=0.3, seed=1), ScenarioSpec("walker", target_speed=0.7, seed=2)]
    a, b = (s.id for s in specs)
    # Scenario a is learned late, b early and then forgotten; step 10 is random-level on both.
    snapshots = [snapshot(10, {a: 5, b: 4}), snapshot(20, {a: 30, b: 200}), snapshot(30, {a: 55, b: 160}), snapshot(40, {a: 100, b: 90})]
    selection = select_policies(snapshots, specs)
    assert selection["scenarios"][a]["expert"] == {"step": 40, "file": "snapshot-0000040.pt", "return": 100}
    assert selection["scenarios"][a]["medium"]["step"] == 30  # 55 is closest to 100 / 2
    assert selection["scenarios"][b]["expert"]["step"] == 20
    assert selection["scenarios"][b]["medium"]["step"] == 40  # 90 is closest to 200 / 2
    for picks in selection["scenarios"].values():
        assert 5 < picks["medium"]["return"] < picks["expert"]["return"]  # between random and expert
    assert selection["held_out"]["expert"]["step"] == 20  # best on average: 115
    assert selection["held_out"]["medium"]["step"] == 40  # mean 95, closest to 115 / 2
    assert selection["mix_snapshots"] == [s["file"] for s in snapshots]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> DatasetConfig:
    config = tiny_config(tmp_path_factory.mktemp("trained") / "data")
    collect(config, workers=1, progress=False)
    return config


def test_on_a_tiny_budget_the_recorded_expert_is_the_best_snapshot_of_each_scenario(trained):
    summary = json.loads((agent_folder(trained.root, "walker") / SUMMARY).read_text())
    specs = trained.scenarios.train
    assert len(summary["snapshots"]) == 10 and summary["source"] == "trained"
    # The recorded returns are what the snapshot files give when evaluated again.
    again = evaluate_snapshots(agent_folder(trained.root, "walker"), specs, 0, trained.episode_steps)
    recorded = {s["file"]: s["returns"] for s in summary["snapshots"]}
    returns = {s["file"]: s["returns"] for s in again}
    assert returns.keys() == recorded.keys()
    assert len({r[spec.id] for r in returns.values() for spec in specs}) > 1  # the snapshots differ
    for spec in specs:
        picks = summary["scenarios"][spec.id]
        on_scenario = [r[spec.id] for r in recorded.values()]
        assert picks["expert"]["return"] == max(on_scenario)
        half = picks["expert"]["return"] / 2
        assert abs(picks["medium"]["return"] - half) == min(abs(r - half) for r in on_scenario)
        assert picks["medium"]["return"] <= picks["expert"]["return"]
    store = EpisodeStore(trained.root)
    for split in SPLITS:
        for spec in trained.scenarios.draw(split):
            picks = summary["scenarios"][spec.id] if split == "train" else summary["held_out"]
            assert [i.policy for i in store.index(spec.id, "expert")] == ["expert"] * (2 if split == "train" else 1)
            assert (agent_folder(trained.root, "walker") / picks["expert"]["file"]).is_file()


@pytest.fixture()
def shipped_dir(trained, tmp_path, monkeypatch) -> Path:
    """A shipped-agents folder holding the tiny walker agent of `trained`, as `--install` writes it."""
    summary = json.loads((agent_folder(trained.root, "walker") / SUMMARY).read_text())
    folder = tmp_path / "shipped" / "walker"
    folder.mkdir(parents=True)
    for name in referenced_files(summary):
        (folder / name).write_bytes((agent_folder(trained.root, "walker") / name).read_bytes())
    (folder / SUMMARY).write_text(json.dumps(summary))
    monkeypatch.setattr(shipped_module, "SHIPPED_DIR", tmp_path / "shipped")
    return tmp_path / "shipped"


def test_shipped_agents_give_expert_medium_and_mix_data(trained, shipped_dir, tmp_path):
    config = tiny_config(tmp_path / "data", train_agents=False)
    collect(config, workers=1, progress=False)
    store = EpisodeStore(config.root)
    summary = json.loads((agent_folder(config.root, "walker") / SUMMARY).read_text())
    assert summary["source"] == "shipped"
    for spec in config.scenarios.train:
        assert [i.index for i in store.index(spec.id, "mix")] == [0, 1]  # sampled from the mix snapshots
        for policy in ("expert", "medium"):
            assert len(store.index(spec.id, policy)) == 2
    # The shipped selection is used as it is, not trained or evaluated again.
    trained_summary = json.loads((agent_folder(trained.root, "walker") / SUMMARY).read_text())
    assert summary["scenarios"] == trained_summary["scenarios"]


def test_shipped_agents_for_other_settings_are_refused_naming_the_field(shipped_dir, tmp_path, capsys):
    other_alpha = tiny_config(tmp_path / "a", train_agents=False, scenarios=dataclasses.replace(SCENARIOS, alpha=0.3))
    with pytest.raises(ValueError, match=r"scenarios\.alpha=0\.2, this dataset has 0\.3.*train_agents true"):
        collect(other_alpha, progress=False)
    with pytest.raises(ValueError, match=r"episode_steps=40, this dataset has 50"):
        collect(tiny_config(tmp_path / "b", train_agents=False, episode_steps=50), progress=False)
    with pytest.raises(SystemExit) as exit_info:  # the command line says it in one line, no traceback
        collect_main(["--dataset.root", str(tmp_path / "d"), "--dataset.behaviour", "sac",
                      "--dataset.scenarios.domains", '["walker"]', "--dataset.scenarios.num_train", "2",
                      "--dataset.scenarios.num_val", "1", "--dataset.scenarios.num_test_id", "1",
                      "--dataset.scenarios.num_test_ood", "1", "--dataset.episode_steps", "40",
                      "--dataset.scenarios.beta", "[0.3, 0.6]", "--progress", "false"])  # fmt: skip
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("mrcom collect: the shipped walker") and "scenarios.beta=[0.3, 0.7]" in error
    assert "Traceback" not in error
    assert not (tmp_path / "d").exists()  # refused before anything was written: a retry with train_agents works
    # A walker agent filed as cheetah's.
    (shipped_dir / "walker").rename(shipped_dir / "cheetah")
    cheetah = tiny_config(tmp_path / "c", train_agents=False, scenarios=dataclasses.replace(SCENARIOS, domains=("cheetah",)))
    with pytest.raises(ValueError, match=r"data\.dataset\.domain='walker', this dataset has 'cheetah'"):
        collect(cheetah, progress=False)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_agent_files_load_weights_only_and_refuse_code(trained, tmp_path):
    folder = agent_folder(trained.root, "walker")
    for path in sorted(folder.glob("snapshot-*.pt")):
        checkpoint = torch.load(path, weights_only=True)  # plain tensors and data: no allow-list needed
        assert set(checkpoint) == {"obs_dim", "act_dim", "config", "actor"}
    bad = tmp_path / "bad.pt"
    torch.save({"obs_dim": 27, "act_dim": 6, "config": {}, "actor": _Exploit()}, bad)
    with pytest.raises(UnsafeCheckpointError, match="bad.pt"):
        _load_agent(str(bad))


@pytest.mark.parametrize("domain", ["cheetah", "hopper", "walker"])
def test_the_shipped_agents_fit_the_main_job(domain):
    root = Path(__file__).resolve().parents[1]
    config = dataset_settings(str(root / "configs" / "multi.yaml"))
    folder = shipped_module.shipped_folder(domain)
    summary = json.loads((folder / SUMMARY).read_text())
    assert summary["settings"] == agent_settings(config, domain)
    assert set(summary["scenarios"]) == {spec.id for spec in config.scenarios.train if spec.domain == domain}
    assert sorted(p.name for p in folder.glob("snapshot-*.pt")) == referenced_files(summary)
    for name in referenced_files(summary):
        agent = SAC.from_checkpoint(torch.load(folder / name, weights_only=True))
        assert agent.obs_dim == get_domain(domain).obs_dim + 3


def test_stand_shaping_pays_half_for_standing_and_leaves_the_task_reward_to_evaluations():
    spec = ScenarioSpec("hopper", target_speed=0.5)
    plain = ConditionedEnv(make_env(spec, seed=3, episode_steps=60))
    shaped = ConditionedEnv(make_env(spec, seed=3, episode_steps=60), shaping="stand")
    assert np.array_equal(plain.reset(), shaped.reset())
    rng, standing_steps = np.random.default_rng(0), 0
    for _ in range(60):
        action = plain.random_action(rng)
        obs, reward, _ = plain.step(action)
        shaped_obs, shaped_reward, _ = shaped.step(action)
        assert np.array_equal(obs, shaped_obs)  # the same physics: only the reward differs
        standing = 1.0 if 0.6 <= shaped.env.physics.height() <= 2 else 0.0  # the task's band, no margin
        assert shaped_reward == pytest.approx(0.5 * (standing + reward))
        standing_steps += standing > reward
    assert standing_steps > 0  # standing pays before hopping does
    with pytest.raises(ValueError, match="hopper only"):
        ConditionedEnv(make_env(ScenarioSpec("walker")), shaping="stand")
    with pytest.raises(ValueError, match="shaping must be one of"):
        ConditionedEnv(make_env(spec), shaping="dense")

"""`mrcom collect` (DESIGN.md §3): complete, deterministic, resumable after SIGKILL, never twice."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mrcom_lightning.agents import SACConfig
from mrcom_lightning.data import EpisodeStore
from mrcom_lightning.data import collect as collect_module
from mrcom_lightning.data.cli import collect_main
from mrcom_lightning.data.collect import MANIFEST, DatasetConfig, check_manifest, collect, episode_seed, is_complete
from mrcom_lightning.scenarios import SPLITS, MetaScenarioSet, get_domain

SCENARIOS = MetaScenarioSet(
    domains=("hopper", "cheetah"), num_train=2, num_val=1, num_test_id=1, num_test_ood=1,
    num_test_ood_dynamics=1, num_test_ood_objective=1,
)


def small_config(root, **changes) -> DatasetConfig:
    config = DatasetConfig(
        root=str(root),
        scenarios=SCENARIOS,
        episodes_per_scenario=3,
        test_episodes_per_scenario=2,
        episode_steps=30,
        seed=0,
    )
    return dataclasses.replace(config, **changes)


def episodes_per_split(config: DatasetConfig, split: str) -> int:
    return config.episodes_per_scenario if split == "train" else config.test_episodes_per_scenario


def read_dataset(root) -> dict:
    """(scenario id, policy, index, steps) -> episode, for every episode under `root`."""
    store = EpisodeStore(root)
    return {(i.scenario_id, i.policy, i.index, i.steps): store.read(i.path) for i in store.index()}


def assert_same_dataset(root_a, root_b) -> None:
    a, b = read_dataset(root_a), read_dataset(root_b)
    assert a.keys() == b.keys()
    for key in a:
        for name in ("obs", "action", "reward", "terminal"):
            x, y = getattr(a[key], name), getattr(b[key], name)
            assert x.dtype == y.dtype and x.shape == y.shape, (key, name)
            assert x.tobytes() == y.tobytes(), (key, name)
        assert (a[key].spec, a[key].policy, a[key].seed) == (b[key].spec, b[key].policy, b[key].seed)
    assert EpisodeStore(root_a).specs() == EpisodeStore(root_b).specs()


def file_times(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name != MANIFEST}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> DatasetConfig:
    config = small_config(tmp_path_factory.mktemp("reference") / "data")
    collect(config, workers=1, progress=False)
    return config


def test_random_collection_writes_every_split(reference):
    store = EpisodeStore(reference.root)
    total = 0
    for split in SPLITS:
        count = episodes_per_split(reference, split)
        specs = SCENARIOS.draw(split)
        assert specs, split
        for spec in specs:
            domain = get_domain(spec.domain)
            infos = store.index(spec.id)
            assert [(i.policy, i.index, i.steps) for i in infos] == [("random", k, 30) for k in range(count)]
            for info in infos:
                episode = store.read(info.path)
                assert episode.obs.shape == (31, domain.obs_dim)
                assert episode.action.shape == (30, domain.act_dim)
                assert episode.reward.shape == episode.terminal.shape == (30,)
                assert np.all(np.abs(episode.action) <= 1)
                assert (episode.spec, episode.policy) == (spec, "random")
                assert episode.seed == episode_seed(reference.seed, spec, "random", info.index)
            total += len(infos)
    assert total == 2 * (2 * 3 + 5 * 2) == len(store.index())
    assert store.specs().keys() == {spec.id for split in SPLITS for spec in SCENARIOS.draw(split)}
    manifest = json.loads((Path(reference.root) / MANIFEST).read_text())
    assert manifest.keys() == {"config", "complete", "scenario_models", "scores"}
    assert manifest["config"] == reference.to_dict() and manifest["complete"] is True
    assert is_complete(reference.root)


def test_the_scores_of_the_episodes_written_are_recorded_and_printed(reference, capsys):
    scores = json.loads((Path(reference.root) / MANIFEST).read_text())["scores"]
    assert scores.keys() == set(SPLITS)
    store = EpisodeStore(reference.root)
    for split in SPLITS:
        for domain in SCENARIOS.domains:
            episodes = [store.read(i.path) for s in SCENARIOS.draw(split) if s.domain == domain for i in store.index(s.id)]
            expected = np.mean([100 * e.reward.sum() / e.steps for e in episodes])
            assert scores[split]["random"][domain] == pytest.approx(expected, abs=0.01), (split, domain)
    assert max(scores["train"]["random"].values()) > 0  # not trivially zero

    collect_main(["--dataset.root", reference.root, "--dataset.scenarios.domains", '["hopper", "cheetah"]',
                  "--dataset.scenarios.num_train", "2", "--dataset.scenarios.num_val", "1",
                  "--dataset.scenarios.num_test_id", "1", "--dataset.scenarios.num_test_ood", "1",
                  "--dataset.scenarios.num_test_ood_dynamics", "1", "--dataset.scenarios.num_test_ood_objective", "1",
                  "--dataset.episodes_per_scenario", "3", "--dataset.episode_steps", "30", "--progress", "false"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("split"))
    assert lines[header].split() == ["split", "policy", "cheetah", "hopper"]
    train = lines[header + 1].split()
    assert train[:2] == ["train", "random"]
    assert [float(v) for v in train[2:]] == pytest.approx([scores["train"]["random"][d] for d in ("cheetah", "hopper")], abs=0.05)


def test_same_seed_gives_the_same_dataset_and_another_seed_does_not(reference, tmp_path):
    again = small_config(tmp_path / "again")
    collect(again, workers=1, progress=False)
    assert_same_dataset(reference.root, again.root)

    other = small_config(tmp_path / "other", seed=1)
    collect(other, workers=1, progress=False)
    a, b = read_dataset(reference.root), read_dataset(other.root)
    assert a.keys() == b.keys()  # the scenarios have their own seed
    for key in a:
        assert not np.array_equal(a[key].action, b[key].action), key
        assert not np.array_equal(a[key].obs, b[key].obs), key


def test_two_workers_give_the_same_files_as_one(reference, tmp_path):
    parallel = small_config(tmp_path / "parallel")
    collect(parallel, workers=2, progress=False)
    assert_same_dataset(reference.root, parallel.root)
    assert is_complete(parallel.root)


def test_a_complete_dataset_is_never_collected_twice(reference, monkeypatch):
    before = file_times(Path(reference.root))

    def no_collecting(item):
        raise AssertionError(f"collected again: {item[1]}")

    monkeypatch.setattr(collect_module, "_collect_one", no_collecting)
    collect(reference, workers=1, progress=False)
    collect(reference, workers=2, progress=False)
    assert file_times(Path(reference.root)) == before
    assert is_complete(reference.root)


def test_other_settings_on_an_existing_root_are_refused(reference):
    with pytest.raises(ValueError, match="episode_steps differ"):
        collect(dataclasses.replace(reference, episode_steps=40), progress=False)
    changed = dataclasses.replace(reference, seed=5, scenarios=dataclasses.replace(SCENARIOS, num_train=3))
    with pytest.raises(ValueError, match="scenarios, seed differ") as err:
        collect(changed, progress=False)
    assert str(reference.root) in str(err.value)
    assert is_complete(reference.root)


def test_a_dataset_written_before_a_setting_existed_counts_it_as_its_default(reference, tmp_path):
    """Settings added later (here the single-kind OOD splits) take their defaults in an older
    manifest, so older datasets stay usable; asking for more than the default is refused."""
    manifest = json.loads((Path(reference.root) / "dataset.json").read_text())
    older = tmp_path / "older"
    shutil.copytree(reference.root, older)
    for key in ("num_test_ood_dynamics", "num_test_ood_objective"):
        del manifest["config"]["scenarios"][key]
    (older / "dataset.json").write_text(json.dumps(manifest))
    plain = dataclasses.replace(SCENARIOS, num_test_ood_dynamics=0, num_test_ood_objective=0)
    check_manifest(dataclasses.replace(reference, root=str(older), scenarios=plain))
    with pytest.raises(ValueError, match="scenarios differ"):
        check_manifest(dataclasses.replace(reference, root=str(older)))


def test_a_dataset_of_scenarios_now_built_otherwise_is_refused(reference, monkeypatch, tmp_path, capsys):
    """Same settings, other data: a dataset collected before a change to how a scenario's MuJoCo
    model is built (here every torso 0.1 % longer) is refused, naming its manifest; one whose
    manifest predates the digest is used with a warning."""
    manifest = json.loads((Path(reference.root) / MANIFEST).read_text())
    assert manifest["scenario_models"] == collect_module.scenario_models_digest(reference) != {}
    check_manifest(reference)
    built = collect_module.scaled_model_xml
    monkeypatch.setattr(collect_module, "scaled_model_xml", lambda domain, length, size: built(domain, 1.001 * length, size))
    with pytest.raises(ValueError, match="MuJoCo models the code now builds otherwise") as err:
        collect(reference, progress=False)
    assert str(Path(reference.root) / MANIFEST) in str(err.value)
    monkeypatch.undo()
    older = tmp_path / "older"
    shutil.copytree(reference.root, older)
    del manifest["scenario_models"]
    (older / MANIFEST).write_text(json.dumps(manifest))
    check_manifest(dataclasses.replace(reference, root=str(older)))
    assert "records no digest of its scenarios' MuJoCo models" in capsys.readouterr().err


def collect_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mrcom_lightning.cli", "collect", "--progress", "false", *args]


def test_bad_command_line_input_fails_cleanly(tmp_path):
    root = str(tmp_path / "data")
    runs = {
        "alpha": subprocess.Popen(
            collect_command("--dataset.root", root, "--dataset.scenarios.alpha", "0.7"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ),
        "workers": subprocess.Popen(
            collect_command("--dataset.root", root, "--workers", "0"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ),
    }
    for word, proc in runs.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode != 0, word
        assert "Traceback" not in stderr, stderr
        # The usage text names every option, so look at the error line itself.
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert errors and word in errors[-1], stderr
    assert not Path(root).exists()  # nothing was collected


# --- SIGKILL in the middle, then re-run --------------------------------------------------
KILL_EPISODES = 8  # per scenario and split: 5 hopper scenarios -> 40 episodes
KILL_STEPS = 300


def kill_config(root) -> DatasetConfig:
    return DatasetConfig(
        root=str(root),
        scenarios=MetaScenarioSet(domains=("hopper",), num_train=2, num_val=1, num_test_id=1, num_test_ood=1),
        episodes_per_scenario=KILL_EPISODES,
        test_episodes_per_scenario=KILL_EPISODES,
        episode_steps=KILL_STEPS,
        seed=3,
    )


def kill_command(root, workers: int) -> list[str]:
    return collect_command(
        "--dataset.root", str(root),
        "--dataset.scenarios.domains", '["hopper"]',
        "--dataset.scenarios.num_train", "2",
        "--dataset.scenarios.num_val", "1",
        "--dataset.scenarios.num_test_id", "1",
        "--dataset.scenarios.num_test_ood", "1",
        "--dataset.episodes_per_scenario", str(KILL_EPISODES),
        "--dataset.test_episodes_per_scenario", str(KILL_EPISODES),
        "--dataset.episode_steps", str(KILL_STEPS),
        "--dataset.seed", "3",
        "--workers", str(workers),
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> DatasetConfig:
    config = kill_config(tmp_path_factory.mktemp("uninterrupted") / "data")
    collect(config, workers=1, progress=False)
    return config


def episode_files(root: Path) -> list[Path]:
    return sorted(root.rglob("ep-*.npz"))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_then_rerun_completes_the_same_dataset(uninterrupted, tmp_path, workers):
    root = tmp_path / "data"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(kill_command(root, workers), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 180
        while len(episode_files(root)) < 3:
            assert proc.poll() is None, "collection ended before it could be killed: make it longer"
            assert time.monotonic() < deadline, "no episode written in time"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker processes
        assert proc.wait(timeout=30) == -signal.SIGKILL

    survivors = {path: path.stat().st_mtime_ns for path in episode_files(root)}
    assert 3 <= len(survivors) < 5 * KILL_EPISODES
    assert not is_complete(root)
    # What a kill between a write and its rename leaves (here for sure, not just by chance).
    policy_dir = next(iter(survivors)).parent
    (policy_dir / f".ep-{KILL_EPISODES - 1:06d}-T{KILL_STEPS}.npz.zz9kill.partial").write_bytes(b"PK\x03\x04half")

    finished = subprocess.run(kill_command(root, workers), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr

    store = EpisodeStore(root)
    config = kill_config(root)
    for split in SPLITS:
        for spec in config.scenarios.draw(split):
            infos = store.index(spec.id)
            assert [(i.policy, i.index, i.steps) for i in infos] == [
                ("random", k, KILL_STEPS) for k in range(KILL_EPISODES)
            ], spec.id
    assert len(episode_files(root)) == len(store.index()) == 5 * KILL_EPISODES
    for info in store.index():
        assert store.read(info.path).steps == KILL_STEPS  # no partial episode
    assert list(root.rglob("*.partial")) == []
    assert {path: path.stat().st_mtime_ns for path in survivors} == survivors  # not collected twice
    assert is_complete(root)
    assert_same_dataset(uninterrupted.root, root)


# --- SAC behaviour ------------------------------------------------------------------------
@pytest.mark.slow
def test_sac_behaviour_gives_expert_medium_and_mix(tmp_path):
    config = DatasetConfig(
        root=str(tmp_path / "data"),
        scenarios=MetaScenarioSet(domains=("hopper",), num_train=2, num_val=1, num_test_id=1, num_test_ood=1),
        behaviour="sac",
        train_agents=True,
        episodes_per_scenario=2,
        test_episodes_per_scenario=1,
        episode_steps=30,
        sac_steps=300,
        sac=SACConfig(hidden_dim=32, batch_size=32, warmup_steps=100),
        seed=0,
    )
    collect(config, workers=1, progress=False)
    store = EpisodeStore(config.root)

    mix_steps, mix_counts = 0, {}
    for split in SPLITS:
        count = episodes_per_split(config, split)
        for spec in config.scenarios.draw(split):
            for policy in ("expert", "medium"):
                infos = store.index(spec.id, policy)
                assert [(i.index, i.steps) for i in infos] == [(k, 30) for k in range(count)], (split, policy)
                for info in infos:
                    episode = store.read(info.path)
                    assert (episode.spec, episode.policy) == (spec, policy)
            assert store.index(spec.id, "random") == []
            mix = store.index(spec.id, "mix")
            if split != "train":
                assert mix == [], split
                continue
            assert [i.index for i in mix] == list(range(len(mix)))
            mix_counts[spec.id] = len(mix)
            mix_steps += sum(store.read(i.path).steps for i in mix)

    whole_episodes = config.sac_steps // config.episode_steps
    assert sum(mix_counts.values()) == whole_episodes
    assert mix_steps == whole_episodes * config.episode_steps
    summary_path = Path(config.root) / "_agents" / "hopper" / "summary.json"
    assert summary_path.is_file()
    summary = json.loads(summary_path.read_text())
    assert summary["mix_episodes"] == mix_counts
    assert {"scenarios", "held_out", "snapshots", "training"} <= summary.keys()
    assert is_complete(config.root)

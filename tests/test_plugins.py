"""Domains of one's own (docs/extending.md): registration checks, entry points, `--domains_module`,
and the example plugin (examples/quadruped_plugin) from collection with spawn workers to a fit."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from example_plugin import EXAMPLE, MODULE, fresh_registry, registered_example
from mrcom_lightning.cli import take_domains_modules
from mrcom_lightning.data import EpisodeStore
from mrcom_lightning.data.collect import DatasetConfig, collect
from mrcom_lightning.scenarios import DOMAINS, MetaScenarioSet, ScenarioSpec, load_plugins, make_env, register_domain
from mrcom_lightning.scenarios.plugins import ENV_VAR, GROUP

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


@pytest.fixture
def plugin():
    with registered_example() as module:
        yield module


# --- Registration checks the entry up front, naming the domain. ---


class NoTargetSpeed:
    """A task that does not take `target_speed`."""

    def __init__(self, random=None):
        pass


@pytest.mark.parametrize(
    "change, message",
    [
        ({"obs_dim": 77}, r"domain 'quadruped_bad': obs_dim=77, but one reset observes 78 values \(egocentric_state 44 \+ .*\); set obs_dim=78"),
        ({"act_dim": 6}, r"domain 'quadruped_bad': act_dim=6, but the model has 12 actuators"),
        ({"torso_geoms": ("chassis",)}, r"domain 'quadruped_bad': torso_geoms \['chassis'\] are not geoms"),
        ({"task": NoTargetSpeed}, r"domain 'quadruped_bad': building its environment failed: TypeError: .*target_speed"),
    ],
)
def test_a_wrong_entry_fails_at_registration_naming_the_domain(plugin, change, message):
    bad = dataclasses.replace(plugin.QUADRUPED, name="quadruped_bad", **change)
    with pytest.raises(ValueError, match=message):
        register_domain(bad)
    assert "quadruped_bad" not in DOMAINS  # nothing half-registered


def test_a_name_is_registered_once(plugin):
    assert register_domain(plugin.QUADRUPED) is plugin.QUADRUPED  # the same entry again: nothing happens
    with pytest.raises(ValueError, match="domain 'quadruped' is already registered"):
        register_domain(dataclasses.replace(plugin.QUADRUPED, episode_steps=500), check=False)
    with pytest.raises(ValueError, match="domain 'hopper' is already registered"):
        register_domain(dataclasses.replace(plugin.QUADRUPED, name="hopper"), check=False)
    with pytest.raises(ValueError, match="lower-case"):
        register_domain(dataclasses.replace(plugin.QUADRUPED, name="Quad-ruped"), check=False)


def test_a_task_that_takes_the_scales_is_given_them(plugin):
    class ScaledQuadruped(plugin.QuadrupedTargetSpeed):
        """Reads the scenario's torso scales (as a task would to scale a standing height)."""

        def __init__(self, target_speed, length_scale, size_scale, random=None):
            super().__init__(target_speed, random=random)
            self.scales = (length_scale, size_scale)

    register_domain(dataclasses.replace(plugin.QUADRUPED, name="quadruped_scaled", task=ScaledQuadruped))
    env = make_env(ScenarioSpec("quadruped_scaled", length_scale=1.2, size_scale=0.9), episode_steps=1)
    assert env.task.scales == (1.2, 0.9)
    assert not hasattr(make_env(ScenarioSpec("quadruped", length_scale=1.2), episode_steps=1).task, "scales")


# --- Plugins: entry points and modules named on the command line. ---


def fake_entry_points(value: str):
    def entry_points(**selection):
        found = [importlib.metadata.EntryPoint(name="quadruped", value=value, group=GROUP)]
        return [e for e in found if selection.get("group") == e.group]

    return entry_points


def test_an_entry_point_registers_its_domains_and_spawn_workers_collect_them(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(MODULE))
    monkeypatch.delenv(ENV_VAR, raising=False)
    with fresh_registry():
        assert "quadruped" not in DOMAINS
        load_plugins()
        assert "quadruped" in DOMAINS
        # The spawned workers see neither this entry point nor MRCOM_DOMAINS_MODULES: the entry is sent to them.
        scenarios = MetaScenarioSet(domains=("quadruped",), num_train=2, num_val=0, num_test_id=0, num_test_ood=0)
        config = DatasetConfig(root=str(tmp_path / "data"), scenarios=scenarios, episodes_per_scenario=1, episode_steps=5)
        collect(config, workers=2, progress=False)
        episodes = [EpisodeStore(config.root).read(info.path) for info in EpisodeStore(config.root).index()]
        assert len(episodes) == 2 and all(e.obs.shape == (6, 78) and e.action.shape == (5, 12) for e in episodes)


def test_a_broken_entry_point_is_named(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points("no_such_plugin.domains"))
    with pytest.raises(ImportError, match=r"no_such_plugin\.domains \(entry point 'quadruped' of group 'mrcom.domains'\)"):
        load_plugins()


def test_domains_module_options_are_taken_from_any_place():
    argv = ["collect", "--domains_module", "a.b", "--workers", "2", "--domains_module=c.d,e.f"]
    assert take_domains_modules(argv) == (["collect", "--workers", "2"], ["a.b", "c.d,e.f"])


def mrcom(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")])}
    env.pop(ENV_VAR, None)
    command = [sys.executable, "-m", "mrcom_lightning.cli", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_an_unknown_domains_module_ends_the_command_in_one_line(tmp_path):
    run = mrcom(tmp_path, "collect", "--domains_module", "no_such_plugin.domains", "--dataset.root", tmp_path / "d")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "mrcom: --domains_module: the domains module no_such_plugin.domains (--domains_module) cannot be imported" in run.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_the_example_plugin_from_collect_with_spawn_workers_to_fit(tmp_path):
    """`mrcom collect --workers 2` and a tiny `mrcom fit` on quadruped, from `--domains_module`."""
    quick = yaml.safe_load((EXAMPLE / "quick.yaml").read_text())
    dataset = quick["data"]["dataset"] | {"root": str(tmp_path / "data"), "episode_steps": 24}
    (tmp_path / "collect.yaml").write_text(yaml.safe_dump({"dataset": dataset}))
    collected = mrcom(
        tmp_path, "collect", "--domains_module", MODULE, "--config", "collect.yaml", "--workers", "2", "--progress", "false"
    )
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert "quadruped" in collected.stdout and f"dataset complete: {dataset['root']}" in collected.stdout
    store = EpisodeStore(dataset["root"])
    assert len(store.index()) == 2 * 2 + 3 * 2  # 2 episodes of each of 2 train, 1 val, 1 test_id and 1 test_ood scenarios

    quick["data"] |= {"dataset": dataset, "sequence_length": 8, "prompt_length": 4, "batch_size": 4}
    quick["trainer"] |= {"max_steps": 4, "val_check_interval": 2, "limit_val_batches": 1, "log_every_n_steps": 1}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(quick))
    fitted = mrcom(tmp_path, "fit", "--config", "fit.yaml", "--domains_module", MODULE, "--trainer.enable_progress_bar", "false")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    checkpoints = tmp_path / "runs" / "quadruped-quick" / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("quadruped-quick")
    [run] = client.search_runs([experiment.experiment_id])
    assert "val/quadruped/obs_mse" in run.data.metrics and np.isfinite(run.data.metrics["train/loss/total"])

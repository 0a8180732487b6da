"""Checkpoints and agent files are loaded weights-only: a pickled payload is refused, never run.

The malicious file is a real torch checkpoint whose dict holds an object whose `__reduce__`
runs `touch MARKER`; every test asserts the marker was not created and the error names the
file. Legitimate checkpoints (a tiny MrCoM with the project's config classes, a SAC agent)
still load. All in process and fast, but the truncated-file test, which checks what a user
sees on stderr from a real `mrcom test` process.
"""

from __future__ import annotations

import importlib
import os
import pickle
import shlex
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from mrcom_lightning.agents import SAC, SACConfig
from mrcom_lightning.checkpoints import (
    SAFE_GLOBALS,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    allow_project_globals,
    load_checkpoint,
    load_error,
    project_safe_globals,
)
from mrcom_lightning.cli import main
from mrcom_lightning.data.collect import DatasetConfig, _load_agent
from mrcom_lightning.models.world_model import WorldModelConfig
from mrcom_lightning.scenarios import MetaScenarioSet, ScenarioSpec

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quick.yaml"
TINY = WorldModelConfig(
    embed_dim=16, hidden_dim=16, stochastic_dim=8, deterministic_dim=8, auxiliary_dim=4, reward_bins=15, heads=2
)


class Evil:
    """Unpickled by the full unpickler, this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture
def evil_ckpt(tmp_path, marker) -> Path:
    """A Lightning-shaped checkpoint with the payload beside ordinary entries."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1e-3}, "x": Evil(marker)}, path)
    return path


def tiny_module():
    from mrcom_lightning.module import MrCoM

    return MrCoM(domain_dims={"cheetah": (17, 6)}, world_model=TINY)


def dataset_config(root: Path) -> DatasetConfig:
    scenarios = MetaScenarioSet(domains=("cheetah",), num_train=1, num_val=1, num_test_id=1, num_test_ood=1)
    return DatasetConfig(root=str(root / "data"), scenarios=scenarios, episodes_per_scenario=2, episode_steps=10)


@pytest.fixture
def good_ckpt(tmp_path) -> Path:
    """A checkpoint as `mrcom fit` writes one, with every config class of the allow-list in it."""
    module = tiny_module()
    path = tmp_path / "good.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "datamodule_hyper_parameters": {"dataset": dataset_config(tmp_path), "sequence_length": 16},
            "target": ScenarioSpec("cheetah", target_speed=0.5),
            "pytorch-lightning_version": "2.6.0",
            "mrcom_trainer": {"default_root_dir": str(tmp_path / "runs")},
            "mrcom_seed": 0,
        },
        path,
    )
    return path


@pytest.fixture
def truncated_ckpt(good_ckpt, tmp_path) -> Path:
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(good_ckpt.read_bytes()[:1000])
    return path


def run_main(argv: list, capsys) -> tuple[int, str]:
    """`mrcom ARGV` in process: its exit status and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


def assert_refused(code: int, stderr: str, path: Path, marker: Path) -> None:
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert str(path) in lines[0] and "posix.system" in lines[0], lines[0]
    assert "Traceback" not in stderr
    assert not marker.exists()


def test_the_payload_is_live(evil_ckpt, marker):
    """Control: the full unpickler does run it, so the refusals below are meaningful."""
    torch.load(evil_ckpt, weights_only=False)
    assert marker.exists()


def test_load_checkpoint_refuses_the_payload(evil_ckpt, marker):
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(evil_ckpt)
    assert isinstance(err.value, ValueError)
    assert str(evil_ckpt) in str(err.value) and "posix.system" in str(err.value)
    assert "weights_only" not in str(err.value)  # no advice to turn the protection off
    assert not marker.exists()


def test_legitimate_checkpoint_loads(good_ckpt, tmp_path):
    checkpoint = load_checkpoint(good_ckpt)
    assert checkpoint["hyper_parameters"]["world_model"] == TINY
    assert checkpoint["datamodule_hyper_parameters"]["dataset"] == dataset_config(tmp_path)
    assert checkpoint["target"] == ScenarioSpec("cheetah", target_speed=0.5)
    module = tiny_module()
    module.load_state_dict(checkpoint["state_dict"])


def test_checkpoints_naming_a_class_where_it_used_to_live_still_load(tmp_path, monkeypatch):
    """Each class is pickled under the name `SAFE_GLOBALS` lists (e.g. `DatasetConfig` in `data.collect`)."""
    examples = {
        "WorldModelConfig": TINY,
        "DatasetConfig": dataset_config(tmp_path),
        "MetaScenarioSet": MetaScenarioSet(domains=("hopper",)),
        "ScenarioSpec": ScenarioSpec("walker"),
        "SACConfig": SACConfig(hidden_dim=8),
    }
    for name in SAFE_GLOBALS:
        module, _, attribute = name.rpartition(".")
        example = examples[attribute]
        monkeypatch.setattr(type(example), "__module__", module)  # what the pickle names
        path = tmp_path / f"{attribute}.ckpt"
        torch.save({"settings": example}, path)
        monkeypatch.undo()
        assert load_checkpoint(path)["settings"] == example


def test_lightning_loads_a_legitimate_checkpoint_in_the_allow_list_context(good_ckpt):
    from mrcom_lightning.checkpoints import load_module

    module = load_module(str(good_ckpt))
    assert module.hparams.world_model == TINY
    reference = load_checkpoint(good_ckpt)["state_dict"]
    assert all(torch.equal(value, reference[name]) for name, value in module.state_dict().items())


def test_lightning_load_of_the_payload_is_refused_and_named(evil_ckpt, marker):
    """What `MrCoMCLI._run_subcommand` turns a refusal inside Lightning's own load into."""
    from lightning.fabric.utilities.cloud_io import _load

    with allow_project_globals(), pytest.raises(pickle.UnpicklingError) as err:
        _load(evil_ckpt, map_location="cpu", weights_only=True)
    error = load_error(evil_ckpt, err.value)
    assert isinstance(error, UnsafeCheckpointError)
    assert str(evil_ckpt) in str(error) and "posix.system" in str(error)
    assert not marker.exists()


def test_damaged_foreign_and_missing_files_are_named(truncated_ckpt, tmp_path):
    text = tmp_path / "text.ckpt"
    text.write_text("hello")
    foreign_zip = tmp_path / "foreign.ckpt"
    with zipfile.ZipFile(foreign_zip, "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    not_a_dict = tmp_path / "list.ckpt"
    torch.save([1, 2], not_a_dict)
    for path in (truncated_ckpt, text, foreign_zip, not_a_dict):
        with pytest.raises(CorruptCheckpointError, match=str(path)):
            load_checkpoint(path)
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_checkpoint(missing)
    with pytest.raises(CheckpointNotFoundError):
        load_checkpoint(tmp_path)  # a folder


def sac_agent() -> SAC:
    return SAC(5, 2, SACConfig(hidden_dim=8, hidden_layers=1, batch_size=4, warmup_steps=0, buffer_size=16))


def test_agent_files_load_and_the_payload_is_refused(tmp_path, marker):
    agent = sac_agent()
    good = tmp_path / "expert.pt"
    torch.save(agent.checkpoint(), good)
    loaded = _load_agent(str(good))
    assert all(torch.equal(value, agent.state_dict()[name]) for name, value in loaded.state_dict().items())

    evil = tmp_path / "evil-expert.pt"
    torch.save({**agent.checkpoint(), "x": Evil(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match="posix.system") as err:
        _load_agent(str(evil))
    assert str(evil) in str(err.value)
    assert not marker.exists()


def test_mrcom_test_refuses_the_payload(evil_ckpt, marker, capsys):
    assert_refused(*run_main(["test", "--ckpt_path", evil_ckpt], capsys), evil_ckpt, marker)


def test_mrcom_test_with_a_config_refuses_the_payload(evil_ckpt, marker, tmp_path, capsys):
    argv = ["test", "--config", QUICK, "--data.dataset.root", tmp_path / "data", "--ckpt_path", evil_ckpt]
    assert_refused(*run_main(argv, capsys), evil_ckpt, marker)


def test_mrcom_fit_refuses_the_payload_before_collecting(evil_ckpt, marker, tmp_path, capsys):
    data = tmp_path / "data"
    argv = ["fit", "--config", QUICK, "--data.dataset.root", data, "--trainer.default_root_dir", tmp_path / "runs",
            "--ckpt_path", evil_ckpt]
    assert_refused(*run_main(argv, capsys), evil_ckpt, marker)
    assert not data.exists() and not (tmp_path / "runs").exists()


def test_mrcom_adapt_refuses_the_payload(evil_ckpt, marker, tmp_path, capsys):
    argv = ["adapt", "--ckpt_path", evil_ckpt, "--tracking_uri", f"sqlite:///{tmp_path / 'mlruns.db'}"]
    assert_refused(*run_main(argv, capsys), evil_ckpt, marker)


def test_weights_only_cannot_be_turned_off(good_ckpt, tmp_path, capsys):
    argv = ["fit", "--config", QUICK, "--data.dataset.root", tmp_path / "data", "--weights_only", "false"]
    code, stderr = run_main(argv, capsys)
    assert code != 0 and "--weights_only false is not supported" in stderr


def test_config_from_checkpoint_writes_no_file(good_ckpt):
    from mrcom_lightning.lightning_cli import config_from_checkpoint

    before = set(Path(tempfile.gettempdir()).iterdir())
    argv = config_from_checkpoint(["test", "--ckpt_path", str(good_ckpt)])
    assert set(Path(tempfile.gettempdir()).iterdir()) == before
    assert argv[:2] == ["test", "--config"] and argv[3:] == ["--ckpt_path", str(good_ckpt)]
    config = yaml.safe_load(argv[2])
    assert config["model"]["world_model"]["embed_dim"] == TINY.embed_dim
    assert config["data"]["dataset"]["scenarios"]["domains"] == ["cheetah"]


def test_truncated_checkpoint_is_one_line_without_traceback(truncated_ckpt, tmp_path):
    for command in ("test", "adapt"):
        result = subprocess.run(
            [sys.executable, "-m", "mrcom_lightning.cli", command, "--ckpt_path", str(truncated_ckpt)],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert result.returncode != 0
        assert "Traceback" not in result.stderr, result.stderr
        lines = [line for line in result.stderr.splitlines() if str(truncated_ckpt) in line]
        assert len(lines) == 1 and "truncated" in lines[0], result.stderr


def test_the_allow_list_context_keeps_process_wide_registrations(good_ckpt):
    """What was registered before stays, what was not goes: torch's own `safe_globals` context
    would drop a class on exit even if registered before it (as the datamodule registers its
    settings classes, which an in-process `Trainer.fit(ckpt_path=...)` relies on)."""
    before = torch.serialization.get_safe_globals()
    try:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals([WorldModelConfig])
        load_checkpoint(good_ckpt)
        with allow_project_globals():
            assert SACConfig in torch.serialization.get_safe_globals()
        assert torch.serialization.get_safe_globals() == [WorldModelConfig]
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def test_import_time_registrations_are_in_the_allow_list():
    """A class some module registers process-wide must also be in `SAFE_GLOBALS` (one list)."""
    import mrcom_lightning.module  # noqa: F401

    try:  # the datamodule package, under its installed name or the source folder's
        importlib.import_module("mrcom_lightning.datamodules")
    except ImportError:
        importlib.import_module("datamodules")

    allowed = {entry[0] if isinstance(entry, tuple) else entry for entry in project_safe_globals()}
    registered = {
        entry[0] if isinstance(entry, tuple) else entry for entry in torch.serialization.get_safe_globals()
    }
    ours = {cls for cls in registered if getattr(cls, "__module__", "").startswith(("mrcom_lightning", "datamodules"))}
    assert ours <= allowed, ours - allowed

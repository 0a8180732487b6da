"""MLflow tracking: run names, tags, params, the dataset input, the best checkpoint as an artifact
and `--ckpt_path runs:/...`, nested runs, the experiment's kind, a store created by three fits
at once (issue 28), and help texts without function reprs.

The fits are tiny (a few steps of configs/quick.yaml) and run as subprocesses in their own
temporary working directories, like tests/test_cli.py's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mrcom_lightning import tracking
from mrcom_lightning.checkpoints import CheckpointNotFoundError
from mrcom_lightning.callbacks.tracking import run_name
from test_cli import QUICK, ROOT, mlflow_client, mlflow_runs, mrcom, mrcom_command

TINY = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1",
        "--trainer.limit_test_batches", "1"]  # fmt: skip
ADAPTATION = {  # an adaptation callback that never runs: its settings are still the run's params
    "trainer": {"callbacks": [{
        "class_path": "mrcom_lightning.callbacks.ScenarioAdaptation",
        "init_args": {"every_n_validations": 0, "test_targets": [], "adaptation": {"env_steps": 123}},
    }]},
}  # fmt: skip


@pytest.fixture(scope="module")
def fit(tmp_path_factory):
    """`mrcom fit --config configs/quick.yaml --config tracking.yaml` (with the progress bar)."""
    cwd = tmp_path_factory.mktemp("tracked-fit")
    overlay = cwd / "tracking.yaml"
    overlay.write_text(yaml.safe_dump(ADAPTATION))
    dataset = tmp_path_factory.getbasetemp() / "tracking-dataset"
    run = mrcom(cwd, "fit", "--config", QUICK, "--config", overlay, "--data.dataset.root", dataset, *TINY).check()
    (found,) = mlflow_runs(cwd)
    return run, found, dataset


@pytest.mark.slow
def test_fit_run_is_named_tagged_and_carries_its_checkpoint(fit):
    process, run, dataset = fit
    client = mlflow_client(process.cwd)
    run_id = run.info.run_id
    assert run.info.run_name == "quick+tracking-mrcom-seed0"
    tags = run.data.tags
    assert tags["variant"] == "mrcom" and tags["seed"] == "0" and tags["command"] == "fit"
    assert tags["config"] == f"{QUICK}, {process.cwd / 'tracking.yaml'}"
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert tags[tracking.NOTE_TAG].startswith("`mrcom fit --config") and "4 training steps" in tags[tracking.NOTE_TAG]
    params = run.data.params
    assert params["trainer/max_steps"] == "4" and params["trainer/val_check_interval"] == "2"
    assert params["adaptation/env_steps"] == "123" and params["adaptation/every_n_validations"] == "0"
    assert params["seed_everything"] == "0" and params["threads"] == "1"
    (data,) = run.inputs.dataset_inputs
    assert data.dataset.digest == tracking.dataset_digest(dataset) and data.dataset.name == dataset.name
    assert {(t.key, t.value) for t in data.tags} == {("mlflow.data.context", "train")}
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "quick" and experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    assert "train/loss" not in run.data.metrics and "train/loss/total" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/best.ckpt"]
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == ["figures/losses.png"]
    assert tags[tracking.CHECKPOINT_TAG] == f"runs:/{run_id}/checkpoints/best.ckpt"

    lines = process.stdout.strip().splitlines()
    assert lines[-3].startswith(f"MLflow run quick+tracking-mrcom-seed0 (id {run_id}) in experiment quick")
    assert lines[-2].strip() == f"best checkpoint: runs:/{run_id}/checkpoints/best.ckpt"
    assert lines[-1].strip() == (
        f"mlflow ui --backend-store-uri sqlite:///{process.cwd / 'mlruns.db'}   then open "
        f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    )
    assert "train/loss=" in process.stdout and "v_num" not in process.output  # the progress bar


@pytest.mark.slow
def test_test_takes_a_run_uri_and_links_to_the_run(fit):
    process, fitted, _ = fit
    cwd, run_id = process.cwd, fitted.info.run_id
    client = mlflow_client(cwd)
    parent = client.create_run(fitted.info.experiment_id, run_name="a-grid").info.run_id
    uri = f"runs:/{run_id}/checkpoints/best.ckpt"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {tracking.PARENT_RUN_ENV: parent}
    result = subprocess.run(mrcom_command("test", "--ckpt_path", uri, "--trainer.enable_progress_bar", "false"),
                            cwd=cwd, capture_output=True, text=True, timeout=240, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (tested,) = [r for r in mlflow_runs(cwd) if r.info.run_id not in (run_id, parent)]
    assert tested.info.run_name == "quick+tracking-mrcom-seed0-test" and tested.info.status == "FINISHED"
    assert tested.data.tags[tracking.EVALUATES_TAG] == run_id
    assert tested.data.tags[tracking.PARENT_RUN_TAG] == parent
    assert tested.data.params["ckpt_path"] == uri
    assert "test_id/hopper/open_loop_mse" in tested.data.metrics
    assert "test_metrics.json" in {a.path for a in client.list_artifacts(tested.info.run_id)}
    assert f"MLflow run quick+tracking-mrcom-seed0-test (id {tested.info.run_id})" in result.stdout


@pytest.mark.slow
def test_a_run_uri_without_the_file_is_one_line(fit):
    process, fitted, _ = fit
    run_id = fitted.info.run_id
    with pytest.raises(CheckpointNotFoundError, match="the run has checkpoints/best.ckpt"):
        tracking.resolve_checkpoint(f"runs:/{run_id}/checkpoints/nope.ckpt", f"sqlite:///{process.cwd / 'mlruns.db'}")
    # `runs:/<run_id>` alone is the run's best checkpoint.
    local = Path(tracking.resolve_checkpoint(f"runs:/{run_id}", f"sqlite:///{process.cwd / 'mlruns.db'}"))
    assert local.name == "best.ckpt" and local.read_bytes() == (process.cwd / "runs/quick/checkpoints/best.ckpt").read_bytes()

    # A registered model version whose source is the run's checkpoints folder.
    client = mlflow_client(process.cwd)
    client.create_registered_model("mrcom-quick")
    version = client.create_model_version("mrcom-quick", f"runs:/{run_id}/checkpoints", run_id=run_id).version
    local = Path(tracking.resolve_checkpoint(f"models:/mrcom-quick/{version}", f"sqlite:///{process.cwd / 'mlruns.db'}"))
    assert local.name == "best.ckpt" and local.stat().st_size == (process.cwd / "runs/quick/checkpoints/best.ckpt").stat().st_size

    result = mrcom(process.cwd, "test", "--ckpt_path", f"runs:/{run_id}/checkpoints/nope.ckpt")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"mrcom test: checkpoint runs:/{run_id}/checkpoints/nope.ckpt is not in the MLflow store" in result.stderr


def test_a_run_uri_without_a_store_creates_none(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no MLflow store"):
        tracking.resolve_checkpoint("runs:/0123/checkpoints/best.ckpt", f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert list(tmp_path.iterdir()) == []
    assert tracking.resolve_checkpoint("runs/quick/checkpoints/best.ckpt") == "runs/quick/checkpoints/best.ckpt"


@pytest.mark.slow
def test_a_second_fit_with_the_same_seed_gets_another_name(fit):
    process, first, dataset = fit
    overlay = process.cwd / "tracking.yaml"
    mrcom(process.cwd, "fit", "--config", QUICK, "--config", overlay, "--data.dataset.root", dataset, *TINY,
          "--trainer.default_root_dir", "runs/again", "--trainer.enable_progress_bar", "false").check()  # fmt: skip
    names = [r.info.run_name for r in mlflow_runs(process.cwd) if r.data.tags.get("command") == "fit"]
    assert names == ["quick+tracking-mrcom-seed0", "quick+tracking-mrcom-seed0-2"]


STORE_USER = """
import sys
from mrcom_lightning import tracking
client = tracking.prepare_store(sys.argv[1])
with tracking.store_lock(sys.argv[1]):
    experiment = tracking.ensure_experiment(client, "quick", sys.argv[1])
run = client.create_run(experiment, run_name="quick-mrcom-seed0")
print(tracking.claim_run_name(client, sys.argv[1], run, "quick-mrcom-seed0"))
"""


def test_three_processes_open_a_new_store_at_once(tmp_path):
    """Issue 28: MLflow creates a new SQLite store's tables without a lock, and three fits started
    together could die with `duplicate column name: step`. Under `store_lock` each process waits."""
    import sys

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    processes = [subprocess.Popen([sys.executable, "-c", STORE_USER, uri], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]  # fmt: skip
    names = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-3000:]
        names.append(stdout.strip())
    assert sorted(names) == ["quick-mrcom-seed0", "quick-mrcom-seed0-2", "quick-mrcom-seed0-3"]


DATASET_USER = """
import sys, time
from mrcom_lightning import tracking
uri, root, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
client = tracking.prepare_store(uri)
run = client.create_run(client.get_experiment_by_name("quick").experiment_id)
time.sleep(max(0.0, start - time.time()))
tracking.log_dataset(client, uri, run.info.run_id, root, "train")
"""


def test_runs_started_at_once_log_one_dataset(tmp_path):
    """MLflow looks a dataset up, then inserts it: fits started together on one dataset could die
    with `UNIQUE constraint failed: datasets...` (CI, session 13). Under `store_lock` each run
    logs it, and the store holds it once."""
    import sys
    import time

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    root = tmp_path / "quick"
    root.mkdir()
    (root / "dataset.json").write_text("{}")
    client = tracking.prepare_store(uri)
    tracking.ensure_experiment(client, "quick", uri)
    start = str(time.time() + 8)
    processes = [subprocess.Popen([sys.executable, "-c", DATASET_USER, uri, str(root), start], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(6)]  # fmt: skip
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("quick").experiment_id])
    assert len(runs) == 6
    assert {d.dataset.name for r in runs for d in r.inputs.dataset_inputs} == {"quick"}
    assert all(len(r.inputs.dataset_inputs) == 1 for r in runs)


def test_run_names_say_config_method_and_seed():
    configs = ROOT / "configs"
    assert run_name("fit", [str(QUICK)], "mrcom", 0, None, "runs/quick") == "quick-mrcom-seed0"
    multi, rssm = str(configs / "multi.yaml"), str(configs / "baselines/rssm.yaml")
    assert run_name("fit", [multi, rssm], "rssm", 2, None, "runs/x") == "multi-rssm-seed2"
    noise = str(configs / "observation/add_gaussian.yaml")
    assert run_name("fit", [multi, noise], "mrcom", 0, None, "runs/x") == "multi+add_gaussian-mrcom-seed0"
    assert run_name("test", [], "mrcom", 0, "multi-rssm-seed2", "runs/x") == "multi-rssm-seed2-test"
    assert run_name("test", [], None, None, None, "runs/multi") == "multi-test"


@pytest.mark.parametrize("command", ["study", "sweep", "compare"])
def test_help_shows_no_function_reprs(command, capsys):
    from mrcom_lightning.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "<function" not in out and " at 0x" not in out
    if command == "study":
        assert "--sizes {cpu,paper}" in out

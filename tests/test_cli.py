"""`mrcom` end to end: fit, resume, test, the NaN guard, DDP and parse-time errors.

Every command runs as a subprocess (`python -m mrcom_lightning.cli ...`) in its own temporary
working directory, so `data/`, `runs/` and `mlruns.db` land there. The first fit collects the
quick dataset into a session-wide folder that every later run points `data.dataset.root` at.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mrcom_lightning.metrics import RELATIVE, STEPWISE

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quick.yaml"
QUICK_DOMAINS = yaml.safe_load(QUICK.read_text())["data"]["dataset"]["scenarios"]["domains"]
QUICK_HORIZON = yaml.safe_load(QUICK.read_text())["model"]["open_loop_horizon"]
METRICS = (
    "obs_mse", "reward_mse", "open_loop_mse", "open_loop_reward_mse", "naive_open_loop_mse", "naive_open_loop_reward_mse"
)
TIMEOUT_S = 240


@dataclass
class Run:
    """A finished `mrcom` command: its working directory, exit status and output."""

    cwd: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def check(self) -> "Run":
        assert self.returncode == 0, f"mrcom exited {self.returncode}:\n{self.stderr[-4000:]}"
        return self


def mrcom_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mrcom_lightning.cli", *map(str, args)]


def mrcom(cwd: Path, *args: str, timeout: float = TIMEOUT_S) -> Run:
    result = subprocess.run(mrcom_command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return Run(cwd, result.returncode, result.stdout, result.stderr)


def quick_fit_args(dataset_root: Path, *overrides: str) -> list[str]:
    """`fit --config configs/quick.yaml` on the shared dataset, quiet, plus `overrides`."""
    return [
        "fit",
        "--config",
        str(QUICK),
        "--data.dataset.root",
        str(dataset_root),
        "--trainer.enable_progress_bar",
        "false",
        *overrides,
    ]


def mlflow_client(cwd: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{cwd / 'mlruns.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)  # not the registry another test left set in-process


def mlflow_runs(cwd: Path, experiment: str = "quick") -> list:
    """The runs of `experiment` in `cwd`'s store, oldest first."""
    client = mlflow_client(cwd)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} in {cwd / 'mlruns.db'}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def load_checkpoint(path: Path) -> dict:
    """A checkpoint as `mrcom` reads one: weights-only, with the project's allow-list."""
    from mrcom_lightning.checkpoints import load_checkpoint

    return load_checkpoint(path)


def checkpoint_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every checkpoint under `folder` with its (mtime_ns, size)."""
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*.ckpt"))}


@pytest.fixture(scope="session")
def quick_fit(tmp_path_factory) -> Run:
    """`mrcom fit --config configs/quick.yaml`, as a user runs it; collects the shared dataset."""
    cwd = tmp_path_factory.mktemp("quick-fit")
    dataset_root = tmp_path_factory.getbasetemp() / "quick-dataset"
    return mrcom(cwd, "fit", "--config", QUICK, "--data.dataset.root", dataset_root).check()


@pytest.fixture(scope="session")
def dataset_root(quick_fit, tmp_path_factory) -> Path:
    """The quick dataset, complete (collected by the first fit)."""
    return tmp_path_factory.getbasetemp() / "quick-dataset"


@pytest.mark.slow
def test_fit_logs_to_mlflow_and_checkpoints(quick_fit):
    cwd = quick_fit.cwd
    fit_runs = [r for r in mlflow_runs(cwd) if "train/loss/wm" in r.data.metrics]
    assert len(fit_runs) == 1
    run = fit_runs[0]
    assert run.info.status == "FINISHED"
    expected = {"train/loss/wm", "train/loss/ms", "train/loss/mv", "val/loss"}
    expected |= {f"val/{domain}/{metric}" for domain in QUICK_DOMAINS for metric in METRICS}
    assert expected <= set(run.data.metrics), sorted(expected - set(run.data.metrics))
    client = mlflow_client(cwd)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "config-fit.yaml" in artifacts and "imagination" in artifacts
    # The imagination figure and per-step table of each validation (steps 30 and 60).
    imagination = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "imagination")}
    assert imagination == {f"val-step{step:07d}.{ext}" for step in (30, 60) for ext in ("png", "csv")}
    # One row per domain, curve and step h = 1..H: the stepwise errors and the per-dim relative ones.
    table = (cwd / "runs/quick/imagination/val-step0000060.csv").read_text().splitlines()
    rows = [line.split(",") for line in table[1:]]
    curves = STEPWISE + RELATIVE
    assert table[0] == "domain,metric,h,value"
    assert {(domain, metric) for domain, metric, _, _ in rows} == {(d, m) for d in QUICK_DOMAINS for m in curves}
    assert len(rows) == len(QUICK_DOMAINS) * len(curves) * QUICK_HORIZON
    saved_config = yaml.safe_load((cwd / "runs/quick/config-fit.yaml").read_text())
    assert saved_config["trainer"]["max_steps"] == 60

    checkpoints = cwd / "runs/quick/checkpoints"
    assert (checkpoints / "best.ckpt").is_file() and (checkpoints / "last.ckpt").is_file()
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 60
    lines = quick_fit.stdout.strip().splitlines()
    assert lines[-5:-3] == [
        "best checkpoint: runs/quick/checkpoints/best.ckpt",
        "last checkpoint: runs/quick/checkpoints/last.ckpt",
    ]
    assert lines[-3].startswith(f"MLflow run quick-mrcom-seed0 (id {run.info.run_id}) in experiment quick")
    assert lines[-1].strip().startswith(f"mlflow ui --backend-store-uri sqlite:///{cwd / 'mlruns.db'}")
    assert "train/loss" not in run.data.metrics  # the progress bar's copy of train/loss/total


@pytest.mark.slow
def test_test_from_checkpoint_without_config(quick_fit):
    cwd = quick_fit.cwd
    before = {r.info.run_id for r in mlflow_runs(cwd)}
    run = mrcom(cwd, "test", "--ckpt_path", "runs/quick/checkpoints/best.ckpt").check()

    expected = {
        f"{split}/{domain}/{metric}" for split in ("test_id", "test_ood") for domain in QUICK_DOMAINS for metric in METRICS
    }
    # Lightning's results table wraps names longer than the terminal's columns allow: check the short ones.
    short = {name for name in expected if not name.rsplit("/", 1)[1].startswith("naive")}
    printed = {name for name in short if name in run.stdout}
    assert printed == short, sorted(short - printed)
    new_runs = [r for r in mlflow_runs(cwd) if r.info.run_id not in before]
    assert len(new_runs) == 1 and new_runs[0].info.status == "FINISHED"
    assert expected <= set(new_runs[0].data.metrics), sorted(expected - set(new_runs[0].data.metrics))
    figures = {Path(a.path).name for a in mlflow_client(cwd).list_artifacts(new_runs[0].info.run_id, "imagination")}
    for split in ("test_id", "test_ood"):
        assert any(name.startswith(f"{split}-step") and name.endswith(".png") for name in figures), (split, figures)


def _kill_when_checkpointed(process: subprocess.Popen, last: Path, min_step: int) -> int:
    """Polls `last` until it holds a step >= `min_step`, then SIGKILLs `process`; the step it saw."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the fit ended (exit {process.returncode}) before checkpointing step {min_step}"
        if last.is_file():
            try:
                step = load_checkpoint(last)["global_step"]
            except Exception:  # caught mid-write: read it again
                step = -1
            if step >= min_step:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                return step
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"no checkpoint at step >= {min_step} in {TIMEOUT_S} s")


@pytest.mark.slow
def test_resume_after_kill_continues_steps_and_stream(tmp_path, dataset_root):
    args = quick_fit_args(dataset_root, "--trainer.max_steps", "400", "--trainer.val_check_interval", "40")
    last = tmp_path / "runs/quick/checkpoints/last.ckpt"
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(mrcom_command(*args), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            _kill_when_checkpointed(process, last, min_step=40)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == -signal.SIGKILL

    killed = load_checkpoint(last)
    saved_step = killed["global_step"]
    assert 40 <= saved_step < 400
    saved_stream = killed["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert saved_stream and saved_stream[0]["batches"] >= saved_step

    resumed = mrcom(tmp_path, *args, "--ckpt_path", "last").check()
    assert "Restoring states from the checkpoint path at" in resumed.output
    assert "runs/quick/checkpoints/last.ckpt" in resumed.output
    final = load_checkpoint(last)
    assert final["global_step"] == 400  # the latest state, not a copy of best.ckpt

    # The stream went on from where the killed run left it, rather than from batch 0.
    final_stream = final["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert final_stream[0]["batches"] - (400 - saved_step) >= saved_stream[0]["batches"]

    # Steps went on from the checkpoint: the resumed run logs no training step before it.
    client = mlflow_client(tmp_path)
    runs = mlflow_runs(tmp_path)
    assert len(runs) == 2 and runs[0].info.status != "FINISHED" and runs[1].info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(runs[1].info.run_id, "train/loss/total"))
    assert steps and steps[0] >= saved_step and steps[-1] < 400
    assert len(steps) <= (400 - saved_step) // 10 + 1  # log_every_n_steps: 10 in quick.yaml


@pytest.mark.slow
def test_diverging_fit_stops_naming_the_loss_term(tmp_path, dataset_root):
    """AdamW at lr 1e6 moves every weight by about 1e6 in its first step: step 1's loss is not finite."""
    run = mrcom(tmp_path, *quick_fit_args(dataset_root, "--model.lr", "1e6", "--trainer.gradient_clip_val", "null"))
    assert run.returncode != 0
    assert "FloatingPointError: train/loss/" in run.stderr, run.stderr[-3000:]
    assert checkpoint_files(tmp_path) == {}
    failed = mlflow_runs(tmp_path)
    assert len(failed) == 1 and failed[0].info.status == "FAILED"


@pytest.mark.slow
def test_nan_step_leaves_earlier_checkpoints_untouched(tmp_path, dataset_root, monkeypatch):
    """In process, with `ms` poisoned at step 25: last.ckpt stays the one saved at step 20."""
    from mrcom_lightning.cli import main
    from mrcom_lightning.module import MrCoM

    nan_step, seen = 25, {}
    losses = MrCoM.losses
    last = tmp_path / "runs/quick/checkpoints/last.ckpt"

    def poisoned(self, batch, window_step=None):
        terms, observation = losses(self, batch, window_step)
        if self.training and self.global_step == nan_step:
            seen["checkpoints"] = checkpoint_files(tmp_path)
            terms["ms"] = terms["ms"] * float("nan")
        return terms, observation

    monkeypatch.setattr(MrCoM, "losses", poisoned)
    monkeypatch.chdir(tmp_path)
    args = quick_fit_args(dataset_root, "--trainer.val_check_interval", "10")
    with pytest.raises(FloatingPointError, match=f"train/loss/ms is nan at step {nan_step}"):
        main(args)
    assert str(last) in seen["checkpoints"]
    assert checkpoint_files(tmp_path) == seen["checkpoints"]
    assert load_checkpoint(last)["global_step"] == 20


@pytest.mark.slow
def test_ddp_spawn_two_cpu_processes(tmp_path, dataset_root):
    """Two CPU processes (gloo) with `ddp_spawn`; the stream is split by rank in the datamodule."""
    overrides = ["--trainer.strategy", "ddp_spawn", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    overrides += ["--trainer.max_steps", "20", "--trainer.val_check_interval", "10"]
    run = mrcom(tmp_path, *quick_fit_args(dataset_root, *overrides)).check()
    checkpoints = tmp_path / "runs/quick/checkpoints"
    assert (checkpoints / "best.ckpt").is_file()
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 20
    assert "last checkpoint: runs/quick/checkpoints/last.ckpt" in run.stdout
    assert [r.info.status for r in mlflow_runs(tmp_path)] == ["FINISHED"]


# --- parse-time checks --------------------------------------------------------------------------
BAD_SETTINGS = {
    "model.w_ms": ["--model.w_ms", "-1"],
    "data.sequence_length": ["--data.sequence_length", "0"],
    "alpha": ["--data.dataset.scenarios.alpha", "0.7"],
}
# The fit configs (configs/adapt/ holds `mrcom adapt`'s and the adaptation benchmark's: tests/test_benchmarks.py;
# configs/study/adapt_*.yaml are `mrcom study --config` files: tests/test_study.py).
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")
                 if p.parent.name != "adapt" and not (p.parent.name == "study" and p.name.startswith("adapt_")))  # fmt: skip


@pytest.fixture(scope="module")
def bad_setting_runs(tmp_path_factory) -> dict[str, Run]:
    """`mrcom fit --config configs/quick.yaml` with each bad setting, run concurrently (each is
    mostly interpreter start-up) in one working directory."""
    cwd = tmp_path_factory.mktemp("bad-settings")
    processes = {
        key: subprocess.Popen(
            mrcom_command("fit", "--config", QUICK, *args),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key, args in BAD_SETTINGS.items()
    }
    runs = {}
    for key, process in processes.items():
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        runs[key] = Run(cwd, process.returncode, stdout, stderr)
    return runs


@pytest.mark.parametrize("key", sorted(BAD_SETTINGS))
def test_bad_setting_is_a_usage_error_naming_its_key(bad_setting_runs, key):
    run = bad_setting_runs[key]
    assert run.returncode == 2, run.stderr[-2000:]
    assert "error:" in run.stderr and key in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert not (run.cwd / "runs").exists() and not (run.cwd / "data").exists()


def documented_configs(name: str) -> list[Path]:
    """The `--config` files of the `mrcom fit` command in the config's header comment (overlays
    name configs/multi.yaml first); just the config itself when it documents none."""
    for line in (ROOT / name).read_text().splitlines():
        if not line.startswith("#"):
            break
        words = line.lstrip("# ").split()
        if words[:2] == ["mrcom", "fit"]:
            return [ROOT / words[i + 1] for i, word in enumerate(words[:-1]) if word == "--config"]
    return [ROOT / name]


def test_configs_folder_has_yaml():
    assert {"configs/quick.yaml", "configs/multi.yaml"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_print_config(name, tmp_path, monkeypatch, capsys):
    """`mrcom fit <the config's documented --config files> --print_config` exits 0 (in process:
    it only parses, and there are many configs)."""
    from mrcom_lightning.cli import main

    configs = documented_configs(name)
    assert ROOT / name in configs, f"{name}: its usage line does not name it"
    monkeypatch.chdir(tmp_path)
    args = ["fit"] + [arg for path in configs for arg in ("--config", str(path))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out, err = capsys.readouterr()
    assert exit_.value.code in (0, None), err[-2000:]
    printed = yaml.safe_load(out)
    assert {"trainer", "model", "data"} <= set(printed)
    overlay = yaml.safe_load((ROOT / name).read_text())
    assert printed["trainer"]["default_root_dir"] == overlay["trainer"]["default_root_dir"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("table", ["table1", "table2", "table4_{}_hopper", "table4_{}_walker", "table4_{}_cheetah"])
def test_paper_range_configs_name_their_setting_and_widen_from_ab_to_cd(table):
    """Each of the paper's train/evaluate range pairs is a config whose header names its table and
    settings; (c)/(d) train on a range that contains (a)/(b)'s (the paper: "as the range expands")."""
    names = {s: ("configs/paper/" + (table.format(s) if "{}" in table else f"{table}_{s}") + ".yaml") for s in ("ab", "cd")}
    number = table.removeprefix("table")[0]
    ranges = {}
    for setting, name in names.items():
        text = (ROOT / name).read_text()
        a, b = setting
        assert f"Table {number}, settings ({a}) and ({b})" in text, name
        scenarios = yaml.safe_load(text)["data"]["dataset"]["scenarios"]
        ranges[setting] = (scenarios["alpha"], scenarios["beta"])
    (alpha_ab, beta_ab), (alpha_cd, beta_cd) = ranges["ab"], ranges["cd"]
    assert alpha_cd > alpha_ab and beta_cd[0] <= beta_ab[0] <= beta_ab[1] <= beta_cd[1]

"""The grid launcher (issue 28): cells in parallel processes or Ray tasks, finished cells skipped,
a failing cell reported with its log without stopping the others, one progress line; fits started
at once on a fresh MLflow store; a parallel sweep giving the sequential sweep's results.

The function cells are tiny; the `mrcom` cells are a few steps of configs/quick.yaml on a dataset
collected once for the module, as in tests/test_cli.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mrcom_lightning import launch, sweep, tracking
from mrcom_lightning.cli import main
from grid_cells import square
from test_cli import QUICK, mlflow_client, mlflow_runs, mrcom_command

TINY = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"]  # fmt: skip


def cells_of(root: Path, n: int = 4) -> list[launch.Cell]:
    return [launch.Cell(f"x{i}", root / f"x{i}", (i,)) for i in range(n)]


def test_function_cells_run_in_parallel_and_a_failure_stops_no_other(tmp_path, capsys):
    summary = launch.run_cells(cells_of(tmp_path), square, workers=2)
    assert {name: r["square"] for name, r in summary.results.items()} == {"x0": 0, "x1": 1, "x2": 4}
    assert len({r["pid"] for r in summary.results.values()} | {os.getpid()}) == 3  # two worker processes
    assert {r["threads"] for r in summary.results.values()} == {"1"}  # one torch thread per cell
    (failed,) = summary.failed
    assert failed.name == "x3" and failed.error == "ValueError: 3 is not allowed here"
    log = (tmp_path / "x3" / launch.LOG).read_text()
    assert "squaring 3" in log and "Traceback" in log and "ValueError: 3 is not allowed here" in log
    assert json.loads((tmp_path / "x2" / launch.DONE).read_text())["result"]["square"] == 4
    assert not (tmp_path / "x3" / launch.DONE).exists()
    out, err = capsys.readouterr()
    assert "grid: 3 finished, 1 failed, 0 skipped of 4 cells" in out
    assert f"failed x3: ValueError: 3 is not allowed here; log: {tmp_path / 'x3' / launch.LOG}" in out
    progress = err.strip().splitlines()  # one line per change, not the cells' output
    assert progress[-1].startswith("grid 4/4 cells: 3 finished, 0 running, 1 failed, 0 skipped | ")
    assert all(line.startswith("grid ") for line in progress) and "squaring" not in err

    again = launch.run_cells(cells_of(tmp_path), square, workers=1)  # a re-run: only the failed cell again
    assert [o.status for o in again.outcomes.values()] == ["skipped", "skipped", "skipped", "failed"]
    assert again.results["x1"]["square"] == 1  # read back from done.json
    assert (tmp_path / "x3" / launch.LOG).read_text().count("squaring 3") == 2


def test_command_cells_write_their_output_to_their_log(tmp_path):
    ok = [[sys.executable, "-c", "import os; print('hello from', os.environ['GRID_NOTE'])"]]
    bad = [[sys.executable, "-c", "print('about to fail'); raise SystemExit(3)"], [sys.executable, "-c", "print('never')"]]
    cells = [launch.Cell("ok", tmp_path / "ok", (ok, {"GRID_NOTE": "the grid"})),
             launch.Cell("bad", tmp_path / "bad", (bad, {}))]  # fmt: skip
    summary = launch.run_cells(cells, launch.run_commands, workers=2, progress=False)
    assert "hello from the grid" in (tmp_path / "ok" / launch.LOG).read_text()
    log = (tmp_path / "bad" / launch.LOG).read_text()
    assert "about to fail" in log and "never" not in log
    (failed,) = summary.failed
    assert failed.error == f"CommandFailed: `{Path(sys.executable).name}` exited 3"


def test_progress_estimates_the_time_left_from_finished_cells():
    stream = io.StringIO()
    progress = launch.Progress(total=6, skipped=1, slots=2, stream=stream)
    progress.durations = {"": [60.0, 60.0]}
    summary = launch.Summary({f"c{i}": launch.Outcome(f"c{i}", "finished") for i in range(2)})
    now = time.monotonic()
    progress.show(summary, running=[(now - 30.0, ""), (now - 30.0, "")], waiting=[""])
    # 1 cell waiting (60 s) and 2 running with about 30 s each left, over 2 slots: about 60 s.
    line = stream.getvalue().strip()
    assert line.startswith("grid 3/6 cells: 2 finished, 2 running, 0 failed, 1 skipped | ")
    assert line.endswith("~1m00s left") or line.endswith("~0m59s left")


def test_progress_estimates_each_group_by_its_own_cells():
    """Cells of a short group ended first must not make the long ones look short: a waiting cell is
    costed at its group's mean, and at the mean over every group until one of its own has ended."""
    stream = io.StringIO()
    progress = launch.Progress(total=8, skipped=0, slots=2, stream=stream)
    progress.durations = {"sac": [40.0, 40.0], "droq": [400.0]}
    summary = launch.Summary({f"c{i}": launch.Outcome(f"c{i}", "finished") for i in range(3)})
    now = time.monotonic()
    progress.show(summary, running=[(now - 100.0, "droq"), (now - 10.0, "sac")], waiting=["droq", "droq", "mrcom"])
    # running: 300 + 30 s left; waiting: 400 + 400 + mean(40, 40, 400) = 160 s; over 2 slots: 645 s.
    assert stream.getvalue().strip().endswith("~10m45s left")


def test_ray_tasks_on_a_local_instance(tmp_path):
    pytest.importorskip("ray", reason="the Ray launcher is optional: pip install 'mrcom-lightning[ray]'")
    summary = launch.run_cells(cells_of(tmp_path), square, workers=2, launcher="ray", progress=False)
    assert {name: r["square"] for name, r in summary.results.items()} == {"x0": 0, "x1": 1, "x2": 4}
    assert [o.name for o in summary.failed] == ["x3"] and "Traceback" in (tmp_path / "x3" / launch.LOG).read_text()
    assert {r["threads"] for r in summary.results.values()} == {"1"}


# --- mrcom cells ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The quick dataset, collected once (as the sweep's dataset step does) for every test below."""
    root = tmp_path_factory.mktemp("launch-dataset") / "quick"
    config = root.parent / "dataset.yaml"
    config.write_text(yaml.safe_dump({"dataset": sweep.dataset_settings([str(QUICK)], ["--data.dataset.root", str(root)])}))
    subprocess.run(mrcom_command("collect", "--config", config, "--progress", "false"), check=True, capture_output=True)
    return root


@pytest.mark.slow
def test_three_fits_at_once_on_a_fresh_store(tmp_path, dataset):
    """Issue 28: two of three fits started together in a fresh directory died with `duplicate column
    name: step` while MLflow created its tables. Now all three finish and log every metric."""
    processes = [
        subprocess.Popen(mrcom_command("fit", "--config", QUICK, "--data.dataset.root", dataset, "--seed_everything",
                                       seed, "--trainer.default_root_dir", f"runs/{seed}", *TINY),
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for seed in (0, 1, 2)
    ]  # fmt: skip
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    runs = mlflow_runs(tmp_path)
    assert sorted(r.info.run_name for r in runs) == [f"quick-mrcom-seed{seed}" for seed in (0, 1, 2)]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {"train/loss/total", "train/loss/wm", "val/loss", "train/grad_norm"} <= set(run.data.metrics)
        history = mlflow_client(tmp_path).get_metric_history(run.info.run_id, "train/loss/total")
        assert sorted(m.step for m in history) == [0, 1, 2, 3]


def sweep_args(root: str, dataset: Path, *extra: str) -> list[str]:
    return ["sweep", "--base", f"[{QUICK}]", "--variants", "['']", "--seeds", "[0, 1]", "--root", root,
            "--test", "false", "--overrides", json.dumps(["--data.dataset.root", str(dataset), *TINY]), *extra]  # fmt: skip


def final_metrics(client, run) -> dict[str, list[tuple[int, float]]]:
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics if key.startswith(("train/loss/", "val/"))}  # fmt: skip


@pytest.mark.slow
def test_two_workers_give_the_sequential_results(tmp_path, dataset, monkeypatch, capsys):
    """The same cells, sequential and with 2 local workers: the same losses at every step, the same
    weights, each cell's runs nested under its sweep's parent run."""
    from mrcom_lightning.checkpoints import load_checkpoint

    monkeypatch.chdir(tmp_path)
    main(sweep_args("sequential", dataset, "--workers", "1"))
    main(sweep_args("parallel", dataset, "--workers", "2"))
    assert "parallel cells: 2 finished, 0 failed, 0 skipped of 2 cells" in capsys.readouterr().out
    client = mlflow_client(tmp_path)
    runs = mlflow_runs(tmp_path)
    parents = {grid: (tmp_path / grid / sweep.PARENT_RUN_FILE).read_text().strip() for grid in ("sequential", "parallel")}
    for seed in (0, 1):
        cell = {grid: [r for r in runs if r.data.tags.get(tracking.PARENT_RUN_TAG) == parents[grid]
                       and r.data.tags["seed"] == str(seed)] for grid in ("sequential", "parallel")}  # fmt: skip
        (sequential,), (parallel,) = cell["sequential"], cell["parallel"]
        assert parallel.info.status == "FINISHED"
        assert final_metrics(client, parallel) == final_metrics(client, sequential), seed
        weights = [load_checkpoint(tmp_path / grid / f"base-seed{seed}" / "checkpoints" / "last.ckpt")["state_dict"]
                   for grid in ("sequential", "parallel")]  # fmt: skip
        assert all((weights[0][k] == weights[1][k]).all() for k in weights[0]), seed
    main(sweep_args("parallel", dataset, "--workers", "2"))  # a re-run: nothing to do
    assert "parallel cells: 0 finished, 0 failed, 2 skipped of 2 cells" in capsys.readouterr().out


@pytest.mark.slow
def test_a_sweep_on_a_local_ray_instance_reports_a_failing_cell(tmp_path, dataset, monkeypatch, capsys):
    pytest.importorskip("ray", reason="the Ray launcher is optional: pip install 'mrcom-lightning[ray]'")
    monkeypatch.chdir(tmp_path)
    args = sweep_args("ray", dataset, "--launcher", "ray", "--workers", "2")
    args[args.index("--variants") + 1] = "['', broken.yaml]"  # no such file: its `mrcom fit` exits 2 at once
    args[args.index("--seeds") + 1] = "[0]"
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert "ray cells: 1 finished, 1 failed, 0 skipped of 2 cells" in out
    assert f"failed broken-seed0: CommandFailed: `mrcom fit` exited 2; log: ray/broken-seed0/{launch.LOG}" in out
    assert "config file broken.yaml not found" in (tmp_path / "ray" / "broken-seed0" / launch.LOG).read_text()
    assert "MLflow run quick-mrcom-seed0" in (tmp_path / "ray" / "base-seed0" / launch.LOG).read_text()
    parent = (tmp_path / "ray" / sweep.PARENT_RUN_FILE).read_text().strip()
    (cell,) = [r for r in mlflow_runs(tmp_path) if r.data.tags.get(tracking.PARENT_RUN_TAG) == parent]
    assert cell.info.run_name == "quick-mrcom-seed0" and cell.info.status == "FINISHED" and "val/loss" in cell.data.metrics
    assert mlflow_client(tmp_path).get_run(parent).info.status == "FAILED"  # the grid had a failed cell

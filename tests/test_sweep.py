"""`mrcom sweep`: the grid of variants × seeds, each cell in its own folder with its threads, finished cells
skipped, a shared dataset collected once before the cells, launch settings checked (tests/test_launch.py runs them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mrcom_lightning.cli import main


def test_dry_run_lists_every_cell(tmp_path, capsys):
    main(["sweep", "--dry_run", "true", "--root", str(tmp_path), "--seeds", "[0, 3]",
          "--variants", "['', configs/baselines/rssm.yaml]", "--overrides", "[--trainer.max_steps, '10']"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    fits = [line for line in lines if " fit " in line]
    tests = [line for line in lines if " test " in line]
    assert len(fits) == 4 and len(tests) == 4
    assert any("--config configs/baselines/rssm.yaml --seed_everything 3 --data.seed 3" in f for f in fits)
    folders = {f.split("--trainer.default_root_dir ")[1].split()[0] for f in fits}
    assert folders == {str(tmp_path / name) for name in ("base-seed0", "base-seed3", "rssm-seed0", "rssm-seed3")}
    assert all(f.endswith("--trainer.max_steps 10") for f in fits)
    assert not (tmp_path / "base-seed0").exists()


def test_finished_cells_are_skipped_and_interrupted_ones_resume(tmp_path, capsys):
    (tmp_path / "base-seed0").mkdir()
    (tmp_path / "base-seed0" / "done.json").write_text(json.dumps({}))
    (tmp_path / "base-seed1" / "checkpoints").mkdir(parents=True)
    (tmp_path / "base-seed1" / "checkpoints" / "last.ckpt").write_bytes(b"")
    main(["sweep", "--dry_run", "true", "--root", str(tmp_path), "--seeds", "[0, 1]", "--variants", "['']"])
    out = capsys.readouterr().out
    assert f"skip {tmp_path / 'base-seed0'}" in out
    fit = next(line for line in out.splitlines() if " fit " in line)
    assert "base-seed1" in fit and fit.endswith("--ckpt_path last")


def test_cells_state_their_threads_and_a_shared_dataset_is_collected_once(tmp_path, monkeypatch):
    """Every cell's fit and test get `--threads <cpus_per_cell>`; the dataset every variant reads is
    one `mrcom collect` cell (its settings merged from the configs and overrides), none once complete."""
    from mrcom_lightning import sweep

    monkeypatch.chdir(tmp_path)
    args = sweep.sweep_parser().parse_args(
        ["--base", "[configs/quick.yaml]", "--variants", "['', configs/baselines/rssm.yaml]", "--seeds", "[0, 1]",
         "--root", "runs", "--cpus_per_cell", "2", "--workers", "1",
         "--overrides", "[--data.dataset.root, data/tiny, --data.dataset.scenarios.num_train=1]"]
    )  # fmt: skip
    for _, steps in sweep.commands(args):
        assert all(step[step.index("--threads") + 1] == "2" for step in steps)
    (cell,) = sweep.dataset_cells(args)
    (command,) = cell.args[0]
    assert command[3:5] == ["collect", "--config"] and cell.cpus == 2
    dataset = yaml.safe_load(Path(command[5]).read_text())["dataset"]
    assert dataset["root"] == "data/tiny" and dataset["episode_steps"] == 100  # configs/quick.yaml's
    assert dataset["scenarios"]["num_train"] == 1 and dataset["scenarios"]["domains"] == ["cheetah", "hopper", "walker"]
    Path("data/tiny").mkdir(parents=True)
    Path("data/tiny/dataset.json").write_text(json.dumps({"complete": True}))
    assert sweep.dataset_cells(args) == []


def test_launch_settings_that_cannot_work_are_usage_errors(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--workers", "0"])
    assert "--workers must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--address", "auto"])
    assert "add --launcher ray" in capsys.readouterr().err

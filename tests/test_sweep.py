"""`mrcom sweep`: the grid of variants × seeds, each cell in its own folder, finished cells skipped."""

from __future__ import annotations

import json

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

"""`mrcom sweep`: a grid of config variants × seeds, each fitted then tested, one after another.

Every cell gets its own `trainer.default_root_dir`, so runs never share checkpoints; a cell
whose test has finished is skipped when the sweep is re-run, and an interrupted fit resumes
from its `last.ckpt`. Compare the results with `mrcom compare`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from mrcom_lightning import tracking

PARENT_RUN_FILE = "mlflow_parent_run"  # in the grid's folder: the parent run's id, kept for a re-run


def sweep_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mrcom sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with the options below")
    parser.add_argument("--base", type=list[str], default=["configs/multi.yaml"], help="configs every cell starts from")
    parser.add_argument(
        "--variants",
        type=list[str],
        default=["", "configs/baselines/rssm.yaml", "configs/baselines/cadm.yaml"],
        help="one overlay config per variant ('' = the base alone)",
    )
    parser.add_argument("--seeds", type=list[int], default=[0, 1, 2], help="seed_everything and data.seed of each cell")
    parser.add_argument("--root", type=str, default="runs/sweep", help="folder of the cells' runs")
    parser.add_argument("--overrides", type=list[str], default=[], help="extra `mrcom fit` arguments for every cell")
    parser.add_argument("--test", type=bool, default=True, help="run `mrcom test` on each cell's best checkpoint")
    parser.add_argument("--dry_run", type=bool, default=False, help="print the commands only")
    return parser


def cell_name(variant: str, seed: int) -> str:
    return f"{Path(variant).stem if variant else 'base'}-seed{seed}"


def commands(args) -> list[tuple[Path, list[list[str]]]]:
    """(cell folder, [fit command, test command]) for every variant × seed."""
    mrcom = [sys.executable, "-m", "mrcom_lightning.cli"]
    cells = []
    for variant in args.variants:
        for seed in args.seeds:
            folder = Path(args.root) / cell_name(variant, seed)
            configs = [arg for path in args.base + ([variant] if variant else []) for arg in ("--config", path)]
            fit = mrcom + ["fit", *configs, "--seed_everything", str(seed), "--data.seed", str(seed),
                           "--trainer.default_root_dir", str(folder), *args.overrides]
            if (folder / "checkpoints" / "last.ckpt").exists():
                fit += ["--ckpt_path", "last"]
            steps = [fit]
            if args.test:
                steps.append(mrcom + ["test", "--ckpt_path", str(folder / "checkpoints" / "best.ckpt")])
            cells.append((folder, steps))
    return cells


def logger_settings(configs: list[str], overrides: list[str]) -> dict[str, str]:
    """The cells' MLflow `experiment_name` and `tracking_uri`: the last config (or override) that sets each."""
    from mrcom_lightning.cli import resolve_configs

    settings = {"experiment_name": "mrcom", "tracking_uri": tracking.DEFAULT_TRACKING_URI}
    for path in resolve_configs([arg for config in configs for arg in ("--config", config)])[1::2]:
        try:
            logger = (yaml.safe_load(Path(path).read_text()) or {})["trainer"]["logger"]["init_args"]
        except (KeyError, TypeError):
            continue
        settings |= {key: logger[key] for key in settings if logger.get(key)}
    for key in settings:
        option = f"--trainer.logger.init_args.{key}"
        if option in overrides[:-1]:
            settings[key] = overrides[overrides.index(option) + 1]
    return settings


@contextlib.contextmanager
def grid_run(root: Path, configs: list[str], overrides: list[str], name: str, params: dict):
    """The parent MLflow run of a grid, in its cells' experiment: yields `(tracking_uri, run id)`;
    the cells started inside get it as `$MRCOM_PARENT_RUN_ID` and nest under it."""
    settings = logger_settings(configs, overrides)
    uri = settings["tracking_uri"]
    with tracking.parent_run(uri, settings["experiment_name"], name, params, root / PARENT_RUN_FILE) as run_id:
        yield uri, run_id


def run_cells(args, parent_run_id: str | None) -> None:
    """Fits and tests every cell not done yet, one after another."""
    env = dict(os.environ, **({tracking.PARENT_RUN_ENV: parent_run_id} if parent_run_id else {}))
    for folder, steps in commands(args):
        done = folder / "done.json"
        if done.exists():
            print(f"skip {folder} (done)")
            continue
        for command in steps:
            print("$ " + " ".join(command[1:]), flush=True)
            if not args.dry_run:
                subprocess.run(command, check=True, env=env)
        if not args.dry_run:
            done.write_text(json.dumps({"commands": [c[1:] for c in steps]}, indent=1))


def sweep_main(argv: list[str]) -> None:
    args = sweep_parser().parse_args(argv)
    if args.dry_run:
        return run_cells(args, None)
    name = "sweep-" + "+".join(Path(config).stem for config in args.base)
    params = {key: json.dumps(getattr(args, key)) for key in ("base", "variants", "seeds", "overrides")}
    with grid_run(Path(args.root), args.base, args.overrides, name, params | {"root": args.root}) as (_, run_id):
        run_cells(args, run_id)

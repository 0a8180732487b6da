"""`mrcom sweep`: a grid of config variants × seeds, each fitted then tested, cells in parallel.

Every cell gets its own `trainer.default_root_dir`, so runs never share checkpoints; a cell
whose test has finished is skipped when the sweep is re-run, and an interrupted fit resumes
from its `last.ckpt`. The cells run on this machine's cores or as Ray tasks (`launch.py`,
docs/grids.md); a dataset they share is collected once before they start. Compare the results
with `mrcom compare`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path
from typing import Literal

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from mrcom_lightning import launch, tracking

PARENT_RUN_FILE = "mlflow_parent_run"  # in the grid's folder: the parent run's id, kept for a re-run
DATASET_MANIFEST = "dataset.json"  # a collected dataset's manifest; `complete` once every episode is written
LAUNCH_OPTIONS = ("workers", "launcher", "address", "cpus_per_cell", "gpus_per_cell")


def add_launch_arguments(parser: ArgumentParser) -> None:
    """How a grid's cells run (`mrcom sweep`, `mrcom study`): `launch.run_cells`'s settings."""
    parser.add_argument("--workers", type=int | None, default=None,
                        help="cells at once (default: this machine's cores over --cpus_per_cell; with --launcher ray "
                             "and --address, as many as the cluster fits); 1 runs them one after another")  # fmt: skip
    parser.add_argument("--launcher", type=Literal["local", "ray"], default="local",
                        help="local: processes of this machine; ray: Ray tasks (pip install 'mrcom-lightning[ray]')")  # fmt: skip
    parser.add_argument("--address", type=str | None, default=None,
                        help="--launcher ray: the Ray cluster to run on (auto, ray://head:10001); none starts a local "
                             "Ray instance of --workers x --cpus_per_cell CPUs")  # fmt: skip
    parser.add_argument("--cpus_per_cell", type=int, default=1, help="each cell's torch threads (`--threads`) and CPUs")
    parser.add_argument("--gpus_per_cell", type=float, default=0, help="the GPUs each Ray task of a cell reserves")


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
    add_launch_arguments(parser)
    parser.add_argument("--dry_run", type=bool, default=False, help="print the commands only")
    return parser


def cell_name(variant: str, seed: int) -> str:
    return f"{Path(variant).stem if variant else 'base'}-seed{seed}"


def check_launch_arguments(parser: ArgumentParser, args) -> None:
    """Refuses, before anything starts, a launch setting that cannot work."""
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.cpus_per_cell < 1 or args.gpus_per_cell < 0:
        parser.error(f"--cpus_per_cell must be >= 1 and --gpus_per_cell >= 0, got {args.cpus_per_cell}, {args.gpus_per_cell}")
    if args.address and args.launcher != "ray":
        parser.error("--address is the Ray cluster of --launcher ray; add --launcher ray")
    if args.launcher == "ray" and importlib.util.find_spec("ray") is None:
        parser.error(launch.RAY_MISSING)


MRCOM = [sys.executable, "-m", "mrcom_lightning.cli"]


def commands(args) -> list[tuple[Path, list[list[str]]]]:
    """(cell folder, [fit command, test command]) for every variant × seed."""
    threads = ["--threads", str(args.cpus_per_cell)]
    cells = []
    for variant in args.variants:
        for seed in args.seeds:
            folder = Path(args.root) / cell_name(variant, seed)
            configs = [arg for path in args.base + ([variant] if variant else []) for arg in ("--config", path)]
            fit = MRCOM + ["fit", *configs, "--seed_everything", str(seed), "--data.seed", str(seed),
                           "--trainer.default_root_dir", str(folder), *threads, *args.overrides]  # fmt: skip
            if (folder / "checkpoints" / "last.ckpt").exists():
                fit += ["--ckpt_path", "last"]
            steps = [fit]
            if args.test:
                steps.append(MRCOM + ["test", "--ckpt_path", str(folder / "checkpoints" / "best.ckpt"), *threads])
            cells.append((folder, steps))
    return cells


def dataset_settings(configs: list[str], overrides: list[str]) -> dict:
    """The `data.dataset` settings a cell's fit reads: each config's, merged in order, then the
    `--data.dataset.*` overrides (a key of a mapping merges, any other value replaces)."""
    from mrcom_lightning.cli import resolve_configs

    settings: dict = {}
    for path in resolve_configs([arg for config in configs for arg in ("--config", config)])[1::2]:
        data = (yaml.safe_load(Path(path).read_text()) or {}).get("data") or {}
        merge(settings, copy.deepcopy(data.get("dataset") or {}))
    pairs = [tuple(o.split("=", 1)) if "=" in o else (o, v) for o, v in zip(overrides, overrides[1:] + [""])]
    for option, value in pairs:
        if option.startswith("--data.dataset."):
            *parents, key = option.removeprefix("--data.dataset.").split(".")
            node = settings
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = yaml.safe_load(value)
    return settings


def merge(into: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def dataset_cells(args) -> list[launch.Cell]:
    """One `mrcom collect` cell per dataset the grid's cells read that is not complete yet: cells
    started together would otherwise collect the same dataset at once (each fit collects a missing one)."""
    datasets = {}
    for variant in args.variants:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                settings = dataset_settings(args.base + ([variant] if variant else []), args.overrides)
        except (SystemExit, OSError, yaml.YAMLError):  # a config not found or not read: its cells fail, reported
            continue
        root = Path(settings.get("root", "data/multi"))
        manifest = root / DATASET_MANIFEST
        if not (manifest.is_file() and launch.read_done(manifest).get("complete")):
            datasets.setdefault(str(root), settings)
    cells = []
    cores = args.workers or (1 if args.address else launch.default_workers(args.cpus_per_cell))  # (a cluster's nodes: unknown)
    slots = max(1, cores // max(1, len(datasets)))
    for root, settings in datasets.items():
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        folder = Path(args.root) / f"dataset-{Path(root).name}-{digest}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dataset.yaml").write_text(yaml.safe_dump({"dataset": settings}))
        command = MRCOM + ["collect", "--config", str(folder / "dataset.yaml"), "--workers", str(slots), "--progress", "false"]
        cells.append(launch.Cell(folder.name, folder, ([command],), cpus=slots * args.cpus_per_cell))
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


def run_cells(args, parent_run_id: str | None) -> launch.Summary | None:
    """Fits and tests every cell not done yet, `args.workers` at a time (`launch.run_cells`), after
    collecting the datasets they read; each cell's runs nest under `parent_run_id`."""
    if args.dry_run:
        for folder, steps in commands(args):
            if (folder / launch.DONE).exists():
                print(f"skip {folder} (done)")
                continue
            for command in steps:
                print("$ " + " ".join(command[1:]), flush=True)
        return None
    uri = logger_settings(args.base, args.overrides)["tracking_uri"]
    if args.launcher == "ray" and args.address and tracking.sqlite_file(uri) is not None:
        print(f"mrcom sweep: cells on a Ray cluster log to the SQLite store {uri}; SQLite on a shared file system "
              "is not safe across nodes: log to an MLflow tracking server instead (docs/grids.md)", file=sys.stderr)  # fmt: skip
    options = {key: getattr(args, key) for key in ("workers", "launcher", "address")}
    datasets = dataset_cells(args)
    prepared = launch.run_cells(datasets, launch.run_commands, skip_done=False, label="datasets", **options)
    if prepared.failed:
        raise SystemExit(f"mrcom sweep: a dataset could not be collected; see {prepared.failed[0].log}")
    # Only what a cell needs beyond its worker's own environment (a Ray worker sets its GPUs there).
    env = {tracking.PARENT_RUN_ENV: parent_run_id} if parent_run_id else {}
    env |= {"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]} if "MLFLOW_TRACKING_URI" in os.environ else {}
    # A variant's cells (its folders, one per seed) form one group of the launcher's time estimate.
    cells = [launch.Cell(folder.name, folder, (steps, env), cpus=args.cpus_per_cell, gpus=args.gpus_per_cell,
                         group=folder.name.rsplit("-seed", 1)[0]) for folder, steps in commands(args)]  # fmt: skip
    return launch.run_cells(cells, launch.run_commands, label=f"{Path(args.root).name} cells", **options)


def sweep_main(argv: list[str]) -> None:
    parser = sweep_parser()
    args = parser.parse_args(argv)
    check_launch_arguments(parser, args)
    if args.dry_run:
        return run_cells(args, None)
    name = "sweep-" + "+".join(Path(config).stem for config in args.base)
    params = {key: json.dumps(getattr(args, key)) for key in ("base", "variants", "seeds", "overrides")}
    with grid_run(Path(args.root), args.base, args.overrides, name, params | {"root": args.root}) as (_, run_id):
        summary = run_cells(args, run_id)
        if summary.failed:
            raise SystemExit(1)

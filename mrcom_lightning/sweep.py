"""`mrcom sweep`: a grid of config variants × seeds, each fitted then tested, one after another.

Every cell gets its own `trainer.default_root_dir`, so runs never share checkpoints; a cell
whose test has finished is skipped when the sweep is re-run, and an interrupted fit resumes
from its `last.ckpt`. Compare the results with `mrcom compare`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser


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


def sweep_main(argv: list[str]) -> None:
    args = sweep_parser().parse_args(argv)
    for folder, steps in commands(args):
        done = folder / "done.json"
        if done.exists():
            print(f"skip {folder} (done)")
            continue
        for command in steps:
            print("$ " + " ".join(command[1:]), flush=True)
            if not args.dry_run:
                subprocess.run(command, check=True)
        if not args.dry_run:
            done.write_text(json.dumps({"commands": [c[1:] for c in steps]}, indent=1))

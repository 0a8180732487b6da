"""Wall-clock time of a tiny grid, sequential against parallel cells (issue 28).

The same `mrcom sweep` (2 variants × 2 seeds of configs/quick.yaml, each cell fitted then tested)
runs three ways, each in a fresh folder so that no cell is skipped: one cell after another
(`--workers 1`), two local workers (`--workers 2`, one torch thread each) and, with Ray installed,
a local Ray instance of 2 CPUs (`--launcher ray --workers 2`). The dataset is collected once
before any of them; each way's time is the sweep's whole command, parent run and start-up
included. With `--rounds` above 1 the ways alternate and each one's median is reported.

    python benchmarks/grid_parallel.py                        # the measured size (about 4 min on 2 idle cores)
    python benchmarks/grid_parallel.py --steps 4 --seeds 0    # the smallest: checks that it runs

Results go to `<out>/result.json`, the sweeps' output to `<out>/<way>-<round>.log`. The last line,
`grid_parallel_over_sequential_time=<ratio>`, is the 2-worker time over the sequential time
(goal: <= 0.65 on 2 cores; measure on an idle machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mrcom_lightning import sweep

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quick.yaml"
MRCOM = [sys.executable, "-m", "mrcom_lightning.cli"]
WAYS = {
    "sequential": ["--workers", "1"],
    "workers2": ["--workers", "2"],
    "ray2": ["--launcher", "ray", "--workers", "2"],
}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["", "configs/baselines/rssm.yaml"], help="'' = the base alone")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=60, help="training steps of every cell (configs/quick.yaml: 60)")
    parser.add_argument("--rounds", type=int, default=1, help="times each way runs, alternating; medians reported")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grid_parallel")
    parser.add_argument("--ray", choices=("auto", "yes", "no"), default="auto", help="auto: when Ray is installed")
    return parser.parse_args()


def overrides(args, dataset: Path) -> list[str]:
    interval = max(1, args.steps // 2)
    return ["--data.dataset.root", str(dataset), "--trainer.max_steps", str(args.steps),
            "--trainer.val_check_interval", str(interval), "--trainer.enable_progress_bar", "false"]  # fmt: skip


def collect(out: Path, dataset: Path) -> None:
    """The quick dataset, collected once, as the sweep's dataset step would."""
    config = out / "dataset.yaml"
    config.write_text(yaml.safe_dump({"dataset": sweep.dataset_settings([str(QUICK)], ["--data.dataset.root", str(dataset)])}))
    subprocess.run(MRCOM + ["collect", "--config", str(config), "--progress", "false"], check=True, capture_output=True)


def timed_sweep(args, way: str, round_: int, dataset: Path) -> float:
    """Seconds of one whole `mrcom sweep` in a fresh folder; raises if a cell failed."""
    root = args.out / "runs" / f"{way}-{round_}"
    shutil.rmtree(root, ignore_errors=True)
    command = MRCOM + ["sweep", "--base", json.dumps([str(QUICK)]), "--variants", json.dumps(args.variants),
                       "--seeds", json.dumps(args.seeds), "--root", str(root),
                       "--overrides", json.dumps(overrides(args, dataset)), *WAYS[way]]  # fmt: skip
    log = args.out / f"{way}-{round_}.log"
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(command, cwd=args.out, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the {way} sweep exited {done.returncode}; see {log}")
    return seconds


def main() -> None:
    args = arguments()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    ways = ["sequential", "workers2"]
    if args.ray == "yes" or (args.ray == "auto" and has_ray()):
        ways.append("ray2")
    dataset = args.out / "data-quick"
    collect(args.out, dataset)
    times: dict[str, list[float]] = {way: [] for way in ways}
    for round_ in range(args.rounds):
        for way in ways if round_ % 2 == 0 else ways[::-1]:
            times[way].append(timed_sweep(args, way, round_, dataset))
            print(f"round {round_}: {way} {times[way][-1]:.1f} s", flush=True)
    median = {way: statistics.median(values) for way, values in times.items()}
    cells = len(args.variants) * len(args.seeds)
    result = {"cells": cells, "steps": args.steps, "rounds": args.rounds, "seconds": times, "median_s": median}
    result["ratios"] = {way: median[way] / median["sequential"] for way in ways if way != "sequential"}
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(" ".join(f"grid_{way}_s={median[way]:.1f}" for way in ways) + f" cells={cells} steps={args.steps}")
    if "ray2" in median:
        print(f"grid_ray_over_sequential_time={result['ratios']['ray2']:.3f}")
    print(f"grid_parallel_over_sequential_time={result['ratios']['workers2']:.3f}")


def has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()

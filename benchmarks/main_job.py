"""Wall time and CPU use of the main job as a new user runs it (issue 33): `mrcom fit --config
configs/multi.yaml`, then `mrcom test` on its best checkpoint, from a fresh output folder.

Phases, each a command of its own in `<out>` (its output in `<out>/<phase>.log`):
  data      `mrcom collect` of the config's dataset (what `fit` would collect first), unless
            `--data_root` names a complete one (then reused, and the main job's time leaves it out);
  fit       `mrcom fit --config configs/multi.yaml`: training, then the end-of-fit adaptation (its
            time is the callback's own line, `adapted N runs in S s on W processes`);
  test      `mrcom test --ckpt_path runs/multi/checkpoints/best.ckpt` (the adaptation runs side by side);
  test_one  the same test with one adaptation worker (`--trainer.callbacks.workers 1`).
CPU utilisation is the phase's CPU time (its processes and all they started) over wall time × the
cores this process may use.

    python benchmarks/main_job.py                 # the measured size: about 25 min on 2 idle cores
    python benchmarks/main_job.py --tiny          # a few minutes: checks that it runs, times mean nothing

Measure on an idle machine: another job on the cores changes every number. Results go to
`<out>/result.json`. The last line is `main_job_wall_s=<s> test_parallel_over_sequential=<x>
cpu_utilisation=<x>`: the data and fit phases' wall time, test over test_one, and the utilisation
of data and fit together (goals on 2 cores: <= 900 s, <= 0.6, >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mrcom_lightning.threads import THREADS_ENV, available_cores

ROOT = Path(__file__).resolve().parents[1]
MULTI = ROOT / "configs" / "multi.yaml"
MRCOM = [sys.executable, "-m", "mrcom_lightning.cli"]
CORES = available_cores()
ADAPTED = re.compile(r"adapted (\d+) runs in ([0-9.]+) s on (\d+) processes")
# A run of every phase in minutes: the budgets and sizes shrunk, the code paths the same.
TINY = {
    "fit": ["--trainer.max_steps", "20", "--trainer.val_check_interval", "10", "--trainer.limit_val_batches", "2",
            "--trainer.callbacks.every_n_validations", "2", "--trainer.callbacks.adaptation.env_steps", "300",
            "--trainer.callbacks.adaptation.sac.warmup_steps", "100", "--trainer.callbacks.adaptation.eval_episodes", "1",
            "--trainer.callbacks.adaptation.rollout.every", "100", "--data.dataset.episodes_per_scenario", "1",
            "--data.dataset.test_episodes_per_scenario", "1"],
    "test": ["--trainer.limit_test_batches", "2"],
}  # fmt: skip


def cpu_seconds() -> float:
    """CPU time of every finished child process of this one (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(name: str, command: list[str], out: Path) -> dict:
    """Runs `command` in `out`, its output to `<out>/<name>.log`; its wall and CPU seconds."""
    print(f"{name}: {' '.join(command[2:])}", flush=True)
    cpu, start = cpu_seconds(), time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        done = subprocess.run(command, cwd=out, stdout=log, stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if done.returncode != 0:
        raise SystemExit(f"{name} exited {done.returncode}; see {out / f'{name}.log'}")
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cpu_utilisation": round(cpu / (wall * CORES), 3)}


def adaptation_seconds(log: Path) -> tuple[float, int]:
    """The callback's adaptation time in a command's log (the last round's), and its processes."""
    found = ADAPTED.findall(log.read_text(errors="replace"))
    if not found:
        raise SystemExit(f"no 'adapted N runs in S s' line in {log}: did the ScenarioAdaptation callback run?")
    return float(found[-1][1]), int(found[-1][2])


def dataset_config(fit_args: list[str]) -> dict:
    """The `data.dataset` section `mrcom fit` would collect with these options."""
    printed = subprocess.run(MRCOM + ["fit", "--config", str(MULTI), *fit_args, "--print_config"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    return yaml.safe_load(printed.stdout)["data"]


def complete(root: Path) -> bool:
    manifest = root / "dataset.json"
    return manifest.is_file() and bool(json.loads(manifest.read_text()).get("complete"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/main_job" / time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--data_root", type=Path, default=None, help="a dataset to reuse (default: collected in <out>/data)")
    parser.add_argument("--tiny", action="store_true", help="shrunk sizes: checks that every phase runs")
    parser.add_argument("--fit_args", nargs=argparse.REMAINDER, default=[],
                        help="more `mrcom fit` options, last (e.g. --threads 1 --data.num_workers 1)")
    args = parser.parse_args()
    if os.environ.get(THREADS_ENV):
        print(f"note: ${THREADS_ENV}={os.environ[THREADS_ENV]} is set, so `--threads auto` uses that many threads")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if (out / "runs").exists():
        raise SystemExit(f"{out} holds an earlier run: give a fresh --out")
    data_root = (args.data_root or out / "data").resolve()
    fit_args = ["--data.dataset.root", str(data_root), *(TINY["fit"] if args.tiny else []), *args.fit_args]
    phases, reused = {}, complete(data_root)
    if reused:
        print(f"data: reusing the complete dataset {data_root}")
    else:
        data = dataset_config(fit_args)
        (out / "dataset.yaml").write_text(yaml.safe_dump({"dataset": data["dataset"]}))
        command = MRCOM + ["collect", "--config", str(out / "dataset.yaml"), "--workers", str(data["collect_workers"])]
        phases["data"] = timed("data", command, out)
    phases["fit"] = timed("fit", MRCOM + ["fit", "--config", str(MULTI), *fit_args], out)
    fit_adaptation, fit_workers = adaptation_seconds(out / "fit.log")
    test = MRCOM + ["test", "--ckpt_path", "runs/multi/checkpoints/best.ckpt", *(TINY["test"] if args.tiny else [])]
    phases["test"] = timed("test", test, out)
    phases["test_one"] = timed("test_one", test + ["--trainer.callbacks.workers", "1"], out)
    test_adaptation, test_workers = adaptation_seconds(out / "test.log")

    main_wall = sum(phases[p]["wall_s"] for p in ("data", "fit") if p in phases)
    main_cpu = sum(phases[p]["cpu_s"] for p in ("data", "fit") if p in phases)
    result = {
        "date": time.strftime("%Y-%m-%d"), "cores": CORES, "tiny": args.tiny, "data_reused": reused,
        "fit_args": args.fit_args, "phases": phases,
        "training_s": round(phases["fit"]["wall_s"] - fit_adaptation, 1),
        "fit_adaptation_s": fit_adaptation, "fit_adaptation_workers": fit_workers,
        "test_adaptation_s": test_adaptation, "test_adaptation_workers": test_workers,
        "test_one_adaptation_s": adaptation_seconds(out / "test_one.log")[0],
        "main_job_wall_s": round(main_wall, 1),
        "test_parallel_over_sequential": round(phases["test"]["wall_s"] / phases["test_one"]["wall_s"], 3),
        "cpu_utilisation": round(main_cpu / (main_wall * CORES), 3),
    }  # fmt: skip
    (out / "result.json").write_text(json.dumps(result, indent=1))

    print(f"\n{CORES} cores; output in {out}")
    print(f"{'phase':<32} {'wall_s':>8} {'cpu_util':>8}")
    if "data" in phases:
        print(f"{'data (mrcom collect)':<32} {phases['data']['wall_s']:>8.1f} {phases['data']['cpu_utilisation']:>8.2f}")
    else:
        print(f"{'data':<32} {'reused':>8}")
    print(f"{'training (fit less adaptation)':<32} {result['training_s']:>8.1f}")
    print(f"{f'end-of-fit adaptation ({fit_workers} proc)':<32} {fit_adaptation:>8.1f}")
    print(f"{'fit (whole command)':<32} {phases['fit']['wall_s']:>8.1f} {phases['fit']['cpu_utilisation']:>8.2f}")
    print(f"{f'test ({test_workers} proc)':<32} {phases['test']['wall_s']:>8.1f} {phases['test']['cpu_utilisation']:>8.2f}")
    print(f"{'  of which adaptation':<32} {test_adaptation:>8.1f}")
    print(f"{'test, one worker':<32} {phases['test_one']['wall_s']:>8.1f} {phases['test_one']['cpu_utilisation']:>8.2f}")
    print(f"{'  of which adaptation':<32} {result['test_one_adaptation_s']:>8.1f}")
    if reused:
        print("main_job_wall_s leaves out the data, which were reused")
    print(f"main_job_wall_s={result['main_job_wall_s']:.1f} "
          f"test_parallel_over_sequential={result['test_parallel_over_sequential']:.3f} "
          f"cpu_utilisation={result['cpu_utilisation']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

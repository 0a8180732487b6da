"""Steps per second of `mrcom collect` (random behaviour) against raw dm_control stepping.

Three things are measured in interleaved rounds (raw, collect with 1 worker, collect with
2 workers, raw, ...) so that machine noise hits all alike; each one's median over rounds is
reported, and each ratio is the median over rounds of that round's ratio:

* raw: `dm_control.suite.load(domain, task)` stepping uniform random actions in this process,
  resetting when an episode ends, the same number of steps per domain as collected;
* collect: `collect()` of a random-behaviour dataset into a fresh temporary root, from the
  call to its return: each scenario's MJCF compiled (once per worker and scenario), seeding,
  atomic `.npz` writes, the manifest and, with 2 workers, the spawn start-up of the worker
  processes (each imports torch and dm_control, about 2 s on an idle machine). Start-up is
  part of the real cost, so it is kept in the time; the default run (3 domains x 2 scenarios
  x 16 episodes x 500 steps = 48k steps, about 5-10 s per measurement) is long enough that
  it does not dominate.

    python benchmarks/collect_throughput.py --rounds 3

The last line, `collect_ratio_1worker=<value>`, is collect steps/s with one worker divided by
raw steps/s (1.0 = no overhead; target >= 0.7). On a machine whose cores are busy, the
2-worker figure says more about the load than about `collect`: look at `uptime` too.
"""

import os

os.environ.setdefault("MUJOCO_GL", "disable")  # before dm_control is imported

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from dm_control import suite  # noqa: E402

from mrcom_lightning.data.collect import DatasetConfig, collect  # noqa: E402
from mrcom_lightning.scenarios import MetaScenarioSet, get_domain  # noqa: E402

# The stock task each scenario domain starts from.
PLAIN_TASKS = {"hopper": "hop", "walker": "run", "cheetah": "run"}


def dataset_config(root: str, args: argparse.Namespace) -> DatasetConfig:
    scenarios = MetaScenarioSet(
        domains=tuple(args.domains), num_train=args.scenarios, num_val=0, num_test_id=0, num_test_ood=0
    )
    return DatasetConfig(
        root=root,
        scenarios=scenarios,
        behaviour="random",
        episodes_per_scenario=args.episodes,
        episode_steps=args.episode_steps,
        seed=args.seed,
    )


def collect_rate(args: argparse.Namespace, workers: int, total_steps: int) -> float:
    """Steps/s of one whole `collect()` into a fresh temporary root."""
    root = tempfile.mkdtemp(prefix="mrcom-collect-bench-")
    try:
        config = dataset_config(os.path.join(root, "data"), args)
        start = time.perf_counter()
        collect(config, workers=workers, progress=False)
        return total_steps / (time.perf_counter() - start)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def raw_rate(args: argparse.Namespace, steps_per_domain: int, seed: int) -> float:
    """Steps/s of plain dm_control tasks stepping random actions, loads included."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for domain in args.domains:
        env = suite.load(domain, PLAIN_TASKS[domain], task_kwargs={"random": seed})
        act_dim = get_domain(domain).act_dim
        env.reset()
        for _ in range(steps_per_domain):
            if env.step(rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)).last():
                env.reset()
    return steps_per_domain * len(args.domains) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", nargs="+", default=list(PLAIN_TASKS), choices=list(PLAIN_TASKS))
    parser.add_argument("--scenarios", type=int, default=2, help="training scenarios per domain")
    parser.add_argument("--episodes", type=int, default=16, help="episodes per scenario")
    parser.add_argument("--episode-steps", type=int, default=500, help="steps per episode (DatasetConfig's default)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="collect worker counts to measure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.scenarios, args.episodes, args.episode_steps, args.rounds, *args.workers) < 1:
        parser.error("--scenarios, --episodes, --episode-steps, --rounds and --workers must be >= 1")
    if 1 not in args.workers:
        parser.error("--workers must include 1 (the figure of the last line)")
    torch.set_num_threads(1)

    steps_per_domain = args.scenarios * args.episodes * args.episode_steps
    total_steps = steps_per_domain * len(args.domains)
    print(
        f"{total_steps} steps per measurement: {len(args.domains)} domains x {args.scenarios} scenarios x "
        f"{args.episodes} episodes x {args.episode_steps} steps, {args.rounds} rounds",
        flush=True,
    )
    raw_rate(args, min(steps_per_domain, 500), args.seed)  # warm-up: imports, first compile

    rates: dict[str, list[float]] = {"raw": [], **{f"collect_{w}": [] for w in args.workers}}
    for round_index in range(args.rounds):
        rates["raw"].append(raw_rate(args, steps_per_domain, args.seed + round_index))
        for workers in args.workers:
            rates[f"collect_{workers}"].append(collect_rate(args, workers, total_steps))
        print(
            f"round {round_index}: " + "  ".join(f"{name} {values[-1]:8.1f}" for name, values in rates.items()),
            flush=True,
        )

    def ratio(numerator: str, denominator: str) -> float:
        return statistics.median(n / d for n, d in zip(rates[numerator], rates[denominator]))

    print(f"raw dm_control      {statistics.median(rates['raw']):9.1f} steps/s (median)")
    for workers in args.workers:
        name = f"collect_{workers}"
        print(
            f"collect {workers} worker(s) {statistics.median(rates[name]):9.1f} steps/s (median)  "
            f"collect/raw {ratio(name, 'raw'):.3f}"
        )
    if 2 in args.workers:
        print(f"collect 2 workers / 1 worker {ratio('collect_2', 'collect_1'):.3f}")
    print(f"collect_ratio_1worker={ratio('collect_1', 'raw'):.3f}")

if __name__ == "__main__":
    main()

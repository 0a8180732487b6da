"""Steps per second of a scenario environment against the plain dm_control task it wraps.

For each domain, `make_env(ScenarioSpec(domain))` (recompiled MJCF, two-sided reward, flat
float32 observations) and `dm_control.suite.load(domain, task)` take the same random actions.
The two sides are measured in alternating rounds (A, B, A, B, ...) so that machine noise hits
both alike, and each side's median over rounds is reported. Episodes reset when they end, and
resets count towards the time.

    python benchmarks/env_overhead.py --steps 20000

The last line, `env_overhead_ratio=<value>`, is the geometric mean over domains of
scenario steps/s divided by plain steps/s (1.0 = no overhead, 0.9 = 10% slower; target >= 0.9).
"""

import os

os.environ.setdefault("MUJOCO_GL", "disable")  # before dm_control is imported

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from dm_control import suite  # noqa: E402

from mrcom_lightning.scenarios import ScenarioSpec, make_env  # noqa: E402

# The stock task each scenario domain starts from.
PLAIN_TASKS = {"hopper": "hop", "walker": "run", "cheetah": "run"}


class PlainEnv:
    """dm_control's suite environment behind the same `reset`/`step` calls as `ScenarioEnv`."""

    def __init__(self, domain: str, seed: int):
        self._env = suite.load(domain, PLAIN_TASKS[domain], task_kwargs={"random": seed})

    def reset(self):
        return self._env.reset().observation

    def step(self, action):
        timestep = self._env.step(action)
        return timestep.observation, timestep.reward, timestep.last()


def steps_per_second(env, actions: np.ndarray) -> float:
    """Steps `env` through `actions`, resetting when an episode ends; returns steps per second."""
    start = time.perf_counter()
    env.reset()
    for action in actions:
        if env.step(action)[2]:
            env.reset()
    return len(actions) / (time.perf_counter() - start)


def measure(domain: str, steps: int, rounds: int, seed: int) -> tuple[float, float]:
    """Median steps/s of the scenario and the plain environment over interleaved rounds."""
    scenario = make_env(ScenarioSpec(domain, seed=seed))
    plain = PlainEnv(domain, seed)
    rng = np.random.default_rng(seed)
    per_round = max(1, steps // rounds)
    warmup = rng.uniform(-1.0, 1.0, (min(per_round, 200), scenario.act_dim))
    steps_per_second(scenario, warmup)
    steps_per_second(plain, warmup)
    scenario_rates, plain_rates = [], []
    for _ in range(rounds):
        actions = rng.uniform(-1.0, 1.0, (per_round, scenario.act_dim))
        scenario_rates.append(steps_per_second(scenario, actions))
        plain_rates.append(steps_per_second(plain, actions))
    return statistics.median(scenario_rates), statistics.median(plain_rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20_000, help="steps per domain and side, over all rounds")
    parser.add_argument("--rounds", type=int, default=7, help="alternating measurement rounds per side")
    parser.add_argument("--domains", nargs="+", default=list(PLAIN_TASKS), choices=list(PLAIN_TASKS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < args.rounds or args.rounds < 1:
        parser.error(f"--steps must be >= --rounds >= 1, got steps={args.steps}, rounds={args.rounds}")

    ratios = []
    for domain in args.domains:
        scenario, plain = measure(domain, args.steps, args.rounds, args.seed)
        ratio = scenario / plain
        ratios.append(ratio)
        print(
            f"{domain:8s} scenario {scenario:9.1f} steps/s  plain {plain:9.1f} steps/s  "
            f"scenario/plain {ratio:.3f}",
            flush=True,
        )
    geometric_mean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"env_overhead_ratio={geometric_mean:.3f}")


if __name__ == "__main__":
    main()

"""SAC (Haarnoja et al. 2018) on cheetah at dm_control's own run speed: quality and speed.

`ScenarioSpec("cheetah", target_speed=1.0)` has the default dynamics and a reward peaking at
10 m/s; our reward is two-sided there, which below that speed is the same as cheetah-run's.
Usage: `python benchmarks/sac_cheetah.py --steps 100000 --seed 0`. The last line printed is
`sac_cheetah_return=<mean deterministic evaluation return at the end>`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from mrcom_lightning.agents import SACConfig, train_sac
from mrcom_lightning.scenarios import ScenarioSpec, make_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000, help="environment steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--eval-every", type=int, default=10_000, help="steps between evaluations")
    parser.add_argument(
        "--warmup-steps", type=int, default=SACConfig.warmup_steps, help="random-action steps first"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = ScenarioSpec("cheetah", target_speed=1.0)

    def make_env_fn(index: int):
        # A distinct initial-state seed per (run seed, episode).
        env_seed = np.random.SeedSequence([args.seed, index]).generate_state(1)[0]
        return make_env(spec, seed=int(env_seed))

    config = SACConfig(warmup_steps=args.warmup_steps)
    eval_times: list[tuple[int, float]] = []
    start = time.perf_counter()

    def on_eval(step: int, mean_return: float, agent) -> None:
        eval_times.append((step, time.perf_counter() - start))
        elapsed = eval_times[-1][1]
        tqdm.write(f"step {step:>7d}  eval return {mean_return:7.1f}  elapsed {elapsed:7.1f}s")

    result = train_sac(
        make_env_fn,
        args.steps,
        config,
        seed=args.seed,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        on_eval=on_eval,
        progress=not args.no_progress,
        device=args.device,
    )
    print(f"spec: {spec}")
    print(f"steps: {args.steps}  warmup: {config.warmup_steps}  seed: {args.seed}  "
          f"threads: {args.threads}")
    print(f"evaluations: {list(zip(result.eval_steps, np.round(result.eval_returns, 1).tolist()))}")
    per_1k = 1000 * result.seconds / args.steps
    print(f"elapsed: {result.seconds:.1f}s  ({per_1k:.2f} s per 1k steps, evaluation included)")
    print(f"sac_cheetah_return={result.final_return:.2f}")


if __name__ == "__main__":
    main()

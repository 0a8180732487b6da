"""Sample efficiency of scenario adaptation: MrCoM (SAC on real plus imagined data) against plain SAC.

On one target scenario, at a CPU-sized budget:

1. data: behaviour episodes of `--train-scenarios` training scenarios of `--domain`, drawn
   around the target (torso scales in [1-α, 1+α], target speeds in [speed-β, speed+β]); the
   target is the set's first in-distribution test scenario, whose episodes the world model never
   sees. Behaviour `sac` (default) is the project's pipeline at a small budget: one SAC agent
   trained for `--sac-steps` across the training scenarios gives the `mix` data (its replay) and
   the `expert` and `medium` episodes; `random` gives uniform random actions only, which is
   cheaper but leaves the model blind to the reward of moving well.
2. world model: a MrCoM of reduced sizes (embedding 64, hidden 128, z 32, h 64, u 8; the paper's
   are 128/256/128/128) trained for `--wm-steps` steps of `module.losses` on the datamodule's
   training stream (batch 32, windows of 16 steps, prompts of 8), every policy's episodes.
3. adaptation: `adapt(use_model=True)` and `adapt(use_model=False)` (plain SAC) with the same
   real environment steps, the paper's SAC settings (256x2, batch 256, actor/critic lr 1e-4/2e-4)
   and the same seeds; both are scored on the same evaluation episodes (`score` = mean return in
   percent of the episode's maximum).

    python benchmarks/adapt_efficiency.py                       # about 10-15 min on 2 busy cores
    python benchmarks/adapt_efficiency.py --env-steps 1100 --warmup-steps 100 --updates-per-step 10 --seeds 0

The last line is `adapt_over_sac=<mean MrCoM score / mean SAC score>` (`nan` when SAC scores 0;
the line before it, `adapt_minus_sac=`, gives the difference).
"""

import os

os.environ.setdefault("MUJOCO_GL", "disable")  # before dm_control is imported

import argparse  # noqa: E402
import copy  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import train_world_model  # noqa: E402  (benchmarks/common.py)

from mrcom_lightning.datamodules import MultiScenarioDataModule  # noqa: E402
from mrcom_lightning.adaptation import AdaptationConfig, adapt  # noqa: E402
from mrcom_lightning.agents import SACConfig  # noqa: E402
from mrcom_lightning.data.collect import DatasetConfig, collect  # noqa: E402
from mrcom_lightning.models import WorldModelConfig  # noqa: E402
from mrcom_lightning.module import MrCoM  # noqa: E402
from mrcom_lightning.scenarios import MetaScenarioSet  # noqa: E402

REDUCED = WorldModelConfig(
    embed_dim=64, hidden_dim=128, stochastic_dim=32, deterministic_dim=64, auxiliary_dim=8, context_length=8, heads=4, reward_bins=63
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="cheetah", choices=["cheetah", "hopper", "walker"])
    parser.add_argument("--target-speed", type=float, default=0.2, help="centre of the speed range (fraction of the max)")
    parser.add_argument("--alpha", type=float, default=0.1, help="torso scale half-width of the training scenarios")
    parser.add_argument("--beta", type=float, default=0.05, help="speed half-width of the training scenarios")
    parser.add_argument("--train-scenarios", type=int, default=4)
    parser.add_argument("--behaviour", default="sac", choices=["sac", "random"], help="behaviour policy of the data")
    parser.add_argument("--sac-steps", type=int, default=20_000, help="steps of the behaviour agent (behaviour sac)")
    parser.add_argument("--episodes-per-scenario", type=int, default=4, help="per training scenario and policy")
    parser.add_argument("--episode-steps", type=int, default=250, help="steps per episode, data and adaptation")
    parser.add_argument("--wm-steps", type=int, default=2000, help="world-model gradient steps")
    parser.add_argument("--wm-lr", type=float, default=1e-3)
    parser.add_argument("--env-steps", type=int, default=10_000, help="real steps of each adaptation (the budget)")
    parser.add_argument("--warmup-steps", type=int, default=1000)
    parser.add_argument("--updates-per-step", type=int, default=1, help="SAC updates per real step (paper: 10)")
    parser.add_argument("--horizon", type=int, default=5)
    parser.add_argument("--rollout-every", type=int, default=250)
    parser.add_argument("--rollout-batch", type=int, default=400)
    parser.add_argument("--real-ratio", type=float, default=0.05)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--seeds", default="0,1", help="comma-separated")
    parser.add_argument("--data-root", default=None, help="dataset folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    return parser.parse_args()


def train_reduced_model(datamodule: MultiScenarioDataModule, steps: int, lr: float) -> tuple[MrCoM, dict]:
    torch.manual_seed(0)
    module = MrCoM(world_model=REDUCED, domain_dims=datamodule.domain_dims, num_scenarios=datamodule.num_scenarios, lr=lr)
    losses = train_world_model(module, iter(datamodule.train_stream()), steps)
    return module, {name: round(value, 3) for name, value in losses.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()

    speed = args.target_speed
    scenarios = MetaScenarioSet(
        domains=(args.domain,), alpha=args.alpha, beta=(speed - args.beta, speed + args.beta),
        num_train=args.train_scenarios, num_val=0, num_test_id=1, num_test_ood=0,
    )
    target = scenarios.test_id[0]
    root = args.data_root or tempfile.mkdtemp(prefix="adapt-efficiency-")
    dataset = DatasetConfig(
        root=root, scenarios=scenarios, behaviour=args.behaviour, episodes_per_scenario=args.episodes_per_scenario,
        test_episodes_per_scenario=2, episode_steps=args.episode_steps, train_agents=True, sac_steps=args.sac_steps,
        sac=SACConfig(warmup_steps=min(2000, args.sac_steps // 4)),
    )
    collect(dataset, progress=args.progress)
    collected = time.perf_counter()

    datamodule = MultiScenarioDataModule(dataset=dataset, sequence_length=16, prompt_length=REDUCED.context_length, batch_size=32)
    module, last_losses = train_reduced_model(datamodule, args.wm_steps, args.wm_lr)
    trained = time.perf_counter()

    config = AdaptationConfig(
        env_steps=args.env_steps, episode_steps=args.episode_steps, warmup_steps=args.warmup_steps,
        updates_per_step=args.updates_per_step, horizon=args.horizon, rollout_every=args.rollout_every,
        rollout_batch=args.rollout_batch, real_ratio=args.real_ratio, eval_episodes=args.eval_episodes,
    )
    print(f"target: {target}")
    behaviour = f"SAC behaviour ({args.sac_steps} steps; expert, medium, mix)" if args.behaviour == "sac" else "random"
    print(f"data: {args.train_scenarios} training scenarios, {behaviour}, {args.episodes_per_scenario} episodes per "
          f"scenario and policy, {args.episode_steps} steps each; collected in {collected - start:.1f}s")
    print(f"world model: reduced sizes, {args.wm_steps} steps in {trained - collected:.1f}s, last losses {last_losses}")
    print(f"adaptation: {args.env_steps} real steps, warmup {args.warmup_steps}, {args.updates_per_step} updates/step, "
          f"horizon {args.horizon}, {args.rollout_batch} rollouts every {args.rollout_every} steps, "
          f"real ratio {args.real_ratio}, SAC {config.sac.hidden_dim}x{config.sac.hidden_layers}, batch {config.sac.batch_size}")

    scores: dict[str, list[float]] = {"mrcom": [], "sac": []}
    seconds: dict[str, list[float]] = {"mrcom": [], "sac": []}
    for seed in seeds:
        for method, use_model in (("mrcom", True), ("sac", False)):
            # A copy per run: adaptation must start from the same weights every time.
            model = copy.deepcopy(module) if use_model else None
            result = adapt(target, config, model, use_model=use_model, seed=seed, progress=args.progress)
            scores[method].append(result.score)
            seconds[method].append(result.seconds)
            print(f"seed {seed} {method:<5} score {result.score:6.2f}  imagined {result.imagined:>7d}  "
                  f"{result.seconds:6.1f}s  ({1000 * result.seconds / args.env_steps:.1f} ms per real step, eval included)",
                  flush=True)

    mean = {method: float(np.mean(values)) for method, values in scores.items()}
    std = {method: float(np.std(values)) for method, values in scores.items()}
    for method in ("mrcom", "sac"):
        print(f"{method:<5} score {mean[method]:6.2f} ± {std[method]:.2f} over seeds {seeds}, "
              f"{np.mean(seconds[method]):.1f}s per run")
    print(f"elapsed: {time.perf_counter() - start:.1f}s (collect {collected - start:.1f}s, "
          f"world model {trained - collected:.1f}s, adaptation {time.perf_counter() - trained:.1f}s)")
    ratio = mean["mrcom"] / mean["sac"] if mean["sac"] > 0 else math.nan
    print(f"adapt_minus_sac={mean['mrcom'] - mean['sac']:.2f}")
    print(f"adapt_over_sac={ratio:.3f}")


if __name__ == "__main__":
    main()

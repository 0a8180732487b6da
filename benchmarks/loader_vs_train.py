"""Batches/s of the training loader against training steps/s: is data loading ever the bottleneck?

A small random-behaviour dataset (3 domains) is collected into a temporary directory; then the
datamodule's training loader (batch 32, T=64, prompt 20) with `num_workers=0` and `=2`, and a
fixed-cost training step, are measured in alternating rounds (loader 0, loader 2, train, ...)
so that machine noise hits all alike; each side's median over rounds is reported.

The training step is the real MrCoM step at the paper's sizes (embedding, h and z 128,
prompt 20, batch 32 x 64): all loss terms of Eq. 16, backward and an AdamW step.

    python benchmarks/loader_vs_train.py --rounds 5 --batches 20

The last line, `loader_over_train=<value>`, is loader batches/s (num_workers=0) divided by
MrCoM train steps/s: above 1 the main-process loader keeps up with training by itself
(target >= 5, so that it never starves a GPU several times faster than this CPU).
"""

import os

os.environ.setdefault("MUJOCO_GL", "disable")  # before dm_control is imported

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402

from mrcom_lightning.datamodules import MultiScenarioDataModule  # noqa: E402
from mrcom_lightning.data.collect import DatasetConfig  # noqa: E402
from mrcom_lightning.module import MrCoM  # noqa: E402
from mrcom_lightning.scenarios import MetaScenarioSet  # noqa: E402


def train_step_fn(domain_dims: dict[str, tuple[int, int]], num_scenarios: int) -> Callable[[dict], float]:
    """One training step of MrCoM at the paper's sizes (`WorldModelConfig()`): Eq. 16, backward, AdamW."""
    model = MrCoM(domain_dims=domain_dims, num_scenarios=num_scenarios)
    optimizer = model.configure_optimizers()

    def step(batch: dict) -> float:
        terms, _ = model.losses(batch)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        return terms["total"].item()

    return step


def rate(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20, help="batches (or train steps) per round and side")
    parser.add_argument("--root", default=None, help="dataset directory (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        dataset = DatasetConfig(
            root=args.root or str(Path(tmp) / "random"),
            scenarios=MetaScenarioSet(num_train=2, num_val=1, num_test_id=1, num_test_ood=1),
            behaviour="random",
            episodes_per_scenario=2,
            test_episodes_per_scenario=2,
            episode_steps=200,
        )
        start = time.perf_counter()
        loaders = {}
        for workers in (0, 2):
            dm = MultiScenarioDataModule(dataset, batch_size=32, sequence_length=64, prompt_length=20,
                                         num_workers=workers, collect_workers=2)
            dm.prepare_data()
            dm.setup("fit")
            loaders[workers] = iter(dm.train_dataloader())
        print(f"dataset: 3 domains x 2 train scenarios x 2 episodes x 200 steps, "
              f"collected and loaded in {time.perf_counter() - start:.1f}s")
        batch = next(loaders[0])
        step = train_step_fn(dm.domain_dims, dm.num_scenarios)
        for _ in range(3):  # warm-up: worker start, allocator, autograd graph
            next(loaders[0]), next(loaders[2]), step(batch)

        results: dict[str, list[float]] = {"loader_w0": [], "loader_w2": [], "train": []}
        for _ in range(args.rounds):
            results["loader_w0"].append(rate(lambda: next(loaders[0]), args.batches))
            results["loader_w2"].append(rate(lambda: next(loaders[2]), args.batches))
            results["train"].append(rate(lambda: step(batch), args.batches))
        median = {key: statistics.median(values) for key, values in results.items()}

    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, {os.cpu_count()} CPUs; "
          f"median of {args.rounds} interleaved rounds x {args.batches}")
    print(f"train loader, num_workers=0: {median['loader_w0']:8.1f} batches/s")
    print(f"train loader, num_workers=2: {median['loader_w2']:8.1f} batches/s")
    print(f"MrCoM train step (paper sizes, batch 32 x 64): {median['train']:8.1f} steps/s")
    print(f"loader_over_train={median['loader_w0'] / median['train']:.2f}")


if __name__ == "__main__":
    main()

"""Batches/s of the training loader against training steps/s: is data loading ever the bottleneck?

A small random-behaviour dataset (3 domains) is collected into a temporary directory; then the
datamodule's training loader (batch 32, T=64, prompt 20) with `num_workers=0` and `=2`, and a
fixed-cost training step, are measured in alternating rounds (loader 0, loader 2, train, ...)
so that machine noise hits all alike; each side's median over rounds is reported.

The world model does not exist yet, so the training step is a STAND-IN of roughly its shape:
a 3-layer MLP embedding of the padded observations into 128 dims, a 1-layer GRU cell (128)
unrolled step by step over the 64 steps of the batch-32 window, a linear reward head, backward
and an Adam step. Swap `train_step_fn` for the real model's step to measure the real ratio.

    python benchmarks/loader_vs_train.py --rounds 5 --batches 20

The last line, `loader_over_train=<value>`, is loader batches/s (num_workers=0) divided by
stand-in train steps/s: above 1 the main-process loader keeps up with training by itself.
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
from torch import nn  # noqa: E402

from datamodules import MultiScenarioDataModule  # noqa: E402
from mrcom_lightning.data.collect import DatasetConfig  # noqa: E402
from mrcom_lightning.scenarios import MetaScenarioSet  # noqa: E402


def train_step_fn(obs_dim: int, act_dim: int, hidden: int = 128) -> Callable[[dict], float]:
    """A stand-in training step for the world model: MLP embedding, GRU(128) over T steps, Adam."""
    embed = nn.Sequential(
        nn.Linear(obs_dim + act_dim, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden),
    )
    cell = nn.GRUCell(hidden, hidden)
    head = nn.Linear(hidden, 1)
    params = [*embed.parameters(), *cell.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def step(batch: dict) -> float:
        inputs = torch.cat([batch["obs"][:, :-1] * batch["obs_mask"][:, None], batch["action"]], -1)
        tokens = embed(inputs)
        h = tokens.new_zeros(tokens.shape[0], hidden)
        predictions = []
        for t in range(tokens.shape[1]):  # unrolled like a latent cell, not a fused GRU
            h = cell(tokens[:, t], h)
            predictions.append(head(h).squeeze(-1))
        loss = (torch.stack(predictions, 1) - batch["reward"]).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

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
            test_episodes_per_scenario=1,
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
        obs_dim, act_dim = (max(dims) for dims in zip(*dm.domain_dims.values()))
        batch = next(loaders[0])
        step = train_step_fn(obs_dim, act_dim)
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
    print(f"STAND-IN train step (MLP embed + GRUCell(128) x 64 steps + Adam, batch 32; "
          f"not the world model): {median['train']:8.1f} steps/s")
    print(f"loader_over_train={median['loader_w0'] / median['train']:.2f}")


if __name__ == "__main__":
    main()

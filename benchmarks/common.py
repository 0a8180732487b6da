"""What several benchmarks share: training a world model on a datamodule's stream, outside Lightning."""

from __future__ import annotations

import time
from typing import Callable, Iterator

import numpy as np
import torch

from mrcom_lightning.module import MrCoM

GRADIENT_CLIP = 100.0  # configs/quick.yaml's and configs/multi.yaml's trainer.gradient_clip_val


def train_world_model(
    module: MrCoM, stream: Iterator, steps: int, report: Callable[[int, dict[str, float], float], None] | None = None
) -> dict[str, float]:
    """`steps` optimiser steps of `module.losses` (Eq. 16) on batches of `stream`, as `mrcom fit`
    takes them (AdamW of `configure_optimizers`, gradient clipping, the value target update).
    Returns the mean of the last 100 steps' `total`, `obs` and `reward` terms; `report(step, those
    means, seconds)` is called five times along the way."""
    optimizer = module.configure_optimizers()
    recent: dict[str, list[float]] = {name: [] for name in ("total", "obs", "reward")}
    start = time.perf_counter()
    module.train()
    for step in range(steps):
        batch = next(stream)
        terms, _ = module.losses(batch)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), GRADIENT_CLIP)
        optimizer.step()
        module.on_train_batch_end(None, batch, step)
        for name, values in recent.items():
            values.append(terms[name].item())
        if report is not None and ((step + 1) % max(1, steps // 5) == 0 or step + 1 == steps):
            report(step + 1, {k: float(np.mean(v[-100:])) for k, v in recent.items()}, time.perf_counter() - start)
    module.eval()
    return {k: float(np.mean(v[-100:])) for k, v in recent.items()}

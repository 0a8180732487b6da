"""What several benchmarks share: training a world model on a datamodule's stream, outside Lightning,
with the package's harness (`mrcom_lightning.training`), reporting as it goes."""

from __future__ import annotations

import itertools
import time
from typing import Callable, Iterator

import numpy as np

from mrcom_lightning.module import MrCoM
from mrcom_lightning.training import GRADIENT_CLIP, train_steps

__all__ = ["GRADIENT_CLIP", "train_world_model"]


def train_world_model(
    module: MrCoM, stream: Iterator, steps: int, report: Callable[[int, dict[str, float], float], None] | None = None
) -> dict[str, float]:
    """`steps` optimiser steps of `module.losses` (Eq. 16) on batches of `stream`, as `mrcom fit`
    takes them (`training.train_steps` with the AdamW of `configure_optimizers`). Returns the mean of
    the last 100 steps' `total`, `obs` and `reward` terms; `report(step, those means, seconds)` is
    called five times along the way."""
    optimizer = module.configure_optimizers()
    recent: dict[str, list[float]] = {name: [] for name in ("total", "obs", "reward")}
    start, done, chunk = time.perf_counter(), 0, max(1, steps // 5)
    while done < steps:
        terms = train_steps(module, itertools.islice(stream, min(chunk, steps - done)), optimizer)
        done += len(terms)
        for name, values in recent.items():
            values += [t[name] for t in terms]
        if report is not None:
            report(done, {k: float(np.mean(v[-100:])) for k, v in recent.items()}, time.perf_counter() - start)
    return {k: float(np.mean(v[-100:])) for k, v in recent.items()}

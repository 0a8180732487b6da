"""The tiny synthetic batch of the model tests."""

from __future__ import annotations

import torch

from mrcom_lightning.models.synthetic import synthetic_batch as _synthetic_batch

TINY_DIMS = {"cheetah": (17, 6), "hopper": (15, 4)}


def synthetic_batch(dims=TINY_DIMS, batch=6, steps=12, prompt=4, num_scenarios=3, seed=0) -> dict[str, torch.Tensor]:
    return _synthetic_batch(dims, batch, steps, prompt, num_scenarios, seed)

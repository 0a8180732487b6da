"""Observation functions: how a scenario corrupts what the agent sees (DESIGN.md §2)."""

from __future__ import annotations

import math

import numpy as np

GAUSSIAN_STD = 0.1  # std of the noise `add_gaussian` adds to every dimension.
FRACTION = 0.1  # share of dims that `add_dims` adds and the masks zero.


def _count(obs_dim: int) -> int:
    return max(1, math.ceil(FRACTION * obs_dim))


def observed_dim(obs_fn: str, obs_dim: int) -> int:
    """The observation size after `obs_fn`."""
    return obs_dim + _count(obs_dim) if obs_fn == "add_dims" else obs_dim


class ObservationFunction:
    """Applies one of `none`, `add_gaussian`, `add_dims`, `mask_random`, `mask_fixed`.

    `scenario_rng` fixes what belongs to the scenario (the dims `mask_fixed` zeroes);
    `step_rng` draws what changes every step (noise values, the `mask_random` mask).
    """

    def __init__(self, obs_fn: str, obs_dim: int, scenario_rng: np.random.Generator):
        self.obs_fn = obs_fn
        self.obs_dim = obs_dim
        self.count = _count(obs_dim)
        self.fixed_mask = np.ones(obs_dim, dtype=np.float32)
        if obs_fn == "mask_fixed":
            self.fixed_mask[scenario_rng.choice(obs_dim, self.count, replace=False)] = 0.0
        self.step_rng = scenario_rng

    def seed(self, rng: np.random.Generator) -> None:
        self.step_rng = rng

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        fn = self.obs_fn
        if fn == "none":
            return obs
        if fn == "add_gaussian":
            return obs + self.step_rng.normal(0.0, GAUSSIAN_STD, obs.shape).astype(np.float32)
        if fn == "add_dims":
            noise = self.step_rng.standard_normal(self.count).astype(np.float32)
            return np.concatenate([obs, noise])
        if fn == "mask_fixed":
            return obs * self.fixed_mask
        mask = np.ones(self.obs_dim, dtype=np.float32)
        mask[self.step_rng.choice(self.obs_dim, self.count, replace=False)] = 0.0
        return obs * mask

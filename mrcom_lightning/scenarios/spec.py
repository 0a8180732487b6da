"""The scenario: one frozen, hashable description of dynamics, objective and observation (DESIGN.md §2)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

OBS_FNS = ("none", "add_gaussian", "add_dims", "mask_random", "mask_fixed")


@dataclasses.dataclass(frozen=True)
class ScenarioSpec:
    """One scenario of the meta-scenario set.

    Attributes:
        domain: a registered dm_control domain (`hopper`, `walker`, `cheetah`, or a plugin's).
        length_scale: multiplier of the torso's length (its attachments move with it).
        size_scale: multiplier of the torso's radius (mass and inertia follow).
        target_speed: the speed at which the reward peaks, as a fraction of the domain's
            fastest default speed.
        obs_fn: how the observation is corrupted, one of `OBS_FNS`.
        seed: seeds everything scenario-specific (the fixed mask, the noise streams).
    """

    domain: str
    length_scale: float = 1.0
    size_scale: float = 1.0
    target_speed: float = 1.0
    obs_fn: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        from mrcom_lightning.scenarios.domains import DOMAINS, unknown_domain

        if self.domain not in DOMAINS:
            raise unknown_domain(self.domain)
        if self.obs_fn not in OBS_FNS:
            raise ValueError(f"obs_fn must be one of {list(OBS_FNS)}, got {self.obs_fn!r}")
        for name in ("length_scale", "size_scale", "target_speed"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        # Normalise numeric types so that equal specs hash equal and serialise identically.
        for name in ("length_scale", "size_scale", "target_speed"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "seed", int(self.seed))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ScenarioSpec":
        return cls(**data)

    @property
    def id(self) -> str:
        """A short id, stable across runs and machines, usable as a directory name."""
        payload = json.dumps(self.to_dict(), sort_keys=True).encode()
        return f"{self.domain}-{hashlib.sha1(payload).hexdigest()[:10]}"

    def __str__(self) -> str:
        return (
            f"{self.domain}(length={self.length_scale:.3f}, size={self.size_scale:.3f}, "
            f"speed={self.target_speed:.3f}, obs={self.obs_fn}, seed={self.seed})"
        )

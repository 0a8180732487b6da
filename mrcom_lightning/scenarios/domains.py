"""The registry of dm_control domains: adding a domain is one `Domain` entry (DESIGN.md §2).

Each entry names the suite module that builds the physics, the task with a two-sided
target-speed reward, the axis along which the torso's length lies, and the domain's fastest
default speed. dm_control's own speed rewards are one-sided (any speed above the constant earns
full credit); here the bounds are (v, v) so that overshooting costs reward, while the
standing/upright factors of each domain are kept.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Callable

from dm_control.suite import cheetah, hopper, walker
from dm_control.utils import rewards


class HopperTargetSpeed(hopper.Hopper):
    """dm_control's hopper `hop` task with the hopping term peaking at `target_speed`."""

    def __init__(self, target_speed: float, random=None):
        super().__init__(hopping=True, random=random)
        self.target_speed = target_speed

    def get_reward(self, physics):
        standing = rewards.tolerance(physics.height(), (hopper._STAND_HEIGHT, 2))
        v = self.target_speed
        hopping = rewards.tolerance(
            physics.speed(), bounds=(v, v), margin=v / 2, value_at_margin=0.5, sigmoid="linear"
        )
        return standing * hopping


class WalkerTargetSpeed(walker.PlanarWalker):
    """dm_control's walker `run` task with the move term peaking at `target_speed`."""

    def __init__(self, target_speed: float, random=None):
        super().__init__(move_speed=target_speed, random=random)
        self.target_speed = target_speed

    def get_reward(self, physics):
        standing = rewards.tolerance(
            physics.torso_height(),
            bounds=(walker._STAND_HEIGHT, float("inf")),
            margin=walker._STAND_HEIGHT / 2,
        )
        upright = (1 + physics.torso_upright()) / 2
        stand_reward = (3 * standing + upright) / 4
        v = self.target_speed
        move = rewards.tolerance(
            physics.horizontal_velocity(),
            bounds=(v, v),
            margin=v / 2,
            value_at_margin=0.5,
            sigmoid="linear",
        )
        return stand_reward * (5 * move + 1) / 6


class CheetahTargetSpeed(cheetah.Cheetah):
    """dm_control's cheetah `run` task with the reward peaking at `target_speed`."""

    def __init__(self, target_speed: float, random=None):
        super().__init__(random=random)
        self.target_speed = target_speed

    def get_reward(self, physics):
        v = self.target_speed
        return rewards.tolerance(
            physics.speed(), bounds=(v, v), margin=v, value_at_margin=0, sigmoid="linear"
        )


@dataclasses.dataclass(frozen=True)
class Domain:
    """How to build one dm_control domain as a scenario.

    Attributes:
        name: the domain's name in the suite.
        module: the dm_control suite module (provides `get_model_and_assets` and `Physics`).
        task: builds the task from the absolute target speed and a random state.
        torso_axis: the axis along which the torso's length lies (0 = x, 2 = z).
        max_speed: the domain's fastest default speed (m/s); target speeds are fractions of it.
        control_timestep: seconds per agent step, as in the suite.
        episode_steps: steps in a default episode (1000 for every suite task used here).
        obs_dim: flat observation size without observation functions.
        act_dim: action size.
    """

    name: str
    module: ModuleType
    task: Callable[..., object]
    torso_axis: int
    max_speed: float
    control_timestep: float
    episode_steps: int
    obs_dim: int
    act_dim: int


DOMAINS: dict[str, Domain] = {
    "hopper": Domain("hopper", hopper, HopperTargetSpeed, 2, hopper._HOP_SPEED, 0.02, 1000, 15, 4),
    "walker": Domain("walker", walker, WalkerTargetSpeed, 2, walker._RUN_SPEED, 0.025, 1000, 24, 6),
    "cheetah": Domain("cheetah", cheetah, CheetahTargetSpeed, 0, cheetah._RUN_SPEED, 0.01, 1000, 17, 6),
}


def get_domain(name: str) -> Domain:
    if name not in DOMAINS:
        raise ValueError(f"domain must be one of {sorted(DOMAINS)}, got {name!r}")
    return DOMAINS[name]

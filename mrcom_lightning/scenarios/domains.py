"""The registry of dm_control domains: adding a domain is one `Domain` entry (DESIGN.md §2).

Each entry names the suite module that builds the physics, the task with a two-sided
target-speed reward, the axis along which the torso's length lies, and the domain's fastest
default speed. dm_control's own speed rewards are one-sided (any speed above the constant earns
full credit); here the bounds are (v, v) so that overshooting costs reward, while the
standing/upright factors of each domain are kept.

What an entry must provide (everything downstream — `mjcf.scaled_model`, `make_env`,
`ScenarioSpec`, `MetaScenarioSet`, the datamodule — reads only the entry):

* the model, as `model() -> (xml, assets)`; by default the suite module's
  `get_model_and_assets` (a module that builds its XML otherwise, e.g. quadruped's
  `make_model(...)`, passes a function that returns that XML with `common.ASSETS`);
* the `physics` class that compiles it (default: the module's `Physics`);
* a `task(target_speed=..., random=...)` whose reward lies in [0, 1] and peaks at the speed;
* where the torso lies: the body `torso` holding the geoms `torso_geoms`, its length along
  `torso_axis`; which entries of those geoms' `size` are scaled as the radius
  (`torso_radius`, default the capsule radius `size[0]`) and as the length (`torso_length`,
  default a capsule's half-length `size[1]` unless the geom is given by `fromto`);
* the timing and sizes: `control_timestep`, `episode_steps`, `obs_dim`, `act_dim`.

The defaults describe the three capsule-torso domains below, which set none of the optional
fields. Note that `MetaScenarioSet` seeds each domain's draws by its index in `sorted(DOMAINS)`,
so registering a new domain here shifts the draws of the domains sorted after it; a domain used
only in one experiment or test can be added to a copy of the registry instead
(`monkeypatch.setitem(DOMAINS, name, entry)`, see tests/test_domain_registry.py).
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Callable, Optional, Union

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
        module: the dm_control suite module; the source of the defaults of `model` and
            `physics`.
        task: builds the task from the absolute target speed and a random state:
            `task(target_speed=..., random=...)`; its reward lies in [0, 1].
        torso_axis: the axis along which the torso's length lies (0 = x, 2 = z).
        max_speed: the domain's fastest default speed (m/s); target speeds are fractions of it.
        control_timestep: seconds per agent step, as in the suite.
        episode_steps: steps in a default episode (1000 for every suite task used here).
        obs_dim: flat observation size without observation functions.
        act_dim: action size.
        model: returns the unscaled model as `(xml, assets)`, the XML as str or bytes and the
            assets as MuJoCo's `{filename: contents}`; default: `module.get_model_and_assets`.
        physics: the `mujoco.Physics` subclass that compiles the model and that the task reads;
            default: `module.Physics`.
        torso_geoms: names of the geoms of the body `torso` whose size is scaled.
        torso_radius: entries of those geoms' `size` multiplied by `size_scale`.
        torso_length: entries of those geoms' `size` multiplied by `length_scale` (half-lengths
            along `torso_axis`); None: a capsule's half-length `size[1]`, unless the geom is given
            by `fromto`, whose ends are scaled instead.
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
    model: Optional[Callable[[], tuple[Union[str, bytes], dict]]] = None
    physics: Optional[type] = None
    torso_geoms: tuple[str, ...] = ("torso",)
    torso_radius: tuple[int, ...] = (0,)
    torso_length: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        if self.model is None:
            if not hasattr(self.module, "get_model_and_assets"):
                raise ValueError(
                    f"domain {self.name!r}: {self.module.__name__} has no get_model_and_assets; "
                    "pass model=<function returning (xml, assets)>"
                )
            object.__setattr__(self, "model", self.module.get_model_and_assets)
        if self.physics is None:
            if not hasattr(self.module, "Physics"):
                raise ValueError(f"domain {self.name!r}: {self.module.__name__} has no Physics; pass physics=")
            object.__setattr__(self, "physics", self.module.Physics)
        if self.torso_axis not in (0, 1, 2):
            raise ValueError(f"domain {self.name!r}: torso_axis must be 0, 1 or 2, got {self.torso_axis!r}")
        object.__setattr__(self, "torso_geoms", tuple(self.torso_geoms))
        object.__setattr__(self, "torso_radius", tuple(int(i) for i in self.torso_radius))
        if self.torso_length is not None:
            object.__setattr__(self, "torso_length", tuple(int(i) for i in self.torso_length))
            if set(self.torso_radius) & set(self.torso_length):
                raise ValueError(
                    f"domain {self.name!r}: a size entry cannot be both radius and length, got "
                    f"torso_radius={self.torso_radius}, torso_length={self.torso_length}"
                )


DOMAINS: dict[str, Domain] = {
    "hopper": Domain("hopper", hopper, HopperTargetSpeed, 2, hopper._HOP_SPEED, 0.02, 1000, 15, 4),
    "walker": Domain("walker", walker, WalkerTargetSpeed, 2, walker._RUN_SPEED, 0.025, 1000, 24, 6),
    "cheetah": Domain("cheetah", cheetah, CheetahTargetSpeed, 0, cheetah._RUN_SPEED, 0.01, 1000, 17, 6),
}


def get_domain(name: str) -> Domain:
    if name not in DOMAINS:
        raise ValueError(f"domain must be one of {sorted(DOMAINS)}, got {name!r}")
    return DOMAINS[name]

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
  `torso_axis`; which entries of those geoms' `size` are scaled as the radius and as the
  length (by default read from each geom's kind, see `mjcf.scaled_model`);
* the timing and sizes: `control_timestep`, `episode_steps`, `obs_dim`, `act_dim`.

The three paper domains below set none of the optional fields. Other domains come from
plugins (`mrcom_lightning.scenarios.plugins`, docs/extending.md): `register_domain` checks an
entry against one reset of its environment before adding it here. Each domain's scenario draws
come from a stream of its own (`draw_key`), so registering one leaves the others' unchanged.
"""

from __future__ import annotations

import dataclasses
import importlib
import zlib
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
        torso_radius: entries of those geoms' `size` multiplied by `size_scale`; None: by the
            geom's kind (sphere, capsule, cylinder: the radius `size[0]`; box, ellipsoid: the two
            half-sizes across `torso_axis`).
        torso_length: entries of those geoms' `size` multiplied by `length_scale`; None: by the
            geom's kind (capsule, cylinder: the half-length `size[1]`, for a `fromto` geom its
            segment; box, ellipsoid: the half-size along `torso_axis`; sphere: none).
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
    torso_radius: Optional[tuple[int, ...]] = None
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
        for field in ("max_speed", "control_timestep", "episode_steps", "obs_dim", "act_dim"):
            if not getattr(self, field) > 0:
                raise ValueError(f"domain {self.name!r}: {field} must be > 0, got {getattr(self, field)!r}")
        object.__setattr__(self, "torso_geoms", tuple(self.torso_geoms))
        for field in ("torso_radius", "torso_length"):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, tuple(int(i) for i in getattr(self, field)))
        if self.torso_radius is not None and self.torso_length is not None:
            if set(self.torso_radius) & set(self.torso_length):
                raise ValueError(
                    f"domain {self.name!r}: a size entry cannot be both radius and length, got "
                    f"torso_radius={self.torso_radius}, torso_length={self.torso_length}"
                )

    def __reduce__(self):
        # Pickled by the module's name (a module object does not pickle), so that collection
        # workers started with `spawn` receive entries registered only in their parent.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _domain_from_fields, (fields | {"module": self.module.__name__},)


def _domain_from_fields(fields: dict) -> Domain:
    return Domain(**(fields | {"module": importlib.import_module(fields["module"])}))


DOMAINS: dict[str, Domain] = {
    "hopper": Domain("hopper", hopper, HopperTargetSpeed, 2, hopper._HOP_SPEED, 0.02, 1000, 15, 4),
    "walker": Domain("walker", walker, WalkerTargetSpeed, 2, walker._RUN_SPEED, 0.025, 1000, 24, 6),
    "cheetah": Domain("cheetah", cheetah, CheetahTargetSpeed, 0, cheetah._RUN_SPEED, 0.01, 1000, 17, 6),
}


# The paper domains keep the stream keys they had as their index in the sorted registry of three,
# so that their scenario draws (and the shipped agents, datasets and results) never change.
PAPER_DRAW_KEYS = {"cheetah": 0, "hopper": 1, "walker": 2}


def draw_key(name: str) -> int:
    """The key of domain `name`'s scenario stream in `MetaScenarioSet`: fixed for the paper
    domains, a stable hash of the name (CRC-32, above 2**32, so never one of theirs) for any
    other. It depends on nothing else registered."""
    return PAPER_DRAW_KEYS.get(name, 2**32 + zlib.crc32(name.encode()))


UNKNOWN_DOMAIN_HINT = (
    "a domain of your own is registered by a module named with --domains_module (or in "
    "MRCOM_DOMAINS_MODULES) or by an installed plugin (entry point group 'mrcom.domains'); see docs/extending.md"
)


def unknown_domain(name: str, what: str = "domain") -> ValueError:
    """The error for a domain that is not registered, naming the registered ones and the way in."""
    return ValueError(f"{what}: unknown domain {name!r}; registered: {sorted(DOMAINS)} ({UNKNOWN_DOMAIN_HINT})")


def get_domain(name: str) -> Domain:
    if name not in DOMAINS:
        raise unknown_domain(name)
    return DOMAINS[name]

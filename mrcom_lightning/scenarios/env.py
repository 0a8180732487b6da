"""`make_env`: a dm_control environment for one scenario, with flat float32 observations."""

from __future__ import annotations

import inspect

import numpy as np
from dm_control.rl import control

from mrcom_lightning.scenarios.domains import get_domain
from mrcom_lightning.scenarios.mjcf import scaled_model
from mrcom_lightning.scenarios.observation import ObservationFunction, observed_dim
from mrcom_lightning.scenarios.spec import ScenarioSpec
from mrcom_lightning.seeding import generator


class ScenarioEnv:
    """A scenario as an environment: `reset() -> obs`, `step(action) -> (obs, reward, done)`.

    Observations are dm_control's observation dict flattened in its own order, cast to
    float32 and passed through the scenario's observation function. Actions lie in [-1, 1].

    The task is built as `task(target_speed=..., random=...)`; a task whose constructor also
    takes `length_scale` or `size_scale` is given the scenario's, e.g. to scale a standing
    height with the torso (the paper domains' tasks do not: their thresholds stay dm_control's).
    """

    def __init__(self, spec: ScenarioSpec, seed: int | None = None, episode_steps: int | None = None):
        self.spec = spec
        self.domain = get_domain(spec.domain)
        self.episode_steps = int(episode_steps or self.domain.episode_steps)
        if self.episode_steps <= 0:
            raise ValueError(f"episode_steps must be > 0, got {episode_steps!r}")
        xml, assets = scaled_model(self.domain, spec.length_scale, spec.size_scale)
        physics = self.domain.physics.from_xml_string(xml, assets)
        episode_seed = spec.seed if seed is None else seed
        task_args = dict(target_speed=spec.target_speed * self.domain.max_speed, random=np.random.RandomState(episode_seed))
        accepted = inspect.signature(self.domain.task).parameters
        task_args |= {name: getattr(spec, name) for name in ("length_scale", "size_scale") if name in accepted}
        task = self.domain.task(**task_args)
        self._env = control.Environment(
            physics,
            task,
            time_limit=self.episode_steps * self.domain.control_timestep,
            control_timestep=self.domain.control_timestep,
        )
        self.obs_dim = observed_dim(spec.obs_fn, self.domain.obs_dim)
        self.act_dim = self.domain.act_dim
        self._observe = ObservationFunction(
            spec.obs_fn, self.domain.obs_dim, np.random.default_rng(spec.seed)
        )
        self.reseed(episode_seed)

    def reseed(self, seed: int) -> None:
        """Seeds the initial-state draws and the observation noise of the episodes to come."""
        # dm_control's Task keeps its RandomState in `_random` and draws initial states from it.
        self._env.task._random = np.random.RandomState(seed)
        self._observe.seed(generator(self.spec.seed, seed))

    @property
    def environment(self) -> control.Environment:
        """The dm_control environment (dict observations, no observation function)."""
        return self._env

    @property
    def physics(self):
        return self._env.physics

    @property
    def task(self):
        return self._env.task

    def _flat(self, observation) -> np.ndarray:
        obs = np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in observation.values()])
        return self._observe(obs)

    def reset(self) -> np.ndarray:
        return self._flat(self._env.reset().observation)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """One control step. `done` is the end of the episode (the time limit)."""
        timestep = self._env.step(action)
        return self._flat(timestep.observation), float(timestep.reward or 0.0), timestep.last()

    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, self.act_dim).astype(np.float32)


def make_env(spec: ScenarioSpec, seed: int | None = None, episode_steps: int | None = None) -> ScenarioEnv:
    """The environment of `spec`; `seed` (default: the spec's) seeds the initial states."""
    return ScenarioEnv(spec, seed=seed, episode_steps=episode_steps)

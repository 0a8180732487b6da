"""Privileged scenario inputs of the behaviour agents (DESIGN.md §3).

A behaviour SAC of a domain sees, beside the observation, the parameters of the scenario it
acts in, so that one agent can be an expert of every training scenario (the target speed,
for one, is not observable). Only the data-collecting policy gets them: episode files store
the plain observation, and the world model never sees the parameters.
"""

from __future__ import annotations

import numpy as np

from mrcom_lightning.scenarios import ScenarioSpec

# [target_speed, length_scale - 1, size_scale - 1]: all near 0..1, no normalisation needed.
SCENARIO_PARAMETERS = 3


def scenario_parameters(spec: ScenarioSpec) -> np.ndarray:
    """What a behaviour agent is told about its scenario: `[target_speed, length_scale - 1, size_scale - 1]`."""
    return np.array([spec.target_speed, spec.length_scale - 1.0, spec.size_scale - 1.0], np.float32)


def condition(obs: np.ndarray, spec: ScenarioSpec) -> np.ndarray:
    """`obs [..., obs_dim]` with the scenario's parameters appended: `[..., obs_dim + 3]`."""
    obs = np.asarray(obs, np.float32)
    parameters = np.broadcast_to(scenario_parameters(spec), (*obs.shape[:-1], SCENARIO_PARAMETERS))
    return np.concatenate([obs, parameters], axis=-1)


def standing(env) -> float:
    """1 while the hopper's torso is in the task's standing band (height in [0.6, 2] m), falling
    off outside it: the `standing` factor of the hopper's reward."""
    from dm_control.suite import hopper
    from dm_control.utils import rewards

    return float(rewards.tolerance(env.physics.height(), (hopper._STAND_HEIGHT, 2)))


# Behaviour-only training rewards: `stand` = (standing + task reward) / 2, so a hopper earns half
# its reward by getting up before it has to hop (the task reward, standing × hopping, is 0 until
# then). The data and every evaluation use the task reward.
SHAPINGS = ("none", "stand")


class ConditionedEnv:
    """A scenario environment whose observations carry the scenario's parameters (for SAC training),
    optionally with a shaped training reward (`SHAPINGS`)."""

    def __init__(self, env, shaping: str = "none"):
        if shaping not in SHAPINGS:
            raise ValueError(f"shaping must be one of {list(SHAPINGS)}, got {shaping!r}")
        if shaping == "stand" and env.spec.domain != "hopper":
            raise ValueError(f"shaping 'stand' is defined for hopper only, got a {env.spec.domain} scenario")
        self.env, self.spec, self.shaping = env, env.spec, shaping
        self.obs_dim, self.act_dim = env.obs_dim + SCENARIO_PARAMETERS, env.act_dim

    def reset(self) -> np.ndarray:
        return condition(self.env.reset(), self.spec)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        obs, reward, done = self.env.step(action)
        if self.shaping == "stand":
            reward = 0.5 * (standing(self.env) + reward)
        return condition(obs, self.spec), reward, done

    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        return self.env.random_action(rng)


def strip(obs: np.ndarray) -> np.ndarray:
    """The plain observation of a conditioned one (what episode files store)."""
    return np.asarray(obs)[..., :-SCENARIO_PARAMETERS]

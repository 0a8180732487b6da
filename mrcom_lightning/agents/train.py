"""The standard SAC training loop (Haarnoja et al. 2018, Algorithm 1) and its evaluation.

Environments come from a factory `make_env_fn(index) -> env` (the interface of
`mrcom_lightning.scenarios.make_env`: `reset()`, `step(action) -> (obs, reward, done)`,
`obs_dim`, `act_dim`, `random_action(rng)`). Training episode `i` runs on `make_env_fn(i)`;
evaluation episode `j` on `make_env_fn(eval_seed + j)`. The factory decides what an index
means: a seed for the initial states (`lambda i: make_env(spec, seed=i)`), a scenario
(`lambda i: make_env(specs[i % len(specs)], seed=i)`, all of one domain), or a cached
environment to reuse (`lambda i: envs[i % len(envs)]`); every episode starts with `reset()`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Protocol

import numpy as np
from tqdm.auto import tqdm

from mrcom_lightning.agents.replay import ReplayBuffer
from mrcom_lightning.agents.sac import SAC, SACConfig

# Evaluation indices start here so that a factory seeding by index never evaluates on the
# initial states it trained on.
EVAL_SEED = 1_000_000


class Env(Protocol):
    obs_dim: int
    act_dim: int

    def reset(self) -> np.ndarray: ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]: ...

    def random_action(self, rng: np.random.Generator) -> np.ndarray: ...


@dataclasses.dataclass
class TrainResult:
    """What `train_sac` leaves: the agent, its replay (every training transition) and its curves."""

    agent: SAC
    """The agent after the last update."""
    replay: ReplayBuffer
    """Every training transition in order; episode ids are factory indices (see `episodes()`)."""
    eval_steps: list[int]
    """Environment steps at which the agent was evaluated."""
    eval_returns: list[float]
    """Mean deterministic evaluation return at each of `eval_steps`."""
    episode_returns: list[float]
    """Return of each completed training episode (exploration noise included), in order."""
    seconds: float
    """Wall-clock time of the whole run."""

    @property
    def final_return(self) -> float:
        """Mean evaluation return after the last step."""
        return self.eval_returns[-1]


def evaluate(
    agent: SAC, make_env_fn: Callable[[int], Env], episodes: int, seed: int = EVAL_SEED
) -> list[float]:
    """Deterministic (tanh of the mean) episode returns on `make_env_fn(seed + j)`, j < episodes."""
    returns = []
    for j in range(episodes):
        env = make_env_fn(seed + j)
        obs, done, total = env.reset(), False, 0.0
        while not done:
            obs, reward, done = env.step(agent.act(obs, deterministic=True))
            total += reward
        returns.append(total)
    return returns


def train_sac(
    make_env_fn: Callable[[int], Env],
    total_steps: int,
    config: SACConfig | None = None,
    seed: int = 0,
    eval_every: int = 10_000,
    eval_episodes: int = 5,
    on_eval: Callable[[int, float, SAC], None] | None = None,
    progress: bool = True,
    device: str = "cpu",
    eval_seed: int = EVAL_SEED,
) -> TrainResult:
    """Trains SAC for `total_steps` environment steps and evaluates it along the way.

    The first `config.warmup_steps` steps take uniformly random actions and do not learn;
    afterwards each step adds one transition and runs `config.updates_per_step` updates on
    batches drawn uniformly from the replay. Every `eval_every` steps (0: never) and once at
    the end, the deterministic policy runs `eval_episodes` episodes and `on_eval(step,
    mean_return, agent)` is called, e.g. to keep `agent.checkpoint()` snapshots. Episodes end
    only by the environment's `done`, which is treated as a time limit, never as a terminal:
    dm_control tasks have no terminal states, so bootstrapping is never cut.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    if eval_every < 0 or eval_episodes < 1:
        raise ValueError(
            f"need eval_every >= 0 and eval_episodes >= 1, got {eval_every!r} and {eval_episodes!r}"
        )
    config = config or SACConfig()
    start = time.perf_counter()
    rng = np.random.default_rng(seed)

    episode = 0
    env = make_env_fn(episode)
    agent = SAC(env.obs_dim, env.act_dim, config, seed=seed, device=device)
    replay = ReplayBuffer(env.obs_dim, env.act_dim, min(config.buffer_size, total_steps))
    eval_steps: list[int] = []
    eval_returns: list[float] = []
    episode_returns: list[float] = []
    obs, episode_return = env.reset(), 0.0

    bar = tqdm(total=total_steps, disable=not progress, desc="sac", unit="step", dynamic_ncols=True)
    postfix: dict[str, str] = {}
    for step in range(1, total_steps + 1):
        if step <= config.warmup_steps:
            action = env.random_action(rng)
        else:
            action = agent.act(obs)
        next_obs, reward, last = env.step(action)
        replay.add(obs, action, reward, next_obs, False, episode_end=last, episode=episode)
        obs, episode_return = next_obs, episode_return + reward

        if step > config.warmup_steps and len(replay) >= config.batch_size:
            for _ in range(config.updates_per_step):
                metrics = agent.update(replay.sample(config.batch_size, rng, device=device))
            postfix["alpha"] = f"{metrics['temperature']:.3f}"

        if last:
            episode_returns.append(episode_return)
            postfix["return"] = f"{episode_return:.1f}"
            bar.set_postfix(postfix, refresh=False)
            episode += 1
            if step < total_steps:
                env = make_env_fn(episode)
                sizes = (env.obs_dim, env.act_dim)
                if sizes != (agent.obs_dim, agent.act_dim):
                    raise ValueError(
                        f"make_env_fn({episode}) has (obs_dim, act_dim) = {sizes}, episode 0 had "
                        f"{(agent.obs_dim, agent.act_dim)}: use one domain per run"
                    )
                obs, episode_return = env.reset(), 0.0

        if (eval_every and step % eval_every == 0) or step == total_steps:
            mean_return = float(np.mean(evaluate(agent, make_env_fn, eval_episodes, eval_seed)))
            eval_steps.append(step)
            eval_returns.append(mean_return)
            postfix["eval"] = f"{mean_return:.1f}"
            bar.set_postfix(postfix, refresh=False)
            if on_eval is not None:
                on_eval(step, mean_return, agent)
        bar.update(1)
    bar.close()
    return TrainResult(
        agent=agent,
        replay=replay,
        eval_steps=eval_steps,
        eval_returns=eval_returns,
        episode_returns=episode_returns,
        seconds=time.perf_counter() - start,
    )

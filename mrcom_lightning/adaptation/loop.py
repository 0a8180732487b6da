"""Scenario adaptation (Algorithm 2, DESIGN.md §5): SAC on real plus imagined transitions (MBPO-style).

One loop serves the `ScenarioAdaptation` callback during `fit`, `mrcom test` and `mrcom adapt`;
with `use_model=False` it is the no-model baseline (plain SAC with the same real-step budget).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from mrcom_lightning.adaptation.history import RealHistory
from mrcom_lightning.adaptation.imagination import imagine
from mrcom_lightning.agents import SAC, ReplayBuffer, SACConfig, evaluate
from mrcom_lightning.scenarios import ScenarioSpec, make_env
from mrcom_lightning.seeding import derive_seed


@dataclasses.dataclass
class AdaptationConfig:
    """How a target scenario is adapted to (paper: horizon 5, 10 policy updates per step).

    Attributes:
        env_steps: real environment steps in the target scenario (the budget).
        episode_steps: steps per target episode (dm_control's default is 1000).
        warmup_steps: random-action steps before the policy acts and learns.
        updates_per_step: SAC updates per real environment step (paper: 10).
        horizon: imagined steps per rollout (paper: 5).
        rollout_every: real steps between rollout rounds (MBPO: 250).
        rollout_batch: rollouts per round, each from a real latent state.
        real_ratio: share of real transitions in each SAC batch (MBPO: 0.05).
        model_pool_rounds: rollout rounds the model pool keeps (MBPO: about one epoch).
        history_length: real transitions each start latent is inferred from.
        fine_tune: also train the world model on the target's real data.
        fine_tune_steps: world-model gradient steps per rollout round when fine-tuning.
        fine_tune_lr: learning rate of that fine-tuning.
        eval_every: real steps between evaluations (0: only at the end).
        eval_episodes: evaluation episodes; the score is their mean return in percent of the maximum.
        sac: the agent's settings (paper: discount 0.99, actor lr 1e-4, critic lr 2e-4).
    """

    env_steps: int = 10_000
    episode_steps: int = 1000
    warmup_steps: int = 1000
    updates_per_step: int = 10
    horizon: int = 5
    rollout_every: int = 250
    rollout_batch: int = 400
    real_ratio: float = 0.05
    model_pool_rounds: int = 4
    history_length: int = 16
    fine_tune: bool = False
    fine_tune_steps: int = 20
    fine_tune_lr: float = 1e-4
    eval_every: int = 0
    eval_episodes: int = 5
    sac: SACConfig = dataclasses.field(default_factory=lambda: SACConfig(warmup_steps=0))

    def __post_init__(self) -> None:
        for name in ("env_steps", "episode_steps", "horizon", "rollout_every", "rollout_batch", "model_pool_rounds",
                     "history_length", "eval_episodes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"adaptation.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "updates_per_step", "fine_tune_steps", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"adaptation.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 < self.real_ratio <= 1.0:
            raise ValueError(f"adaptation.real_ratio must be in (0, 1], got {self.real_ratio!r}")
        if self.history_length >= self.episode_steps:
            raise ValueError(
                f"adaptation.history_length ({self.history_length}) must be shorter than "
                f"adaptation.episode_steps ({self.episode_steps})"
            )


@dataclasses.dataclass
class AdaptationResult:
    """Scores are mean evaluation returns in percent of the maximum (return / 10 for 1000-step episodes)."""

    target: ScenarioSpec
    use_model: bool
    score: float
    eval_steps: list[int]
    eval_scores: list[float]
    imagined: int
    seconds: float
    agent: SAC

    def summary(self) -> dict:
        return {
            "target": str(self.target),
            "method": "mrcom" if self.use_model else "sac",
            "score": self.score,
            "imagined_transitions": self.imagined,
            "seconds": round(self.seconds, 1),
        }


def score_of(returns: list[float], episode_steps: int) -> float:
    """Mean return in percent of the maximum (each step's reward is at most 1)."""
    return 100.0 * float(np.mean(returns)) / episode_steps


def _mixed(real: ReplayBuffer, model: ReplayBuffer, batch_size: int, ratio: float, rng, device) -> dict:
    if len(model) == 0:
        return real.sample(batch_size, rng, device=device)
    n_real = max(1, math.ceil(ratio * batch_size))
    a = real.sample(n_real, rng, device=device)
    b = model.sample(batch_size - n_real, rng, device=device)
    return {key: torch.cat([a[key], b[key]]) for key in a}


def _fine_tune(module, history: RealHistory, config: AdaptationConfig, domain: int, optimizer, rng, device) -> None:
    module.train()
    prompt_length = module.world_model.config.context_length
    for _ in range(config.fine_tune_steps):
        batch = history.batch(16, config.history_length, prompt_length, rng, domain, max(module.obs_dims),
                              max(module.act_dims), device)
        if batch is None:
            return
        terms, _ = module.losses(batch)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
    module.eval()


def adapt(
    target: ScenarioSpec,
    config: AdaptationConfig,
    module=None,
    use_model: bool = True,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> AdaptationResult:
    """Learns a policy for `target` with SAC on real transitions and, with `use_model`, on rollouts of
    `module`'s world model (a trained `MrCoM`). Returns the final score and the evaluation curve.
    With `config.fine_tune`, `module` itself is trained: pass a copy to keep the original."""
    start_time = time.perf_counter()
    rng = np.random.default_rng(seed)
    env = make_env(target, seed=seed, episode_steps=config.episode_steps)
    obs_dim, act_dim = env.obs_dim, env.act_dim
    domain_id = None
    if use_model:
        if module is None:
            raise ValueError("adaptation with the world model needs a trained model (module=None)")
        if target.domain not in module.domains:
            raise ValueError(f"target domain {target.domain!r} is not one of the model's domains {module.domains}")
        domain_id = module.domains.index(target.domain)
        expected = (module.obs_dims[domain_id], module.act_dims[domain_id])
        if (obs_dim, act_dim) != expected:
            raise ValueError(
                f"target {target} has (obs, act) dims {(obs_dim, act_dim)}, the model expects {expected} for "
                f"{target.domain} (is its obs_fn the one the model was trained with?)"
            )
        module.to(device).eval()
        optimizer = torch.optim.AdamW(module.parameters(), lr=config.fine_tune_lr) if config.fine_tune else None

    agent = SAC(obs_dim, act_dim, config.sac, seed=seed, device=device)
    real = ReplayBuffer(obs_dim, act_dim, config.env_steps)
    pool_size = config.rollout_batch * config.horizon * config.model_pool_rounds
    model_pool = ReplayBuffer(obs_dim, act_dim, pool_size)
    history = RealHistory(obs_dim, act_dim)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        action, _ = agent.actor(obs, generator=agent.generator)
        return action

    def evaluation_env(index: int):
        return make_env(target, seed=derive_seed(seed, "evaluation", index), episode_steps=config.episode_steps)

    obs = env.reset()
    history.start(obs)
    imagined, eval_steps, eval_scores = 0, [], []
    bar = tqdm(total=config.env_steps, desc=f"adapt {'mrcom' if use_model else 'sac'} {target.domain}",
               unit="step", disable=not progress, dynamic_ncols=True)
    for step in range(1, config.env_steps + 1):
        action = env.random_action(rng) if step <= config.warmup_steps else agent.act(obs)
        next_obs, reward, done = env.step(action)
        real.add(obs, action, reward, next_obs, False, episode_end=done)
        history.add(action, reward, next_obs, done)
        obs = next_obs
        if done:
            obs = env.reset()
            history.start(obs)

        learning = step > config.warmup_steps
        if use_model and learning and (step - config.warmup_steps - 1) % config.rollout_every == 0:
            if optimizer is not None:
                _fine_tune(module, history, config, domain_id, optimizer, rng, device)
            batch = history.batch(config.rollout_batch, config.history_length, module.world_model.config.context_length,
                                  rng, domain_id, max(module.obs_dims), max(module.act_dims), device)
            if batch is not None:
                rollouts = imagine(module.world_model, batch, policy, config.horizon, obs_dim, act_dim)
                model_pool.add(*(rollouts[k].cpu().numpy() for k in ("obs", "action", "reward", "next_obs", "done")))
                imagined += len(rollouts["reward"])
        if learning and len(real) >= 1:
            for _ in range(config.updates_per_step):
                agent.update(_mixed(real, model_pool, config.sac.batch_size, config.real_ratio if use_model else 1.0, rng, device))
        if (config.eval_every and step % config.eval_every == 0) or step == config.env_steps:
            returns = evaluate(agent, evaluation_env, config.eval_episodes)
            eval_steps.append(step)
            eval_scores.append(score_of(returns, config.episode_steps))
            bar.set_postfix(score=f"{eval_scores[-1]:.1f}", refresh=False)
        bar.update(1)
    bar.close()
    return AdaptationResult(target, use_model, eval_scores[-1], eval_steps, eval_scores, imagined,
                            time.perf_counter() - start_time, agent)

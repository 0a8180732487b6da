"""Model rollouts for scenario adaptation (Algorithm 2): imagined transitions from real latents,
the model's disagreement with itself along them, and its error on real transitions against the
naive forecast (what the adaptation loop's safeguard reads)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from mrcom_lightning.batch import Batch
from mrcom_lightning.metrics import masked_mean
from mrcom_lightning.models import WorldModel
from mrcom_lightning.models.world_model import ImaginedState


def _repeated(state: ImaginedState, samples: int) -> ImaginedState:
    """Each start `samples` times in a row (start-major): rows i·K .. i·K + K − 1 are start i."""
    def repeat(value: torch.Tensor | None) -> torch.Tensor | None:
        return None if value is None else value.repeat_interleave(samples, dim=0)

    return ImaginedState(**{field.name: repeat(getattr(state, field.name)) for field in dataclasses.fields(state)})


@torch.no_grad()
def imagine(
    world_model: WorldModel,
    batch: Batch,
    policy: Callable[[torch.Tensor], torch.Tensor],
    horizon: int,
    obs_dim: int,
    act_dim: int,
    samples: int = 1,
) -> dict[str, torch.Tensor]:
    """Rollouts of `horizon` steps from the latent states at the end of real windows.

    The posterior pass over each window (prompt and context included) gives (h_t, z_t) and the
    context window at its last real step t; from there `WorldModel.rollout` steps with the
    priors, each imagined transition entering the context window, while `policy` acts on the
    observations (the target's own sizes): the real o_t first, then the decoded ones.

    Each start is rolled out `samples` = K times with the same actions (the policy acts on the
    first copy's observations), so the copies differ only by the model's own sampling: the
    `disagreement` of a transition is the standard deviation across its start's copies of the
    predicted next observation (normalised space, mean over the real dims) plus that of the
    predicted reward, a per-start uncertainty (the copies of one start share it).

    Returns transitions of the target's own sizes, [N·K·H, ·], ordered (start, copy, step):
    `obs, action, reward, next_obs, done` (done is 0: DMC episodes have a fixed length),
    `disagreement` and `step` (h = 0..H−1). Runs without gradients: the world model is held out
    of policy learning.
    """
    predictions = world_model.predict(batch)
    start = _repeated(world_model.start(predictions, batch, batch["action"].shape[1]), samples)
    domain = batch["domain"].repeat_interleave(samples)
    act_max = batch["action"].shape[-1]
    starts = batch["domain"].shape[0]

    def shared_policy(obs: torch.Tensor) -> torch.Tensor:
        first = obs.view(starts, samples, -1)[:, 0, :obs_dim]
        action = torch.nn.functional.pad(policy(first), (0, act_max - act_dim))
        return action.repeat_interleave(samples, dim=0)

    rollout = world_model.rollout(start, shared_policy, horizon, domain)
    normalised = world_model.normalize_obs(rollout.next_obs, domain).view(starts, samples, horizon, -1)
    if samples > 1:
        obs_spread = masked_mean(normalised.std(1), world_model.obs_mask[batch["domain"]])  # [N, H]
        reward_spread = rollout.reward.view(starts, samples, horizon).std(1)
        disagreement = (obs_spread + reward_spread)[:, None].expand(starts, samples, horizon)
    else:
        disagreement = rollout.reward.new_zeros(starts, samples, horizon)
    out = {
        "obs": rollout.obs[..., :obs_dim].reshape(-1, obs_dim),
        "action": rollout.action[..., :act_dim].reshape(-1, act_dim),
        "reward": rollout.reward.reshape(-1),
        "next_obs": rollout.next_obs[..., :obs_dim].reshape(-1, obs_dim),
        "disagreement": disagreement.reshape(-1),
        "step": torch.arange(horizon, device=rollout.reward.device).repeat(starts * samples),
    }
    out["done"] = torch.zeros_like(out["reward"])
    return out


@torch.no_grad()
def open_loop_errors(world_model: WorldModel, batch: Batch, horizon: int) -> dict[str, torch.Tensor]:
    """The model's errors on real transitions against the naive forecast, per horizon step.

    `batch` holds windows of b + `horizon` real transitions: the posterior pass reads the first b
    (burn-in), then the model imagines the last `horizon` with the real actions. The naive
    forecast repeats the last real observation o_b and reward r_{b−1}. Returns `[H]` means over
    the windows: `model_obs`, `naive_obs` (MSE in the model's normalised space, mean over the
    real dims, so that every dim counts alike), `model_reward`, `naive_reward` (MSE)."""
    burn_in = batch["action"].shape[1] - horizon
    if burn_in < 1:
        raise ValueError(f"open-loop windows need a burn-in: {batch['action'].shape[1]} transitions for horizon {horizon}")
    domain = batch["domain"]
    predictions = world_model.predict(batch)
    state = world_model.start(predictions, batch, burn_in)
    rollout = world_model.rollout(state, batch["action"][:, burn_in:], horizon, domain)
    mask = world_model.obs_mask[domain]
    real = world_model.normalize_obs(batch["obs"][:, burn_in + 1 :], domain)
    imagined = world_model.normalize_obs(rollout.next_obs, domain)
    last = world_model.normalize_obs(batch["obs"][:, burn_in : burn_in + 1], domain)
    real_reward = batch["reward"][:, burn_in:]
    return {
        "model_obs": masked_mean((imagined - real) ** 2, mask).mean(0),
        "naive_obs": masked_mean((last - real) ** 2, mask).mean(0),
        "model_reward": ((rollout.reward - real_reward) ** 2).mean(0),
        "naive_reward": ((state.prev_reward[:, None] - real_reward) ** 2).mean(0),
    }

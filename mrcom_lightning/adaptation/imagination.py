"""Model rollouts for scenario adaptation (Algorithm 2): imagined transitions from real latent states."""

from __future__ import annotations

from typing import Callable

import torch

from mrcom_lightning.batch import Batch
from mrcom_lightning.models import WorldModel


@torch.no_grad()
def imagine(
    world_model: WorldModel,
    batch: Batch,
    policy: Callable[[torch.Tensor], torch.Tensor],
    horizon: int,
    obs_dim: int,
    act_dim: int,
) -> dict[str, torch.Tensor]:
    """Rollouts of `horizon` steps from the latent states at the end of real windows.

    The posterior pass over each window (prompt and context included) gives (h_t, z_t) and the
    context window at its last real step t; from there `WorldModel.rollout` steps with the
    priors, each imagined transition entering the context window, while `policy` acts on the
    observations (the target's own sizes): the real o_t first, then the decoded ones. Returns
    transitions (obs, action, reward, next_obs, done) of the target's own sizes, [N·horizon, ·],
    rollout by rollout. Runs without gradients: the world model is held out of policy learning.
    """
    predictions = world_model.predict(batch)
    start = world_model.start(predictions, batch, batch["action"].shape[1])
    act_max = batch["action"].shape[-1]

    def padded_policy(obs: torch.Tensor) -> torch.Tensor:
        action = policy(obs[:, :obs_dim])
        return torch.nn.functional.pad(action, (0, act_max - act_dim))

    rollout = world_model.rollout(start, padded_policy, horizon, batch["domain"])
    out = {
        "obs": rollout.obs[..., :obs_dim].reshape(-1, obs_dim),
        "action": rollout.action[..., :act_dim].reshape(-1, act_dim),
        "reward": rollout.reward.reshape(-1),
        "next_obs": rollout.next_obs[..., :obs_dim].reshape(-1, obs_dim),
    }
    out["done"] = torch.zeros_like(out["reward"])
    return out

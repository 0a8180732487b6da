"""Model rollouts for scenario adaptation (Algorithm 2): imagined transitions from real latent states."""

from __future__ import annotations

from typing import Callable

import torch

from mrcom_lightning.models import WorldModel


@torch.no_grad()
def imagine(
    world_model: WorldModel,
    batch: dict[str, torch.Tensor],
    policy: Callable[[torch.Tensor], torch.Tensor],
    horizon: int,
    obs_dim: int,
    act_dim: int,
) -> dict[str, torch.Tensor]:
    """Rollouts of `horizon` steps from the latent states at the end of real windows.

    The posterior pass over each window (prompt and context included) gives (h_t, z_t) and c_t
    at its last real step t; from there the model steps with its priors, holding the context at
    c_t, while `policy` acts on the observations: the real o_t first, then the decoded ones.
    Returns transitions (obs, action, reward, next_obs, done) of the target's own sizes,
    [N·horizon, ·]. Runs without gradients: the world model is held out of policy learning.
    """
    observation = world_model.observe(batch)
    recurrent = observation.latents.recurrent[:, -1]
    stochastic = observation.latents.stochastic[:, -1]
    context = observation.context[:, -1]
    domain = batch["domain"]
    obs = batch["obs"][:, -1, :obs_dim]
    padded = torch.zeros(obs.shape[0], batch["action"].shape[-1], device=obs.device)
    steps: dict[str, list[torch.Tensor]] = {"obs": [], "action": [], "reward": [], "next_obs": []}
    for _ in range(horizon):
        action = policy(obs)
        padded[:, :act_dim] = action
        recurrent, stochastic, next_obs, reward = world_model.imagine(recurrent, stochastic, padded, domain, context)
        next_obs = next_obs[:, :obs_dim]
        for key, value in zip(steps, (obs, action, reward, next_obs)):
            steps[key].append(value)
        obs = next_obs
    out = {key: torch.cat(values) for key, values in steps.items()}
    out["done"] = torch.zeros_like(out["reward"])
    return out

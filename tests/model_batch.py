"""A synthetic batch in the datamodule's format, for model tests and benchmarks."""

from __future__ import annotations

import torch

TINY_DIMS = {"cheetah": (17, 6), "hopper": (15, 4)}


def synthetic_batch(dims=TINY_DIMS, batch=6, steps=12, prompt=4, num_scenarios=3, seed=0) -> dict[str, torch.Tensor]:
    """Smooth random trajectories, zero-padded per domain, with masks, ids and prompts."""
    g = torch.Generator().manual_seed(seed)
    obs_max = max(o for o, _ in dims.values())
    act_max = max(a for _, a in dims.values())
    domain = torch.arange(batch) % len(dims)
    obs_mask = torch.zeros(batch, obs_max)
    action_mask = torch.zeros(batch, act_max)
    for k, (o, a) in enumerate(dims.values()):
        obs_mask[domain == k, :o] = 1
        action_mask[domain == k, :a] = 1

    def trajectory(length):
        phase = torch.rand(batch, 1, obs_max, generator=g) * 6.28
        t = torch.arange(length).view(1, -1, 1) * 0.3
        obs = torch.sin(t + phase) * obs_mask[:, None]
        action = (torch.rand(batch, length - 1, act_max, generator=g) * 2 - 1) * action_mask[:, None]
        reward = torch.sigmoid(obs[:, 1:, 0])
        return obs, action, reward

    obs, action, reward = trajectory(steps + 1)
    prompt_obs, prompt_action, prompt_reward = trajectory(prompt + 1)
    scenario = torch.arange(batch) % (num_scenarios + 1) - 1  # includes -1: a non-training scenario
    return dict(
        obs=obs,
        action=action,
        reward=reward,
        terminal=torch.zeros(batch, steps, dtype=torch.bool),
        obs_mask=obs_mask,
        action_mask=action_mask,
        domain=domain,
        scenario=scenario,
        prompt_obs=prompt_obs[:, :prompt],
        prompt_action=prompt_action,
        prompt_reward=prompt_reward,
    )

"""A synthetic batch in the datamodule's format, for tests and benchmarks of the model alone."""

from __future__ import annotations

import torch

# The paper's training setting (Appendix D) for speed measurements: hopper, walker and cheetah
# with their real (observation, action) sizes in the datamodule's order, 24 training scenarios,
# batch 32 x 64 steps, prompts of 20 transitions.
PAPER_DOMAIN_DIMS = {"cheetah": (17, 6), "hopper": (15, 4), "walker": (24, 6)}
PAPER_NUM_SCENARIOS, PAPER_BATCH, PAPER_STEPS, PAPER_PROMPT = 24, 32, 64, 20


def synthetic_batch(
    dims: dict[str, tuple[int, int]], batch: int, steps: int, prompt: int, num_scenarios: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Smooth trajectories (sines of random phase), zero-padded per domain, with masks, ids and prompts.

    Domains rotate over the rows (B // n rows each, the remainder rotating), as in the training
    stream; scenario ids include −1 (a scenario outside the training set) when `num_scenarios`
    leaves room for it.
    """
    g = torch.Generator().manual_seed(seed)
    obs_max = max(o for o, _ in dims.values())
    act_max = max(a for _, a in dims.values())
    domain = torch.arange(batch) % len(dims)
    obs_mask = torch.zeros(batch, obs_max)
    action_mask = torch.zeros(batch, act_max)
    for k, (o, a) in enumerate(dims.values()):
        obs_mask[domain == k, :o] = 1
        action_mask[domain == k, :a] = 1

    def trajectory(length: int):
        phase = torch.rand(batch, 1, obs_max, generator=g) * 6.28
        obs = torch.sin(torch.arange(length + 1).view(1, -1, 1) * 0.3 + phase) * obs_mask[:, None]
        action = (torch.rand(batch, length, act_max, generator=g) * 2 - 1) * action_mask[:, None]
        return obs, action, torch.sigmoid(obs[:, 1:, 0])

    obs, action, reward = trajectory(steps)
    prompt_obs, prompt_action, prompt_reward = trajectory(prompt)
    return dict(
        obs=obs,
        action=action,
        reward=reward,
        terminal=torch.zeros(batch, steps, dtype=torch.bool),
        obs_mask=obs_mask,
        action_mask=action_mask,
        domain=domain,
        scenario=torch.arange(batch) % (num_scenarios + 1) - 1,
        prompt_obs=prompt_obs[:, :prompt],
        prompt_action=prompt_action,
        prompt_reward=prompt_reward,
    )

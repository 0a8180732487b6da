"""A synthetic batch in the datamodule's format, for tests and benchmarks of the model alone."""

from __future__ import annotations

import numpy as np
import torch

from mrcom_lightning.batch import Batch, pad_batch

# The paper's training setting (Appendix D) for speed measurements: hopper, walker and cheetah
# with their real (observation, action) sizes in the datamodule's order, 24 training scenarios,
# batch 32 x 64 steps, prompts of 20 transitions.
PAPER_DOMAIN_DIMS = {"cheetah": (17, 6), "hopper": (15, 4), "walker": (24, 6)}
PAPER_NUM_SCENARIOS, PAPER_BATCH, PAPER_STEPS, PAPER_PROMPT = 24, 32, 64, 20


def synthetic_batch(
    dims: dict[str, tuple[int, int]], batch: int, steps: int, prompt: int, num_scenarios: int, seed: int = 0
) -> Batch:
    """Smooth trajectories (sines of random phase) at each domain's own sizes, padded by `pad_batch`.

    Domains rotate over the rows (B // n rows each, the remainder rotating), as in the training
    stream; scenario ids include −1 (a scenario outside the training set) when `num_scenarios`
    leaves room for it.
    """
    g = torch.Generator().manual_seed(seed)
    sizes = list(dims.values())
    domain = np.arange(batch) % len(dims)

    def trajectory(length: int, obs_dim: int, act_dim: int):
        phase = torch.rand(1, obs_dim, generator=g) * 6.28
        obs = torch.sin(torch.arange(length + 1).view(-1, 1) * 0.3 + phase)
        action = torch.rand(length, act_dim, generator=g) * 2 - 1
        return obs.numpy(), action.numpy(), torch.sigmoid(obs[1:, 0]).numpy()

    windows = [trajectory(steps, *sizes[k]) for k in domain]
    prompts = [trajectory(prompt, *sizes[k]) for k in domain]
    return pad_batch(
        obs=[w[0] for w in windows],
        action=[w[1] for w in windows],
        reward=np.stack([w[2] for w in windows]),
        domain=domain,
        scenario=np.arange(batch) % (num_scenarios + 1) - 1,
        prompt_obs=[p[0][:prompt] for p in prompts],
        prompt_action=[p[1] for p in prompts],
        prompt_reward=np.stack([p[2] for p in prompts]).reshape(batch, prompt),
        obs_max=max(o for o, _ in sizes),
        act_max=max(a for _, a in sizes),
    )

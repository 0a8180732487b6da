"""MAMBA (Rimon et al., ICLR 2024, "MAMBA: an Effective World Model Approach for Meta-Reinforcement
Learning") in the shared latent model: an encoder that also reads the previous action and reward,
episode starts inside meta-episodes, and local reconstruction, the world-model loss over a window
that grows during training (DESIGN.md §4, Baselines; docs/baselines.md says what is kept and mapped).
"""

from __future__ import annotations

import torch
from torch import nn

from mrcom_lightning.models.layers import mlp


class PreviousStepEncoder(nn.Module):
    """MAMBA's encoder: the posterior reads e_t together with the previous action a_{t−1} and reward
    r_{t−1} (MAMBA feeds [o_t, a_{t−1}, r_{t−1}] to DreamerV3's encoder): e'_t = e_t + MLP([e_t, ψ(a_{t−1}), r_{t−1}]).

    Meta-episodes join several episodes of one scenario, the recurrent state carried across; the
    batch's `reset` flag marks each episode's first observation. There a learned "episode start"
    token takes a_{t−1}'s place (in the transition h_t = f(h_{t−1}, z_{t−1}, ·) and here), so the model
    sees the flag, and r_{t−1} is 0 (the reward of no transition).
    """

    def __init__(self, embed_dim: int, hidden_dim: int):
        super().__init__()
        self.episode_start = nn.Parameter(torch.randn(embed_dim) / embed_dim**0.5)
        self.net = mlp(2 * embed_dim + 1, embed_dim, hidden_dim, 2)

    def previous_actions(self, prev_action_embed: torch.Tensor, reset: torch.Tensor | None) -> torch.Tensor:
        """ψ(a_{t−1}) [B, N+1, D], the episode-start token where `reset` [B, N+1] is set."""
        if reset is None:
            return prev_action_embed
        return torch.where(reset.unsqueeze(-1), self.episode_start.to(prev_action_embed.dtype), prev_action_embed)

    def forward(self, obs_embed: torch.Tensor, prev_action_embed: torch.Tensor, prev_reward: torch.Tensor) -> torch.Tensor:
        """e'_t [B, N+1, D] from e_t, ψ(a_{t−1}) [B, N+1, D] and r_{t−1} [B, N+1]."""
        return obs_embed + self.net(torch.cat([obs_embed, prev_action_embed, prev_reward.unsqueeze(-1)], dim=-1))


def loss_window_length(step: int, positions: int, start: int, growth: float, limit: int | None = None) -> int:
    """MAMBA's local-reconstruction window at training step `step`: `start` latent states, plus
    `growth` per training step (MAMBA grows it linearly with environment frames; offline, frames
    are training steps here), at most `limit` (None: no limit) and the sequence's `positions`."""
    length = int(start + growth * step)
    if limit is not None:
        length = min(length, limit)
    return max(1, min(length, positions))


def loss_window_weights(
    batch: int, positions: int, length: int, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[B, positions] float: 1 on a window of `length` consecutive latent states placed uniformly in
    each row (MAMBA's local reconstruction: the posterior runs over the whole sequence, the loss
    reads only the window), 0 elsewhere."""
    first = torch.randint(0, positions - length + 1, (batch, 1), generator=generator).to(device)
    position = torch.arange(positions, device=device)
    return ((position >= first) & (position < first + length)).float()

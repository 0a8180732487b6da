"""The context c_t over prompt and history (Eq. 4)."""

from __future__ import annotations

import math

import torch
from torch import nn


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes 2^(-8h/H) (Press et al. 2022): a recency bias that needs no positions."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])


class ContextTransformer(nn.Module):
    """Eq. 4: c_t summarises the L most recent transitions of [prompt; history before t].

    The window is first in, first out: at t = 0 it holds the whole prompt (L expert
    transitions of the same scenario); each transition then replaces the oldest one. One pass
    of a transformer over the sequence [prompt; history] with sliding-window attention (each
    position attends to itself and the L − 1 before it, with ALiBi's recency bias) gives, at
    the position of the newest transition before t, the context c_t.

    **The rule: c_t holds nothing that s_t is asked to predict.** s_t reconstructs o_t and
    predicts r_{t−1}, so c_t may see neither: history token i carries (e_i, a_i, r_{i−1}), the
    reward that arrived with o_i (0 for the first token of a sequence, as at an episode's
    start), and c_t's newest token is i = t − 1. Prompt tokens follow the same rule.

    In imagination the window rolls forward: each imagined step pushes its own token (decoded
    observation, action, predicted reward) and reads a fresh c (`WorldModel.rollout`), exactly
    as real steps do.

    With `use_prompt=False` (the CaDM-style baseline) every prompt slot holds the same
    learned "no prompt" token, so c_t knows only the last transitions of the history itself.
    """

    def __init__(self, embed_dim: int, window: int, heads: int = 4, layers: int = 1, use_prompt: bool = True):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"model.world_model.embed_dim ({embed_dim}) must be divisible by heads ({heads})")
        self.window = window
        self.heads = heads
        self.layers = layers
        self.use_prompt = use_prompt
        self.token = nn.Linear(2 * embed_dim + 1, embed_dim)
        if not use_prompt:
            self.no_prompt = nn.Parameter(torch.randn(embed_dim) / math.sqrt(embed_dim))
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)
        layer = nn.TransformerEncoderLayer(
            embed_dim, heads, dim_feedforward=2 * embed_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)

    @property
    def receptive_field(self) -> int:
        """Tokens that the newest position's output depends on: L per layer, overlapping by one."""
        return self.layers * (self.window - 1) + 1

    def tokens(self, obs_embed: torch.Tensor, action_embed: torch.Tensor, prev_reward: torch.Tensor) -> torch.Tensor:
        """One token per transition from (e_i, a_i, r_{i−1}): [B, N, D]."""
        return self.token(torch.cat([obs_embed, action_embed, prev_reward.unsqueeze(-1)], dim=-1))

    def start(self, prompt: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """The window before the first transition, [B, L, D]: the prompt tokens, or the learned
        "no prompt" token (CaDM-style), or zeros when a prompt is expected but absent."""
        batch, dim = like.shape[0], like.shape[-1]
        if not self.use_prompt or prompt is None:
            return (self.no_prompt if not self.use_prompt else like.new_zeros(dim)).expand(batch, self.window, dim)
        if prompt.shape[1] != self.window:
            raise ValueError(f"prompt has {prompt.shape[1]} transitions, the context window expects {self.window}")
        return prompt

    def attention_bias(self, length: int, batch: int, device) -> torch.Tensor:
        """[B·heads, S, S]: −slope·(i − j) inside the window j ∈ (i − L, i], −inf elsewhere."""
        position = torch.arange(length, device=device)
        distance = (position[:, None] - position[None, :]).float()
        inside = (distance >= 0) & (distance < self.window)
        bias = -self.slopes.to(device)[:, None, None] * distance
        bias = bias.masked_fill(~inside, float("-inf"))
        return bias.repeat(batch, 1, 1)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """The context at every position of a token sequence [B, S, D]: [B, S, D]."""
        mask = self.attention_bias(sequence.shape[1], sequence.shape[0], sequence.device)
        return self.norm(self.encoder(sequence, mask=mask))

    def contexts(self, prompt: torch.Tensor | None, history: torch.Tensor) -> torch.Tensor:
        """c_0..c_N from prompt tokens [B, L, D] (or None) and history tokens [B, N, D]: [B, N+1, D]."""
        out = self(torch.cat([self.start(prompt, history), history], dim=1))
        # Position L−1+t holds the newest transition before t: its window is the FIFO window of c_t.
        return out[:, self.window - 1 :]

"""The context c_t over prompt and history (Eq. 4)."""

from __future__ import annotations

import torch
from torch import nn


class ContextTransformer(nn.Module):
    """Eq. 4: c_t summarises the L most recent transitions of [prompt; (e, a, r)_{<t}].

    The window is first in, first out: at t = 0 it holds the whole prompt (L expert
    transitions of the same scenario); each real transition then replaces the oldest one.
    Each window, plus a learned query token at its end, passes through a transformer encoder
    with learned positions by recency; the query's output is c_t.

    With `use_prompt=False` (the CaDM-style baseline) the prompt slots are masked, so c_t
    sees only the last L transitions of the history itself.
    """

    def __init__(self, embed_dim: int, window: int, heads: int = 4, layers: int = 1, use_prompt: bool = True):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"model.embed_dim ({embed_dim}) must be divisible by model.heads ({heads})")
        self.window = window
        self.use_prompt = use_prompt
        self.token = nn.Linear(2 * embed_dim + 1, embed_dim)
        self.query = nn.Parameter(torch.zeros(embed_dim))
        self.position = nn.Parameter(torch.randn(window + 1, embed_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            embed_dim, heads, dim_feedforward=2 * embed_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)

    def tokens(self, obs_embed: torch.Tensor, action_embed: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
        """One token per transition (e_t, a_t, r_t): [B, N, D]."""
        return self.token(torch.cat([obs_embed, action_embed, reward.unsqueeze(-1)], dim=-1))

    def forward(self, prompt: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """c_0..c_N from prompt tokens [B, L, D] and history tokens [B, N, D]: [B, N+1, D]."""
        batch, length, dim = prompt.shape
        if length != self.window:
            raise ValueError(f"prompt has {length} transitions, the context window expects {self.window}")
        sequence = torch.cat([prompt, history], dim=1)  # [B, L+N, D]
        steps = history.shape[1] + 1
        windows = sequence.unfold(1, length, 1).permute(0, 1, 3, 2)  # [B, N+1, L, D]; window t ends at x_{t-1}
        query = self.query.expand(batch, steps, 1, dim)
        windows = torch.cat([windows, query], dim=2) + self.position
        windows = windows.reshape(batch * steps, length + 1, dim)
        padding = None
        if not self.use_prompt:
            # Slot j of window t holds sequence position t + j; positions < L are prompt.
            position = torch.arange(steps, device=prompt.device)[:, None] + torch.arange(length + 1, device=prompt.device)
            padding = (position < length) & (torch.arange(length + 1, device=prompt.device) < length)
            padding = padding.unsqueeze(0).expand(batch, steps, length + 1).reshape(batch * steps, length + 1)
        out = self.encoder(windows, src_key_padding_mask=padding)[:, -1]
        return self.norm(out).reshape(batch, steps, dim)

"""Building blocks shared by the world model's components (DreamerV3's transforms and heads)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, Normal

MIN_STD = 0.1  # lower bound of every Gaussian's std (Dreamer's choice; keeps KLs finite)


def mlp(
    in_dim: int, out_dim: int, hidden_dim: int, layers: int = 3, dropout: float = 0.0, layer_norm: bool = False
) -> nn.Sequential:
    """A `layers`-layer ReLU MLP (the paper's tokenizer, decoder and reward modules: 3 layers).
    `dropout` and `layer_norm` regularise each hidden layer as DroQ's critics do (Hiraoka et al.
    2022): Linear → Dropout → LayerNorm → ReLU; with neither it is the plain MLP."""
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        modules.append(nn.Linear(a, b))
        if i < layers - 1:
            if dropout > 0:
                modules.append(nn.Dropout(dropout))
            if layer_norm:
                modules.append(nn.LayerNorm(b))
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


class GaussianHead(nn.Module):
    """A diagonal Gaussian N(μ, σ) over `dim` units from an MLP of its inputs."""

    def __init__(self, in_dim: int, dim: int, hidden_dim: int, layers: int = 2):
        super().__init__()
        self.net = mlp(in_dim, 2 * dim, hidden_dim, layers)

    def forward(self, x: torch.Tensor) -> Independent:
        return self.distribution(self.net(x))

    def distribution(self, out: torch.Tensor) -> Independent:
        """N(μ, σ) from the MLP's output [..., 2·dim]: μ its first half, σ = softplus(second half) + MIN_STD."""
        mean, std = out.chunk(2, dim=-1)
        # No argument checks: a diverged step must reach the loss guard of the training step,
        # which names the term, not stop inside a Normal with an opaque ValueError.
        return Independent(Normal(mean, nn.functional.softplus(std) + MIN_STD, validate_args=False), 1, validate_args=False)


class TwoHot(nn.Module):
    """Two-hot encoding over bins evenly spaced in symlog space (DreamerV3's reward head target)
    or, with `symlog=False`, in the value's own units; values outside [low, high] are clamped."""

    def __init__(self, bins: int = 255, low: float = -20.0, high: float = 20.0, symlog: bool = True):
        super().__init__()
        self.register_buffer("bins", torch.linspace(low, high, bins))
        self.symlog = symlog

    def encode(self, value: torch.Tensor) -> torch.Tensor:
        x = (symlog(value) if self.symlog else value).clamp(self.bins[0], self.bins[-1])
        above = torch.searchsorted(self.bins, x.contiguous(), right=False).clamp(1, len(self.bins) - 1)
        below = above - 1
        lo, hi = self.bins[below], self.bins[above]
        weight_hi = ((x - lo) / (hi - lo)).clamp(0, 1)
        target = torch.zeros(*x.shape, len(self.bins), device=x.device, dtype=x.dtype)
        target.scatter_(-1, below.unsqueeze(-1), (1 - weight_hi).unsqueeze(-1))
        target.scatter_add_(-1, above.unsqueeze(-1), weight_hi.unsqueeze(-1))
        return target

    def values(self) -> torch.Tensor:
        """The bins in the value's own units."""
        return symexp(self.bins) if self.symlog else self.bins

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        mean = (logits.softmax(-1) * self.bins).sum(-1)
        return symexp(mean) if self.symlog else mean

    def nll(self, logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return -(self.encode(value) * logits.log_softmax(-1)).sum(-1)

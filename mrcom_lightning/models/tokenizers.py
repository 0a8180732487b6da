"""Per-domain tokenizers φ_k and decoders p(o_t | s_t): the unified mapping of the paper (§3).

Batches mix domains: observations and actions are zero-padded to the largest size, with a
domain id per row (TD-MPC2's mechanism). Each domain's module sees only its own rows and its
own dims; every module runs on every batch (on zero rows when its domain is absent), so all
parameters take part in every step, as DDP expects.
"""

from __future__ import annotations

import torch
from torch import nn

from mrcom_lightning.models.layers import mlp


def per_domain(modules: nn.ModuleList, x: torch.Tensor, domain: torch.Tensor, in_dims, out_dim: int) -> torch.Tensor:
    """Applies `modules[k]` to the rows of domain k (first `in_dims[k]` dims), [B, ...] -> [B, ..., out_dim].

    The result has x's dtype; under autocast the modules' lower-precision outputs are cast to it.
    """
    out = x.new_zeros(*x.shape[:-1], out_dim)
    for k, (module, in_dim) in enumerate(zip(modules, in_dims)):
        rows = (domain == k).nonzero(as_tuple=True)[0]
        out[rows] = module(x[rows][..., :in_dim]).to(out.dtype)
    return out


class DomainTokenizer(nn.Module):
    """φ_k: a 3-layer ReLU MLP per domain from (normalised) observations, or actions, to an embedding."""

    def __init__(self, dims: list[int], embed_dim: int, hidden_dim: int, layers: int = 3):
        super().__init__()
        self.dims = list(dims)
        self.embed_dim = embed_dim
        self.nets = nn.ModuleList(mlp(d, embed_dim, hidden_dim, layers) for d in self.dims)

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return per_domain(self.nets, x, domain, self.dims, self.embed_dim)


class DomainDecoder(nn.Module):
    """The observation decoder p(o_t | z_t, h_t, u_t) per domain; predicts normalised o, zero-padded."""

    def __init__(self, dims: list[int], feature_dim: int, hidden_dim: int, layers: int = 3):
        super().__init__()
        self.dims = list(dims)
        self.max_dim = max(self.dims)
        self.nets = nn.ModuleList(mlp(feature_dim, d, hidden_dim, layers) for d in self.dims)

    def forward(self, features: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        # At least float32: the reconstruction losses read it (autocast computes the nets in bf16).
        out = features.new_zeros(*features.shape[:-1], self.max_dim, dtype=torch.promote_types(features.dtype, torch.float32))
        for k, (net, dim) in enumerate(zip(self.nets, self.dims)):
            rows = (domain == k).nonzero(as_tuple=True)[0]
            out[rows, ..., :dim] = net(features[rows]).to(out.dtype)
        return out

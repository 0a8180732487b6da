"""Prediction metrics per split and domain, as torchmetrics (synchronised across DDP ranks)."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics import MeanMetric

METRICS = ("obs_mse", "reward_mse", "open_loop_mse")


class PredictionMetrics(nn.Module):
    """Mean squared errors of the world model's predictions, one `MeanMetric` per (domain, metric).

    `obs_mse`: reconstruction of o_t from the posterior s_t; `reward_mse`: the expected reward
    against r_t; `open_loop_mse`: observations predicted H steps ahead after a burn-in. All in
    the environment's own units, over each domain's real dims.
    """

    def __init__(self, domains: list[str]):
        super().__init__()
        self.domains = list(domains)
        self.metrics = nn.ModuleDict(
            {f"{domain}/{name}": MeanMetric() for domain in self.domains for name in METRICS}
        )

    def update(self, name: str, error: torch.Tensor, domain: torch.Tensor, dims: list[int]) -> None:
        """`error [B, ..., D]` of squared errors; each row contributes its first dims[domain] dims."""
        for k, domain_name in enumerate(self.domains):
            rows = (domain == k).nonzero(as_tuple=True)[0]
            if len(rows):
                values = error[rows] if error.dim() == 1 else error[rows][..., : dims[k]]
                self.metrics[f"{domain_name}/{name}"].update(values.detach().float())

    def compute(self, prefix: str) -> dict[str, torch.Tensor]:
        """`{prefix}/{domain}/{metric}` for every metric that saw data on some rank; resets them.

        Every metric is computed on every rank (each compute is a collective under DDP), so a
        domain that one rank never saw cannot leave the others waiting.
        """
        out = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            for key, metric in self.metrics.items():
                value = metric.compute()
                metric.reset()
                if torch.isfinite(value):
                    out[f"{prefix}/{key}"] = value
        return out

"""Prediction metrics per split and domain, as torchmetrics (synchronised across DDP ranks)."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics import MeanMetric, Metric

# Per-row means over time and the domain's real dims, in the environment's own units.
SCALARS = ("obs_mse", "reward_mse")
# Per horizon step h = 1..H of an open-loop rollout after a burn-in: the model's errors and
# those of the naive forecast that repeats the last real observation and reward.
STEPWISE = ("open_loop_mse", "open_loop_reward_mse", "naive_open_loop_mse", "naive_open_loop_reward_mse")


class StepwiseMean(Metric):
    """The mean of per-row errors at each horizon step: update with [rows, H], compute gives [H]."""

    full_state_update = False

    def __init__(self, horizon: int):
        super().__init__()
        self.add_state("total", torch.zeros(horizon, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, error: torch.Tensor) -> None:
        self.total += error.detach().double().sum(0)
        self.count += error.shape[0]

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


class PredictionMetrics(nn.Module):
    """The world model's prediction errors, one metric per (domain, name).

    `obs_mse`: reconstruction of o_t from the posterior s_t; `reward_mse`: the expected reward
    against r_t; `open_loop_mse` / `open_loop_reward_mse`: observations and rewards imagined h
    steps ahead (h = 1..H) after a burn-in, with the context rolling forward; `naive_…`: the
    same errors of repeating the last real observation and reward. `compute` reports the
    stepwise ones as their mean over h, their h = 1 value as `one_step_…` (`one_step_mse`,
    `naive_one_step_reward_mse`, ...), and `curves` as [H] per step.
    """

    def __init__(self, domains: list[str], horizon: int):
        super().__init__()
        self.domains = list(domains)
        metrics: dict[str, Metric] = {}
        for domain in self.domains:
            metrics |= {f"{domain}/{name}": MeanMetric() for name in SCALARS}
            metrics |= {f"{domain}/{name}": StepwiseMean(horizon) for name in STEPWISE}
        self.metrics = nn.ModuleDict(metrics)

    def update(self, name: str, error: torch.Tensor, domain: torch.Tensor) -> None:
        """Per-row errors `[B]` (scalars) or `[B, H]` (stepwise) of rows with domain ids `domain [B]`."""
        for k, domain_name in enumerate(self.domains):
            rows = (domain == k).nonzero(as_tuple=True)[0]
            if len(rows):
                self.metrics[f"{domain_name}/{name}"].update(error[rows].detach().float())

    def compute(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(`{prefix}/{domain}/{name}` scalars, `{domain}/{name}` stepwise curves [H]) for every metric
        that saw data on some rank; resets them.

        Every metric is computed on every rank (each compute is a collective under DDP), so a
        domain that one rank never saw cannot leave the others waiting.
        """
        scalars, curves = {}, {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            for key, metric in self.metrics.items():
                value = metric.compute()
                metric.reset()
                if not torch.isfinite(value).all():
                    continue
                if value.dim():
                    curves[key] = value
                    # h = 1 of the open-loop curve: the one-step prediction from the prior.
                    scalars[f"{prefix}/{key.replace('open_loop', 'one_step')}"] = value[0]
                    value = value.mean()
                scalars[f"{prefix}/{key}"] = value
        return scalars, curves


def masked_mean(error: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's real dims (mask [B, D]) of error [B, ..., D]: [B, ...]."""
    mask = mask.view(mask.shape[0], *([1] * (error.dim() - 2)), mask.shape[-1])
    return (error * mask).sum(-1) / mask.sum(-1)

"""Prediction metrics per split and domain, as torchmetrics (synchronised across DDP ranks)."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics import MeanMetric, Metric

# Per-row means over time and the domain's real dims, in the environment's own units; and the
# probability the reward head puts outside the domains' reward range.
SCALARS = ("obs_mse", "reward_mse", "reward_mass_outside")
# Per horizon step h = 1..H of an open-loop rollout after a burn-in: the model's errors and
# those of the naive forecast that repeats the last real observation and reward.
STEPWISE = ("open_loop_mse", "open_loop_reward_mse", "naive_open_loop_mse", "naive_open_loop_reward_mse")
# The open-loop observation error per dim in units of that dim's mean squared one-step change
# (the naive forecast's error at h = 1), then averaged over dims: model and naive forecast.
RELATIVE = ("open_loop_rel_mse", "naive_open_loop_rel_mse")


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


class PerDimStepwise(Metric):
    """Squared errors per horizon step and dim of the model and the naive forecast, summed over
    one domain's windows: update with `model`, `naive` [rows, H, O]; compute gives `(model [H],
    naive [H])` in units of each dim's one-step change, averaged over the domain's `dims`
    (`adaptation.imagination.per_dim_relative_errors`, on the split's accumulated means)."""

    full_state_update = False

    def __init__(self, horizon: int, dims: int, width: int):
        super().__init__()
        self.dims = dims
        for name in ("model", "naive"):
            self.add_state(name, torch.zeros(horizon, width, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, model: torch.Tensor, naive: torch.Tensor) -> None:
        self.model += model.detach().double().sum(0)
        self.naive += naive.detach().double().sum(0)
        self.count += model.shape[0]

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        from mrcom_lightning.adaptation.imagination import per_dim_relative_errors  # (it imports this module)

        model, naive = (x[:, : self.dims] / self.count for x in (self.model, self.naive))
        # The mean squared errors as one window of root-mean-square errors against a zero target:
        # per_dim_relative_errors' mean over windows is then these means, its scale naive[h = 1].
        zero, mask = torch.zeros_like(model)[None], torch.ones(1, self.dims, dtype=model.dtype)
        relative, _ = per_dim_relative_errors(model.sqrt()[None], zero, naive[:1].sqrt()[None], mask)
        naive_relative, _ = per_dim_relative_errors(naive.sqrt()[None], zero, naive[:1].sqrt()[None], mask)
        return relative.float(), naive_relative.float()


class PredictionMetrics(nn.Module):
    """The world model's prediction errors, one metric per (domain, name).

    `obs_mse`: reconstruction of o_t from the posterior s_t; `reward_mse`: the expected reward
    against r_t; `open_loop_mse` / `open_loop_reward_mse`: observations and rewards imagined h
    steps ahead (h = 1..H) after a burn-in, with the context rolling forward; `naive_…`: the
    same errors of repeating the last real observation and reward; `open_loop_rel_mse` /
    `naive_open_loop_rel_mse`: the open-loop observation errors per dim in units of that dim's
    one-step change, then averaged over dims (so joint angles weigh as much as velocities);
    `reward_mass_outside`: the reward head's probability outside the reward range. `compute`
    reports the stepwise ones as their mean over h, their h = 1 value as `one_step_…`
    (`one_step_mse`, `naive_one_step_reward_mse`, ...), and `curves` as [H] per step.

    `obs_dims` (per domain, default none) enables the per-dim errors (`update_per_dim`).
    """

    def __init__(self, domains: list[str], horizon: int, obs_dims: list[int] | None = None):
        super().__init__()
        self.domains = list(domains)
        metrics: dict[str, Metric] = {}
        for k, domain in enumerate(self.domains):
            metrics |= {f"{domain}/{name}": MeanMetric() for name in SCALARS}
            metrics |= {f"{domain}/{name}": StepwiseMean(horizon) for name in STEPWISE}
            if obs_dims is not None:
                metrics[f"{domain}/{RELATIVE[0]}"] = PerDimStepwise(horizon, obs_dims[k], max(obs_dims))
        self.metrics = nn.ModuleDict(metrics)

    def update_per_dim(self, model: torch.Tensor, naive: torch.Tensor, domain: torch.Tensor) -> None:
        """Squared errors [B, H, O_max] of the model's and the naive forecast's open-loop observations."""
        for k, domain_name in enumerate(self.domains):
            rows = (domain == k).nonzero(as_tuple=True)[0]
            if len(rows):
                self.metrics[f"{domain_name}/{RELATIVE[0]}"].update(model[rows].float(), naive[rows].float())

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
                if isinstance(metric, PerDimStepwise):
                    domain = key.rsplit("/", 1)[0]
                    pairs = [(f"{domain}/{name}", v) for name, v in zip(RELATIVE, value) if torch.isfinite(v).all()]
                else:
                    pairs = [(key, value)] if torch.isfinite(value).all() else []
                for key, value in pairs:
                    self._report(prefix, key, value, scalars, curves)
        return scalars, curves

    @staticmethod
    def _report(prefix: str, key: str, value: torch.Tensor, scalars: dict, curves: dict) -> None:
        """A scalar as `{prefix}/{key}`; a curve [H] as its mean over h, its h = 1 value as the
        `one_step_…` scalar (the one-step prediction from the prior) and as `curves[key]`."""
        if value.dim():
            curves[key] = value
            scalars[f"{prefix}/{key.replace('open_loop', 'one_step')}"] = value[0]
            value = value.mean()
        scalars[f"{prefix}/{key}"] = value


def masked_mean(error: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's real dims (mask [B, D]) of error [B, ..., D]: [B, ...]."""
    mask = mask.view(mask.shape[0], *([1] * (error.dim() - 2)), mask.shape[-1])
    return (error * mask).sum(-1) / mask.sum(-1)

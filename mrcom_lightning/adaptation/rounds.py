"""The world model's work in the adaptation loop (`loop.py`), one function per stage, each given only
its own settings: measuring the model where the policy goes, the safeguard's judgement, the share
cap, fine-tuning on the target's real history, and the cut of K-sample rollouts into the model pool's
transitions."""

from __future__ import annotations

import numpy as np
import torch

from mrcom_lightning.adaptation.history import RealHistory
from mrcom_lightning.adaptation.imagination import open_loop_errors
from mrcom_lightning.adaptation.settings import FineTuneSettings, ReplaySettings, RolloutSettings, SafeguardSettings
from mrcom_lightning.training import train_steps


def fine_tune(module, history: RealHistory, settings: FineTuneSettings, length: int, domain: int, optimizer, rng,
              device) -> float | None:
    """`settings.steps` steps of the world model's own loss (Eq. 16) on windows of `length` real
    transitions of the target (with `settings.newest`, windows ending among the newest `newest`
    only); the mean total loss, or None while the history has no such window."""
    batches = []
    for _ in range(settings.steps):
        batch = history.model_batch(module, domain, settings.batch, length, rng, device, newest=settings.newest or None)
        if batch is None:
            break
        batches.append(batch)
    terms = train_steps(module, batches, optimizer)
    return float(np.mean([t["total"] for t in terms])) if terms else None


def model_errors(module, history: RealHistory, rollout: RolloutSettings, windows: int, length: int, domain: int, rng,
                 device, newest: int) -> dict[str, torch.Tensor] | None:
    """The model's open-loop errors against the naive forecast (`open_loop_errors`, h = 1..horizon) on
    `windows` windows ending among the newest `newest` real transitions, i.e. where the current
    policy goes, imagined as the agent gets them (anchors and `imagination` included); None while
    no such window exists."""
    batch = history.model_batch(module, domain, windows, length + rollout.horizon, rng, device, newest=newest)
    if batch is None:
        return None
    return open_loop_errors(module.world_model, batch, rollout.horizon, rollout.anchor_observations,
                            rollout.anchor_rewards, rollout.imagination)


def error_metrics(errors: dict[str, torch.Tensor], prefix: str = "charts/model_error") -> dict[str, float]:
    """`model_errors` as logged values: observation errors at h = 1 and the last h in units of each dim's
    one-step change (naive = 1 at h = 1), reward errors (MSE) at h = 1 beside the naive forecast's."""
    return {
        f"{prefix}/obs_h1": errors["model_obs"][0].item(),
        f"{prefix}/obs_last": errors["model_obs"][-1].item(),
        f"{prefix}/naive_obs_last": errors["naive_obs"][-1].item(),
        f"{prefix}/reward_h1": errors["model_reward"][0].item(),
        f"{prefix}/naive_reward_h1": errors["naive_reward"][0].item(),
        f"{prefix}/reward_h1_over_naive": (errors["model_reward"][0] / errors["naive_reward"][0].clamp(min=1e-12)).item(),
    }


def share_cap(errors: dict[str, torch.Tensor], settings: ReplaySettings) -> float:
    """The share cap's factor on the imagined share: 1 while the model's one-step observation error
    e (`model_errors`, per dim in units of the naive forecast's) is at most `share_cap_low`, falling
    linearly to 0 at `share_cap_high`."""
    error = errors["model_obs"][0].item()
    return min(1.0, max(0.0, (settings.share_cap_high - error) / (settings.share_cap_high - settings.share_cap_low)))


class ErrorAverage:
    """The safeguard's errors averaged over rounds: an exponential moving average with weight
    `memory` on the past (0: each round's own errors). One round measures the model on a few dozen
    windows of the newest 250 transitions, a noisy figure whose ratio to the naive forecast can
    jump 1–4× from one round to the next; the average keeps the decision from flapping."""

    def __init__(self, memory: float) -> None:
        self.memory = memory
        self.value: dict[str, torch.Tensor] | None = None

    def __call__(self, errors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.value is None:
            self.value = dict(errors)
        else:
            self.value = {key: self.memory * self.value[key] + (1 - self.memory) * value for key, value in errors.items()}
        return self.value


def trusted_horizon(errors: dict[str, torch.Tensor] | None, settings: SafeguardSettings,
                    average: ErrorAverage | None = None) -> tuple[int, dict]:
    """The safeguard's judgement of `model_errors` on the newest transitions (which fine-tuning has
    not seen yet): the longest prefix h = 1..k on which the model beats the naive forecast on both
    the observation and the reward error (the reward's within `reward_tolerance` times the naive
    forecast's), errors averaged over rounds by `average` when given; 0 without a measurement.
    Returns the trusted horizon and the values to log."""
    if errors is None:
        return 0, {}
    judged = average(errors) if average is not None else errors
    beats = (judged["model_obs"] < judged["naive_obs"]) & (
        judged["model_reward"] < settings.reward_tolerance * judged["naive_reward"]
    )
    trusted = int(beats.long().cumprod(0).sum())
    return trusted, error_metrics(errors, "charts/safeguard") | {
        "charts/safeguard_reward_ratio": (judged["model_reward"][0] / judged["naive_reward"][0].clamp(min=1e-12)).item(),
        "charts/trusted_horizon": trusted,
    }


def imagined_transitions(rollouts: dict[str, torch.Tensor], settings: RolloutSettings, horizon: int) -> dict[str, np.ndarray]:
    """The transitions of `imagine` that enter the pool, after truncation or penalty."""
    disagreement = rollouts["disagreement"]
    keep = torch.ones_like(disagreement, dtype=torch.bool)
    reward = rollouts["reward"]
    if settings.uncertainty == "truncate":
        exceeded = (disagreement > settings.uncertainty_threshold).view(-1, horizon)
        keep = (exceeded.long().cumsum(1) == 0).view(-1)  # every step before the first uncertain one
    elif settings.uncertainty == "penalty":
        reward = reward - settings.uncertainty_penalty * disagreement
    kept = {"reward": reward} | {key: rollouts[key] for key in ("obs", "action", "next_obs", "done")}
    return {key: value[keep].cpu().numpy() for key, value in kept.items()}

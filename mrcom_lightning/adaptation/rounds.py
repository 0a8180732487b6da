"""What the world model does in each rollout round of the adaptation loop (`loop.py`): fine-tuning
on the target's real history, the safeguard against the naive forecast, and the cut of K-sample
rollouts into the transitions that enter the model pool."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from mrcom_lightning.adaptation.history import RealHistory
from mrcom_lightning.adaptation.imagination import open_loop_errors

if TYPE_CHECKING:
    from mrcom_lightning.adaptation.loop import AdaptationConfig

FINE_TUNE_CLIP = 100.0  # the gradient clipping of `mrcom fit` (configs/*.yaml)


def fine_tune(module, history: RealHistory, config: AdaptationConfig, domain: int, optimizer, rng, device) -> float | None:
    """`fine_tune_steps` steps of the world model's own loss (Eq. 16) on the target's real windows;
    the mean total loss, or None while the history has no window."""
    prompt_length = module.world_model.config.context_length
    losses = []
    module.train()
    for step in range(config.fine_tune_steps):
        batch = history.batch(config.fine_tune_batch, config.history_length, prompt_length, rng, domain,
                              max(module.obs_dims), max(module.act_dims), device)
        if batch is None:
            break
        terms, _ = module.losses(batch)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), FINE_TUNE_CLIP)
        optimizer.step()
        module.on_train_batch_end(None, batch, step)
        losses.append(terms["total"].item())
    module.eval()
    return float(np.mean(losses)) if losses else None


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


def model_errors(module, history: RealHistory, config: AdaptationConfig, domain: int, rng, device,
                 newest: int) -> dict[str, torch.Tensor] | None:
    """The model's open-loop errors against the naive forecast (`open_loop_errors`, h = 1..horizon)
    on `safeguard_windows` windows ending among the newest `newest` real transitions, i.e. where
    the current policy goes, imagined as the agent gets them (anchors and `imagination` included);
    None while no such window exists."""
    batch = history.batch(config.safeguard_windows, config.history_length + config.horizon,
                          module.world_model.config.context_length, rng, domain, max(module.obs_dims),
                          max(module.act_dims), device, newest=newest)
    if batch is None:
        return None
    return open_loop_errors(module.world_model, batch, config.horizon, config.anchor_observations,
                            config.anchor_rewards, config.imagination)


def error_metrics(errors: dict[str, torch.Tensor], prefix: str = "charts/model_error") -> dict[str, float]:
    """`model_errors` as logged values: observation errors at h = 1 and h = horizon in units of each dim's
    one-step change (naive = 1 at h = 1), reward errors (MSE) at h = 1 beside the naive forecast's."""
    return {
        f"{prefix}/obs_h1": errors["model_obs"][0].item(),
        f"{prefix}/obs_last": errors["model_obs"][-1].item(),
        f"{prefix}/naive_obs_last": errors["naive_obs"][-1].item(),
        f"{prefix}/reward_h1": errors["model_reward"][0].item(),
        f"{prefix}/naive_reward_h1": errors["naive_reward"][0].item(),
        f"{prefix}/reward_h1_over_naive": (errors["model_reward"][0] / errors["naive_reward"][0].clamp(min=1e-12)).item(),
    }


def trusted_horizon(module, history: RealHistory, config: AdaptationConfig, domain: int, rng, device,
                    average: ErrorAverage | None = None) -> tuple[int, dict]:
    """The safeguard: how many imagined steps the model may contribute now, and its errors.

    Windows ending among the newest `rollout_every` real transitions (which fine-tuning has not
    seen yet) are imagined open loop with their real actions over the last `horizon` steps
    (`model_errors`); the trusted horizon is the longest prefix h = 1..k on which the model beats
    the naive forecast on both the observation and the reward error (the reward's within
    `safeguard_reward_tolerance` times the naive forecast's), both errors averaged over rounds by
    `average` when one is given. 0 while no such window exists."""
    errors = model_errors(module, history, config, domain, rng, device, newest=config.rollout_every)
    if errors is None:
        return 0, {}
    judged = average(errors) if average is not None else errors
    beats = (judged["model_obs"] < judged["naive_obs"]) & (
        judged["model_reward"] < config.safeguard_reward_tolerance * judged["naive_reward"]
    )
    trusted = int(beats.long().cumprod(0).sum())
    return trusted, error_metrics(errors, "charts/safeguard") | {
        "charts/safeguard_reward_ratio": (judged["model_reward"][0] / judged["naive_reward"][0].clamp(min=1e-12)).item(),
        "charts/trusted_horizon": trusted,
    }


def imagined_transitions(rollouts: dict[str, torch.Tensor], config: AdaptationConfig, horizon: int) -> dict[str, np.ndarray]:
    """The transitions of `imagine` that enter the pool, after truncation or penalty."""
    disagreement = rollouts["disagreement"]
    keep = torch.ones_like(disagreement, dtype=torch.bool)
    reward = rollouts["reward"]
    if config.uncertainty == "truncate":
        exceeded = (disagreement > config.uncertainty_threshold).view(-1, horizon)
        keep = (exceeded.long().cumsum(1) == 0).view(-1)  # every step before the first uncertain one
    elif config.uncertainty == "penalty":
        reward = reward - config.uncertainty_penalty * disagreement
    kept = {"reward": reward} | {key: rollouts[key] for key in ("obs", "action", "next_obs", "done")}
    return {key: value[keep].cpu().numpy() for key, value in kept.items()}

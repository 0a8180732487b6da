"""Model rollouts for scenario adaptation (Algorithm 2): imagined transitions from real latents,
the model's disagreement with itself along them, and its error on real transitions against the
naive forecast (what the adaptation loop's safeguard reads)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from mrcom_lightning.batch import Batch
from mrcom_lightning.metrics import masked_mean
from mrcom_lightning.models import WorldModel
from mrcom_lightning.models.world_model import ImaginedState

# What a rollout hands out (`adaptation.rollout.imagination`): the model's predictions, or the naive
# forecast (the real start's observation and reward repeated) for the observations, the rewards or
# both: {name: (naive_obs, naive_reward)}. "null" is the null-model control of DESIGN.md §5, a
# model that predicts no change, whose pool rows are real rows with new actions.
IMAGINATION = {"model": (False, False), "null": (True, True), "naive_reward": (False, True), "naive_obs": (True, False)}


def _with_imagination(state: ImaginedState, imagination: str) -> ImaginedState:
    if imagination not in IMAGINATION:
        raise ValueError(f"imagination must be one of {tuple(IMAGINATION)}, got {imagination!r}")
    naive_obs, naive_reward = IMAGINATION[imagination]
    return dataclasses.replace(state, naive_obs=naive_obs, naive_reward=naive_reward)


def _repeated(state: ImaginedState, samples: int) -> ImaginedState:
    """Each start `samples` times in a row (start-major): rows i·K .. i·K + K − 1 are start i."""
    def repeat(value):
        return value.repeat_interleave(samples, dim=0) if isinstance(value, torch.Tensor) else value

    return ImaginedState(**{field.name: repeat(getattr(state, field.name)) for field in dataclasses.fields(state)})


@torch.no_grad()
def imagine(
    world_model: WorldModel,
    batch: Batch,
    policy: Callable[[torch.Tensor], torch.Tensor],
    horizon: int,
    obs_dim: int,
    act_dim: int,
    samples: int = 1,
    anchor: bool = False,
    anchor_reward: bool = False,
    imagination: str = "model",
    start: ImaginedState | None = None,
) -> dict[str, torch.Tensor]:
    """Rollouts of `horizon` steps from the latent states at the end of real windows.

    The posterior pass over each window (prompt and context included) gives (h_t, z_t) and the
    context window at its last real step t; from there `WorldModel.rollout` steps with the
    priors, each imagined transition entering the context window, while `policy` acts on the
    observations (the target's own sizes): the real o_t first, then the decoded ones.

    `anchor` corrects every decoded observation by the decoder's error at the real start,
    `anchor_reward` every predicted reward by the reward head's error on the last real reward
    (`WorldModel.start`). Each start is rolled out `samples` = K times with the same actions (the
    policy acts on the first copy's observations), so the copies differ only by the model's own
    sampling: the `disagreement` of a transition is the standard deviation across its start's
    copies of the predicted next observation (normalised space, mean over the real dims) plus that
    of the predicted reward, a per-start uncertainty (the copies of one start share it).
    `imagination` ("model", "null", "naive_reward", "naive_obs"; `IMAGINATION`) swaps the
    observations, the rewards or both for the naive forecast, whose copies agree.

    Returns transitions of the target's own sizes, [N·K·H, ·], ordered (start, copy, step):
    `obs, action, reward, next_obs, done` (done is 0: DMC episodes have a fixed length),
    `disagreement` and `step` (h = 0..H−1). Runs without gradients: the world model is held out
    of policy learning.

    `start` gives the start states instead (e.g. `WorldModel.start_from_history`, MAMBA's states
    inferred over the whole real history); `batch` then only supplies the domains and padded sizes:
    the start's rows are ordered (batch row, position) as `start_from_history` gives them, P rows per
    batch row, each of its batch row's domain. `start` alone decides: without it the starts are the
    ends of `batch`'s windows, one per row.
    """
    if start is None:
        predictions = world_model.predict(batch)
        start = world_model.start(predictions, batch, batch["action"].shape[1], anchor, anchor_reward)
        start_domain = batch["domain"]
    else:
        per_row, rest = divmod(start.obs.shape[0], len(batch["domain"]))
        if rest or not per_row:
            raise ValueError(f"imagine: {start.obs.shape[0]} start states for a batch of {len(batch['domain'])} rows; "
                             "`start` needs the same number of states (positions) per batch row")
        start_domain = batch["domain"].repeat_interleave(per_row)
    starts = start.obs.shape[0]
    start = _repeated(_with_imagination(start, imagination), samples)
    domain = start_domain.repeat_interleave(samples)
    act_max = batch["action"].shape[-1]

    def shared_policy(obs: torch.Tensor) -> torch.Tensor:
        first = obs.view(starts, samples, -1)[:, 0, :obs_dim]
        action = torch.nn.functional.pad(policy(first), (0, act_max - act_dim))
        return action.repeat_interleave(samples, dim=0)

    rollout = world_model.rollout(start, shared_policy, horizon, domain)
    normalised = world_model.normalize_obs(rollout.next_obs, domain).view(starts, samples, horizon, -1)
    if samples > 1:
        obs_spread = masked_mean(normalised.std(1), world_model.obs_mask[start_domain])  # [N, H]
        reward_spread = rollout.reward.view(starts, samples, horizon).std(1)
        disagreement = (obs_spread + reward_spread)[:, None].expand(starts, samples, horizon)
    else:
        disagreement = rollout.reward.new_zeros(starts, samples, horizon)
    out = {
        "obs": rollout.obs[..., :obs_dim].reshape(-1, obs_dim),
        "action": rollout.action[..., :act_dim].reshape(-1, act_dim),
        "reward": rollout.reward.reshape(-1),
        "next_obs": rollout.next_obs[..., :obs_dim].reshape(-1, obs_dim),
        "disagreement": disagreement.reshape(-1),
        "step": torch.arange(horizon, device=rollout.reward.device).repeat(starts * samples),
    }
    out["done"] = torch.zeros_like(out["reward"])
    return out


def per_dim_relative_errors(
    predicted: torch.Tensor, real: torch.Tensor, last: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Open-loop observation errors in units of each dim's own one-step change, per horizon step.

    `predicted`, `real` [B, H, O] and `last` [B, 1, O] are raw observations of one domain's
    windows, `mask` [B, O] their real dims. Each dim's squared error is averaged over the windows
    and divided by the naive forecast's at h = 1 (the dim's mean squared one-step change); the
    result is the mean over dims: `(model [H], naive [H])`, where naive[0] = 1 by construction.

    A transition whose imagined change in some dim is mostly error teaches the agent's critic a
    jump the real system does not make. A plain MSE over dims hides that: in raw or symlog units
    the velocities' large errors outweigh every joint angle, so a model can beat the naive
    forecast on the mean while missing each angle's change many times over (measured in
    benchmarks/LOG.md, "Why the model's data hurt: the second look")."""
    weight = mask[:, None, :].to(real.dtype)
    rows = weight.sum(0).clamp(min=1)

    def per_dim(prediction: torch.Tensor) -> torch.Tensor:  # [H, O]
        return ((prediction - real) ** 2 * weight).sum(0) / rows

    model, naive = per_dim(predicted), per_dim(last.expand_as(real))
    scale = naive[0].clamp(min=1e-8)
    dims = mask.bool().any(0)
    return (model / scale)[:, dims].mean(-1), (naive / scale)[:, dims].mean(-1)


@torch.no_grad()
def open_loop_errors(
    world_model: WorldModel,
    batch: Batch,
    horizon: int,
    anchor: bool = False,
    anchor_reward: bool = False,
    imagination: str = "model",
) -> dict[str, torch.Tensor]:
    """The model's errors on real transitions against the naive forecast, per horizon step.

    `batch` holds windows (of one domain) of b + `horizon` real transitions: the posterior pass
    reads the first b (burn-in), then the model imagines the last `horizon` with the real actions.
    The naive forecast repeats the last real observation o_b and reward r_{b−1}; `anchor`,
    `anchor_reward` and `imagination` as in `imagine`. Returns `[H]` means over the windows: `model_obs`,
    `naive_obs` (`per_dim_relative_errors`: squared errors in units of each dim's one-step change,
    mean over the real dims, so naive_obs[0] = 1), `model_reward`, `naive_reward` (MSE)."""
    burn_in = batch["action"].shape[1] - horizon
    if burn_in < 1:
        raise ValueError(f"open-loop windows need a burn-in: {batch['action'].shape[1]} transitions for horizon {horizon}")
    domain = batch["domain"]
    predictions = world_model.predict(batch)
    state = _with_imagination(world_model.start(predictions, batch, burn_in, anchor, anchor_reward), imagination)
    rollout = world_model.rollout(state, batch["action"][:, burn_in:], horizon, domain)
    model_obs, naive_obs = per_dim_relative_errors(
        rollout.next_obs, batch["obs"][:, burn_in + 1 :], batch["obs"][:, burn_in : burn_in + 1], world_model.obs_mask[domain]
    )
    real_reward = batch["reward"][:, burn_in:]
    return {
        "model_obs": model_obs,
        "naive_obs": naive_obs,
        "model_reward": ((rollout.reward - real_reward) ** 2).mean(0),
        "naive_reward": ((state.prev_reward[:, None] - real_reward) ** 2).mean(0),
    }

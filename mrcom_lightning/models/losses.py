"""The world model's losses: each a small module that names its equation, reads the predictions
of one posterior pass (`WorldModel.predict`) and the batch, and returns named terms."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.distributions import Independent, kl_divergence

from mrcom_lightning.batch import Batch
from mrcom_lightning.models.world_model import Predictions


def _detached(dist: Independent) -> Independent:
    base = dist.base_dist
    return Independent(type(base)(base.loc.detach(), base.scale.detach(), validate_args=False), 1, validate_args=False)


def weighted_mean(x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of x [B, N], or its mean weighted by `weights` [B, N] (MAMBA's loss window)."""
    if weights is None:
        return x.mean()
    return (x * weights).sum() / weights.sum().clamp(min=1e-8)


def balanced_kl(
    posterior: Independent, prior: Independent, dynamics: float, representation: float, free_nats: float,
    weights: torch.Tensor | None = None,
):
    """DreamerV3's KL split: dynamics·max(1, KL(sg q‖p)) + representation·max(1, KL(q‖sg p)).

    Returns the loss and the plain KL(q‖p) (for logging), both averaged over batch and time
    (weighted by `weights` [B, N+1] when given).
    """
    dyn = kl_divergence(_detached(posterior), prior)
    rep = kl_divergence(posterior, _detached(prior))
    loss = dynamics * dyn.clamp(min=free_nats) + representation * rep.clamp(min=free_nats)
    return weighted_mean(loss, weights), weighted_mean(dyn.detach(), weights)


def rows_mean(error: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean of error [B, N] over the selected rows [B] (0 with a graph when none is selected)."""
    weight = rows.to(error.dtype).unsqueeze(1).expand_as(error)
    return (error * weight).sum() / weight.sum().clamp(min=1)


class WorldModelLoss(nn.Module):
    """Eq. 10: L_wm = −log p(o_t | s_t) − log p(r_t | s_t) + KL(q(z_t)‖p(z_t)) + KL(q(u_t)‖p(u_t)).

    −log p(o | s) is a unit Gaussian in the normalised observation space (standardised per
    domain and dim, or DreamerV3's symlog), over the domain's real dims; −log p(r | s) a
    two-hot cross-entropy (`reward_nll`, over the head's bins), r_t predicted from s̄_{t+1}, the
    latent at the posteriors' means (the reward head is trained where it predicts: no sampling
    noise). The residual head (`Predictions.prev_reward` set) is trained on the change
    Δ_t = r_t − r_{t−1}.

    `weights` [B, N+1] (MAMBA's local reconstruction, `models.mamba`) keeps the terms of the
    latent states s_t where it is 1 and drops the others: o_t's and the KLs at t, r_{t−1}'s at t.
    """

    def __init__(
        self,
        reward_nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        kl_dynamics: float = 0.5,
        kl_representation: float = 0.1,
        free_nats: float = 1.0,
        reward_weight: float = 1.0,
    ):
        super().__init__()
        self.reward_nll = reward_nll
        self.kl_dynamics, self.kl_representation, self.free_nats = kl_dynamics, kl_representation, free_nats
        self.reward_weight = reward_weight

    def forward(
        self, predictions: Predictions, batch: Batch, weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        p, latents = predictions, predictions.latents
        kl = dict(
            dynamics=self.kl_dynamics, representation=self.kl_representation, free_nats=self.free_nats, weights=weights
        )
        obs_error = 0.5 * ((p.obs - p.obs_target) ** 2 * p.obs_mask.unsqueeze(1)).sum(-1)
        reward_target = batch["reward"] if p.prev_reward is None else batch["reward"] - p.prev_reward
        terms = {
            "obs": weighted_mean(obs_error, weights),
            "reward": weighted_mean(
                self.reward_nll(p.reward_logits, reward_target), weights[:, 1:] if weights is not None else None
            ),
        }
        terms["kl_z"], terms["kl_z_value"] = balanced_kl(latents.posterior, latents.prior, **kl)
        if latents.auxiliary_posterior is not None:
            terms["kl_u"], terms["kl_u_value"] = balanced_kl(latents.auxiliary_posterior, latents.auxiliary_prior, **kl)
        terms["wm"] = terms["obs"] + self.reward_weight * terms["reward"] + terms["kl_z"] + terms.get("kl_u", 0.0)
        return terms


class MetaStateLoss(nn.Module):
    """Eq. 11–12: L_ms = KL(q(z_t | h_t, c_t, e_t) ‖ r(z_t | a_{t−1}, c_t)).

    An upper bound on I(z_t; o_t): z keeps only what the action and the scenario explain.
    `ms` = max(free_nats, KL(q ‖ sg r)) is the term that pulls q toward r, the one that w_ms
    weighs; `ms_prior` = max(free_nats, KL(sg q ‖ r)) fits the variational prior r to q and
    reaches r only, so r keeps learning whatever w_ms is (a 0.5/0.1 split of one term would
    leave q only w_ms × 0.1 of the pull).
    """

    def __init__(self, *, free_nats: float = 1.0):
        super().__init__()
        self.free_nats = free_nats

    def forward(self, predictions: Predictions) -> dict[str, torch.Tensor]:
        q, r = predictions.latents.posterior, predictions.latents.meta_prior
        pull = kl_divergence(q, _detached(r))
        fit = kl_divergence(_detached(q), r)
        return {
            "ms": pull.clamp(min=self.free_nats).mean(),
            "ms_prior": fit.clamp(min=self.free_nats).mean(),
            "ms_value": pull.detach().mean(),
        }


class ValueLoss(nn.Module):
    """Eq. 13–14: V_k(s_t) ← (1−γ) r_t + γ V̄_k(s_{t+1}) and (V_meta(s) − sg V_k(s))².

    The value heads read the latents detached: these losses train the value heads only. Rows
    from scenarios outside the training set (scenario id −1) are left out. The heads predict
    (1 − γ) × V, which lies in the rewards' range (a well-conditioned regression); L_mv
    (`MetaValueLoss`) reads them back in units of return.
    """

    def __init__(self, discount: float):
        super().__init__()
        self.discount = discount

    def forward(self, predictions: Predictions, batch: Batch) -> dict[str, torch.Tensor]:
        v, rows = predictions.values, batch["scenario"] >= 0
        not_terminal = 1 - batch["terminal"].to(v.scenario.dtype)
        target = (1 - self.discount) * batch["reward"] + self.discount * not_terminal * v.scenario_target[:, 1:]
        return {
            "scenario_value": rows_mean((v.scenario[:, :-1] - target) ** 2, rows),
            "meta_value": rows_mean((v.meta - v.scenario.detach()) ** 2, rows),
        }


class MetaValueLoss(nn.Module):
    """Eq. 15: L_mv = (V_meta(ŝ_{t+1}) − sg V_meta(s_{t+1}))², values in units of return.

    ŝ_{t+1} is the latent the model predicts (z and u from their priors), s_{t+1} the one it
    infers from the real observation. Gradients reach the world model only, not V_meta.

    The value heads regress (1 − γ)·V (Eq. 13–14 with rewards in [0, 1] keep their targets in
    [0, 1], well-conditioned); L_mv divides by (1 − γ) before squaring, so its values and its
    gradient are those of Eq. 15 in units of return, the scale that w_mv = 1 beside w_wm = 1
    was set for. In (1 − γ) units the term was 1e-4 of L_wm (issue 24: 0.0011 vs 14.6), i.e.
    absent; `charts/grad_norm/mv` logs its gradient on the shared parameters beside L_wm's.
    """

    def __init__(self, discount: float):
        super().__init__()
        self.return_scale = 1.0 / (1.0 - discount) if discount < 1 else 1.0

    def forward(self, predictions: Predictions) -> dict[str, torch.Tensor]:
        v = predictions.values
        gap = (v.meta_of_prior[:, 1:] - v.meta[:, 1:].detach()) * self.return_scale
        return {"mv": (gap**2).mean()}


def gradient_norms(terms: dict[str, torch.Tensor], parameters: list[nn.Parameter]) -> dict[str, torch.Tensor]:
    """‖∇_θ term‖ over `parameters` for each named term, the graph kept for the step's own backward
    (what each term of Eq. 16 pulls on the shared world model; one backward per term)."""
    norms = {}
    for name, term in terms.items():
        grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
        squares = [g.detach().pow(2).sum() for g in grads if g is not None]
        norms[name] = torch.stack(squares).sum().sqrt() if squares else term.new_zeros(())
    return norms

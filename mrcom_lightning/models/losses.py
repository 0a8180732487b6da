"""The world model's losses, each a small module that names its equation and returns named terms."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, kl_divergence

from mrcom_lightning.models.world_model import Observation, WorldModel


def _detached(dist: Independent) -> Independent:
    base = dist.base_dist
    return Independent(type(base)(base.loc.detach(), base.scale.detach()), 1)


def balanced_kl(posterior: Independent, prior: Independent, dynamics: float, representation: float, free_nats: float):
    """DreamerV3's KL split: dynamics·max(1, KL(sg q‖p)) + representation·max(1, KL(q‖sg p)).

    Returns the loss and the plain KL(q‖p) (for logging), both averaged over batch and time.
    """
    dyn = kl_divergence(_detached(posterior), prior)
    rep = kl_divergence(posterior, _detached(prior))
    loss = dynamics * dyn.clamp(min=free_nats) + representation * rep.clamp(min=free_nats)
    return loss.mean(), dyn.detach().mean()


def masked_sum(error: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over real dims (mask [B, D]) of error [B, N, D], averaged over batch and time."""
    return (error * mask.unsqueeze(1)).sum(-1).mean()


class WorldModelLoss(nn.Module):
    """Eq. 10: L_wm = −log p(o_t | s_t) − log p(r_t | s_t) + KL(q(z_t)‖p(z_t)) + KL(q(u_t)‖p(u_t)).

    −log p(o | s) is a unit Gaussian in the normalised observation space (standardised per
    domain and dim, or DreamerV3's symlog), over the domain's real dims; −log p(r | s) a two-hot cross-entropy, r_t predicted from s_{t+1}.
    """

    def __init__(self, *, kl_dynamics: float = 0.5, kl_representation: float = 0.1, free_nats: float = 1.0):
        super().__init__()
        self.kl_dynamics, self.kl_representation, self.free_nats = kl_dynamics, kl_representation, free_nats

    def forward(self, model: WorldModel, observation: Observation, batch: dict) -> dict[str, torch.Tensor]:
        latents = observation.latents
        features = latents.features
        prediction = model.decode(features, batch["domain"])
        target = model.normalize_obs(batch["obs"], batch["domain"])
        terms = {"obs": 0.5 * masked_sum((prediction - target) ** 2, batch["obs_mask"])}
        terms["reward"] = model.twohot.nll(model.reward_logits(features[:, 1:]), batch["reward"]).mean()
        terms["kl_z"], terms["kl_z_value"] = balanced_kl(
            latents.posterior, latents.prior, self.kl_dynamics, self.kl_representation, self.free_nats
        )
        if latents.auxiliary_posterior is not None:
            terms["kl_u"], terms["kl_u_value"] = balanced_kl(
                latents.auxiliary_posterior, latents.auxiliary_prior, self.kl_dynamics, self.kl_representation, self.free_nats
            )
        terms["wm"] = terms["obs"] + terms["reward"] + terms["kl_z"] + terms.get("kl_u", 0.0)
        return terms


class MetaStateLoss(nn.Module):
    """Eq. 11–12: L_ms = KL(q(z_t | h_t, c_t, e_t) ‖ r(z_t | a_{t−1}, c_t)).

    An upper bound on I(z_t; o_t): z keeps only what the action and the scenario explain.
    Split and clipped like the KL of L_wm so that it cannot collapse.
    """

    def __init__(self, *, kl_dynamics: float = 0.5, kl_representation: float = 0.1, free_nats: float = 1.0):
        super().__init__()
        self.kl_dynamics, self.kl_representation, self.free_nats = kl_dynamics, kl_representation, free_nats

    def forward(self, observation: Observation) -> dict[str, torch.Tensor]:
        latents = observation.latents
        loss, value = balanced_kl(
            latents.posterior, latents.meta_prior, self.kl_dynamics, self.kl_representation, self.free_nats
        )
        return {"ms": loss, "ms_value": value}


class ValueLoss(nn.Module):
    """Eq. 13–14: V_k(s_t) ← (1−γ) r_t + γ V̄_k(s_{t+1}) and (V_meta(s) − sg V_k(s))².

    Both see the latents detached: the value losses train the value heads only. Rows from
    scenarios outside the training set (scenario id −1) are left out.
    """

    def forward(self, model: WorldModel, observation: Observation, batch: dict) -> dict[str, torch.Tensor]:
        rows = batch["scenario"] >= 0
        features = observation.latents.features.detach()[rows]
        scenario = batch["scenario"][rows]
        if features.shape[0] == 0:
            zero = observation.latents.features.sum() * 0
            return {"scenario_value": zero, "meta_value": zero}
        values = model.scenario_values
        target = values.bellman_target(features[:, 1:], batch["reward"][rows], batch["terminal"][rows], scenario)
        scenario_value = ((values(features[:, :-1], scenario) - target) ** 2).mean()
        meta_value = ((model.meta_value(features) - values(features, scenario).detach()) ** 2).mean()
        return {"scenario_value": scenario_value, "meta_value": meta_value}


class MetaValueLoss(nn.Module):
    """Eq. 15: L_mv = (V_meta(ŝ_{t+1}) − sg V_meta(s_{t+1}))².

    ŝ_{t+1} is the latent the model predicts (z and u from their priors), s_{t+1} the one it
    infers from the real observation. Gradients reach the world model only, not V_meta.
    """

    def forward(self, model: WorldModel, observation: Observation) -> dict[str, torch.Tensor]:
        latents = observation.latents
        predicted = [latents.prior.rsample(), latents.deterministic]
        if latents.auxiliary_prior is not None:
            predicted.append(latents.auxiliary_prior.rsample())
        predicted = torch.cat(predicted, dim=-1)[:, 1:]
        target = model.meta_value(latents.features[:, 1:]).detach()
        return {"mv": ((model.meta_value.frozen(predicted) - target) ** 2).mean()}

"""The latent state s_t = [z_t, h_t, u_t] and its priors and posteriors (Eq. 6–8, 11)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.distributions import Independent

from mrcom_lightning.models.layers import GaussianHead


@dataclasses.dataclass
class LatentSequence:
    """A posterior pass over t = 0..N: every tensor is [B, N+1, ·].

    `recurrent` is the transition's output (h_t, or the feed-forward features without h),
    `deterministic` is h_t (empty when the model has none), `stochastic` z_t ~ q,
    `auxiliary` u_t ~ q (empty when the model has none), and the distributions the losses
    compare: the priors p(z_t | h_t, c_t), p(u_t | c_t), the posteriors q(z_t | h_t, c_t, e_t),
    q(u_t | c_t, e_t), and the meta-state prior r(z_t | a_{t-1}, c_t).
    """

    recurrent: torch.Tensor
    deterministic: torch.Tensor
    stochastic: torch.Tensor
    auxiliary: torch.Tensor
    prior: Independent
    posterior: Independent
    auxiliary_prior: Independent | None
    auxiliary_posterior: Independent | None
    meta_prior: Independent | None

    @property
    def features(self) -> torch.Tensor:
        """s_t = [z_t, h_t, u_t]."""
        return torch.cat([self.stochastic, self.deterministic, self.auxiliary], dim=-1)

    @property
    def mean_features(self) -> torch.Tensor:
        """s̄_t = [E_q z_t, h_t, E_q u_t]: the latent at the posteriors' means, what the reward head
        reads (no sampling noise: z's and u's stds are at least 0.1, larger than most reward changes)."""
        auxiliary = self.auxiliary_posterior.base_dist.loc if self.auxiliary_posterior is not None else self.auxiliary
        return torch.cat([self.posterior.base_dist.loc, self.deterministic, auxiliary], dim=-1)


class LatentCell(nn.Module):
    """Eq. 6–8: h_t = f(h_{t-1}, z_{t-1}, a_{t-1}) (a GRU), p(z_t | h_t, c_t), q(z_t | h_t, c_t, e_t),
    p(u_t | c_t), q(u_t | c_t, e_t); and the meta-state prior r(z_t | a_{t-1}, c_t) of Eq. 11.

    `deterministic_dim=0` is the "w/o h" ablation: the transition is then a feed-forward
    function of (z_{t-1}, a_{t-1}) that carries no memory and is not part of s_t.
    `auxiliary_dim=0` removes u (the RSSM and CaDM baselines); `meta_prior=False` removes r.
    `context_dim=0` is the "w/o c" ablation: no prior or posterior reads a context (z's become
    p(z_t | h_t), q(z_t | h_t, e_t), r's r(z_t | a_{t−1})), and u, whose prior is p(u_t | c_t), cannot
    exist without it. `None` is `embed_dim`, the context transformer's width.
    """

    def __init__(
        self,
        embed_dim: int,
        stochastic_dim: int,
        deterministic_dim: int,
        auxiliary_dim: int,
        hidden_dim: int,
        meta_prior: bool = True,
        context_dim: int | None = None,
    ):
        super().__init__()
        context_dim = embed_dim if context_dim is None else context_dim
        if auxiliary_dim and not context_dim:
            raise ValueError(
                f"model.world_model.auxiliary_dim is {auxiliary_dim} without a context: u's prior is p(u | c), "
                "so the 'w/o c' model has no u (set auxiliary_dim: 0 with context: none)"
            )
        self.context_dim = context_dim
        self.stochastic_dim = stochastic_dim
        self.deterministic_dim = deterministic_dim
        self.auxiliary_dim = auxiliary_dim
        self.recurrent_dim = deterministic_dim or hidden_dim
        self.transition_in = nn.Sequential(nn.Linear(stochastic_dim + embed_dim, hidden_dim), nn.ReLU())
        if deterministic_dim:
            self.gru = nn.GRUCell(hidden_dim, deterministic_dim)
        else:
            self.feedforward = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU())
        self.prior_net = GaussianHead(self.recurrent_dim + context_dim, stochastic_dim, hidden_dim)
        self.posterior_net = GaussianHead(self.recurrent_dim + context_dim + embed_dim, stochastic_dim, hidden_dim)
        if auxiliary_dim:
            self.auxiliary_prior_net = GaussianHead(context_dim, auxiliary_dim, hidden_dim)
            self.auxiliary_posterior_net = GaussianHead(context_dim + embed_dim, auxiliary_dim, hidden_dim)
        self.meta_prior_net = GaussianHead(embed_dim + context_dim, stochastic_dim, hidden_dim) if meta_prior else None
        self.compiled: dict = {}  # filled by `compile`

    @property
    def feature_dim(self) -> int:
        return self.stochastic_dim + self.deterministic_dim + self.auxiliary_dim

    def initial(self, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_{-1}, z_{-1}) = 0."""
        return torch.zeros(batch, self.recurrent_dim, device=device), torch.zeros(batch, self.stochastic_dim, device=device)

    def transition(self, recurrent: torch.Tensor, stochastic: torch.Tensor, action_embed: torch.Tensor) -> torch.Tensor:
        """h_t from (h_{t-1}, z_{t-1}, a_{t-1})."""
        x = self.transition_in(torch.cat([stochastic, action_embed], dim=-1))
        return self.gru(x, recurrent) if self.deterministic_dim else self.feedforward(x)

    def prior(self, recurrent: torch.Tensor, context: torch.Tensor) -> Independent:
        return self.prior_net(torch.cat([recurrent, context], dim=-1))

    def auxiliary_prior(self, context: torch.Tensor) -> Independent | None:
        return self.auxiliary_prior_net(context) if self.auxiliary_dim else None

    def _deterministic_part(self, recurrent: torch.Tensor) -> torch.Tensor:
        return recurrent if self.deterministic_dim else recurrent[..., :0]

    def _auxiliary_sample(self, dist: Independent | None, like: torch.Tensor) -> torch.Tensor:
        return dist.rsample() if dist is not None else like[..., :0]

    def _unroll(
        self, obs_embed: torch.Tensor, prev_action_embed: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sequential part of the posterior pass, tensors only (what `compile` compiles):
        h_t, z_t ~ q(z_t | h_t, c_t, e_t) and q's mean and std, each [B, N+1, ·].

        `transition` and `posterior_net`, with only what depends on (h_{t−1}, z_{t−1}) inside the
        time loop: their first layers, over [z_{t−1}, a_{t−1}] and [h_t, c_t, e_t], are split by
        input block, and the a_{t−1} and (c_t, e_t) blocks, bias included, run for all t in one
        matmul before it (benchmarks/LOG.md, "Profile of a training step"). Same weights, same noise draws."""
        batch, steps, _ = obs_embed.shape
        transition_in, posterior_in = self.transition_in[0], self.posterior_net.net[0]
        from_stochastic, from_action = transition_in.weight.split(
            [self.stochastic_dim, transition_in.in_features - self.stochastic_dim], dim=1
        )
        from_recurrent, from_observed = posterior_in.weight.split(
            [self.recurrent_dim, posterior_in.in_features - self.recurrent_dim], dim=1
        )
        action_part = nn.functional.linear(prev_action_embed, from_action, transition_in.bias)
        observed_part = nn.functional.linear(torch.cat([context, obs_embed], dim=-1), from_observed, posterior_in.bias)
        # One unbind, not an index per step: each index's backward would write a zero-padded
        # gradient of the whole sequence.
        action_steps, observed_steps = action_part.unbind(1), observed_part.unbind(1)
        from_stochastic, from_recurrent = from_stochastic.t(), from_recurrent.t()
        posterior_rest = self.posterior_net.net[1:]  # ReLU, then the layers after the first
        recurrent, stochastic = self.initial(batch, obs_embed.device)
        recurrents, stochastics, means, stds = [], [], [], []
        for t in range(steps):
            x = torch.relu(torch.addmm(action_steps[t], stochastic, from_stochastic))
            recurrent = self.gru(x, recurrent) if self.deterministic_dim else self.feedforward(x)
            hidden = torch.addmm(observed_steps[t], recurrent, from_recurrent)
            posterior = self.posterior_net.distribution(posterior_rest(hidden))
            stochastic = posterior.rsample()
            recurrents.append(recurrent)
            stochastics.append(stochastic)
            means.append(posterior.base_dist.loc)
            stds.append(posterior.base_dist.scale)
        return tuple(torch.stack(x, 1) for x in (recurrents, stochastics, means, stds))

    def compile(self, **kwargs) -> None:
        """`torch.compile`s the unrolled posterior pass and the imagination step, where a small
        model spends its time in kernel launches (`nn.Module.compile` compiles only `forward`,
        which this module has not). The compiled functions are unbound: a copy of the module
        calls them on itself, not on the original."""
        self.compiled = {name: torch.compile(getattr(LatentCell, name), **kwargs) for name in ("_unroll", "_imagine")}

    def _call(self, name: str, *args):
        compiled = self.compiled.get(name)
        return compiled(self, *args) if compiled is not None else getattr(self, name)(*args)

    def observe(self, obs_embed: torch.Tensor, prev_action_embed: torch.Tensor, context: torch.Tensor) -> LatentSequence:
        """The posterior pass over e_0..e_N, a_{-1}..a_{N-1} (a_{-1} = 0) and c_0..c_N, all [B, N+1, ·]."""
        recurrent, stochastic, mean, std = self._call("_unroll", obs_embed, prev_action_embed, context)
        posterior = Independent(torch.distributions.Normal(mean, std, validate_args=False), 1, validate_args=False)
        auxiliary_posterior = (
            self.auxiliary_posterior_net(torch.cat([context, obs_embed], dim=-1)) if self.auxiliary_dim else None
        )
        meta_prior = (
            self.meta_prior_net(torch.cat([prev_action_embed, context], dim=-1)) if self.meta_prior_net else None
        )
        return LatentSequence(
            recurrent=recurrent,
            deterministic=self._deterministic_part(recurrent),
            stochastic=stochastic,
            auxiliary=self._auxiliary_sample(auxiliary_posterior, stochastic),
            prior=self.prior(recurrent, context),
            posterior=posterior,
            auxiliary_prior=self.auxiliary_prior(context),
            auxiliary_posterior=auxiliary_posterior,
            meta_prior=meta_prior,
        )

    def imagine(self, recurrent, stochastic, action_embed, context) -> tuple[torch.Tensor, ...]:
        """One prior step: (h_t, z_t ~ p(z_t | h_t, c_t), s_t, s̄_t) from (h_{t-1}, z_{t-1}, a_{t-1}, c_t);
        s̄_t = [E_p z_t, h_t, E_p u_t] is the latent at the priors' means (what the reward head reads)."""
        return self._call("_imagine", recurrent, stochastic, action_embed, context)

    def _imagine(self, recurrent, stochastic, action_embed, context):
        recurrent = self.transition(recurrent, stochastic, action_embed)
        prior, auxiliary_prior = self.prior(recurrent, context), self.auxiliary_prior(context)
        stochastic = prior.rsample()
        auxiliary = self._auxiliary_sample(auxiliary_prior, stochastic)
        deterministic = self._deterministic_part(recurrent)
        features = torch.cat([stochastic, deterministic, auxiliary], dim=-1)
        auxiliary_mean = auxiliary_prior.base_dist.loc if auxiliary_prior is not None else auxiliary
        mean_features = torch.cat([prior.base_dist.loc, deterministic, auxiliary_mean], dim=-1)
        return recurrent, stochastic, features, mean_features

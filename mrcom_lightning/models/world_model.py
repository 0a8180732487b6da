"""The MrCoM world model: tokenizers, context, latent cell and heads wired together (§3)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import torch
from torch import nn

from mrcom_lightning.batch import Batch, dim_masks
from mrcom_lightning.models.cadm import ContextDynamics, DynamicsPredictions, TransitionContext
from mrcom_lightning.models.context import ContextTransformer
from mrcom_lightning.models.latent import LatentCell, LatentSequence
from mrcom_lightning.models.layers import TwoHot, mlp, symexp, symlog
from mrcom_lightning.models.mamba import PreviousStepEncoder
from mrcom_lightning.models.tokenizers import DomainDecoder, DomainTokenizer
from mrcom_lightning.models.value import MetaValue, ScenarioValues


@dataclasses.dataclass
class WorldModelConfig:
    """Sizes and switches of the world model (paper, Appendix D).

    Attributes:
        embed_dim: tokenizer embedding e_t and context width.
        hidden_dim: width of the hidden layers of every MLP.
        stochastic_dim: size of z_t.
        deterministic_dim: size of h_t; 0 is the "w/o h" ablation.
        auxiliary_dim: size of u_t; 0 removes u (the baselines). The paper gives no size.
        context: `prompt` (MrCoM: prompt plus history), `history` (the history-RSSM baseline:
            MrCoM's transformer over the last `context_length` transitions only, no prompt),
            `transitions` (CaDM, Lee et al. 2020: `TransitionContext` over the last `transitions`
            transitions, trained by the forward and backward models' prediction loss) or `none`
            (the "w/o c" ablation, the RSSM and MAMBA): no context module, no prior or posterior
            reads c, and no u (its prior is p(u | c); `auxiliary_dim` must then be 0).
        context_length: prompt length L and context window.
        transitions: CaDM's K, the transitions its context reads (CaDM: 10).
        transition_context_dim: size of CaDM's context vector (CaDM: 10).
        prediction_steps: CaDM's M, the steps of the forward and backward models' prediction loss
            (CaDM: 10; windows shorter than M use all their steps).
        backward_weight: CaDM's β, the backward loss's weight in the prediction loss (CaDM: 0.5).
        previous_step_encoder: MAMBA's encoder (Rimon et al. 2024): the posterior also reads the
            previous action and reward, and the batch's episode-start flag (`PreviousStepEncoder`).
        heads: attention heads. The paper says 3, which does not divide 128: 4 here.
        layers: transformer layers.
        reward_bins: two-hot bins of the reward head (DreamerV3).
        reward_bin_range: (low, high) of the reward bins, evenly spaced in the `reward_bin_scale`
            space. Default: `linear` over dm_control's reward range [0, 1], every bin where the
            rewards are; DreamerV3's symlog (-20, 20) covers any reward scale but puts all of
            [0, 1] into 2–3 bins (issue 24).
        reward_bin_scale: `linear` (bins in the reward's own units) or `symlog` (DreamerV3's).
        reward_range: the rewards the domains produce (dm_control: [0, 1]); the metrics report the
            probability mass the reward head puts on bins outside it (`reward_mass_outside`).
        reward_head: `absolute` (r̂_t from the latent, two-hot over the reward bins) or `residual`:
            the head reads the latent and r_{t−1} and predicts the change Δ_t = r_t − r_{t−1},
            two-hot over as many bins spanning [low − high, high − low] of `reward_bin_range` (same
            scale); r̂_t = r_{t−1} + E[Δ_t], clipped to `reward_range`. dm_control's rewards are
            smooth in time, so the last reward is a strong base (issue 24). Off until measured.
        discount: γ of the scenario values (Eq. 14).
        obs_normalization: how observations enter the tokenizers and the decoder's loss:
            `symlog` (DreamerV3's, scale-free) or `standardize` (per domain and dim, by the
            training data's mean and std, which the datamodule provides at the start of `fit`;
            weighs small-spread dims such as joint angles as much as velocities). Measured in
            benchmarks/obs_normalization.py: equal open-loop error, symlog's raw reconstruction
            error half as large, so DreamerV3's choice stays the default.
    """

    embed_dim: int = 128
    hidden_dim: int = 256
    stochastic_dim: int = 128
    deterministic_dim: int = 128
    auxiliary_dim: int = 32
    context: Literal["prompt", "history", "transitions", "none"] = "prompt"
    context_length: int = 20
    transitions: int = 10
    transition_context_dim: int = 10
    prediction_steps: int = 10
    backward_weight: float = 0.5
    previous_step_encoder: bool = False
    heads: int = 4
    layers: int = 1
    reward_bins: int = 255
    reward_bin_range: tuple[float, float] = (0.0, 1.0)
    reward_bin_scale: Literal["symlog", "linear"] = "linear"
    reward_range: tuple[float, float] = (0.0, 1.0)
    reward_head: Literal["absolute", "residual"] = "absolute"
    discount: float = 0.99
    obs_normalization: Literal["symlog", "standardize"] = "symlog"

    def __post_init__(self) -> None:
        for name in ("embed_dim", "hidden_dim", "stochastic_dim", "context_length", "heads", "layers", "reward_bins",
                     "transitions", "transition_context_dim", "prediction_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.world_model.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("deterministic_dim", "auxiliary_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.world_model.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.embed_dim % self.heads:
            raise ValueError(
                f"model.world_model.embed_dim ({self.embed_dim}) must be divisible by heads ({self.heads})"
            )
        low, high = self.reward_bin_range
        if not low < high:
            raise ValueError(f"model.world_model.reward_bin_range must be (low, high) with low < high, got {self.reward_bin_range!r}")
        if not self.reward_range[0] < self.reward_range[1]:
            raise ValueError(f"model.world_model.reward_range must be (low, high) with low < high, got {self.reward_range!r}")
        if self.reward_head not in ("absolute", "residual"):
            raise ValueError(f"model.world_model.reward_head must be absolute or residual, got {self.reward_head!r}")
        if self.context == "none" and self.auxiliary_dim:
            raise ValueError(
                f"model.world_model.auxiliary_dim must be 0 with context: none (u's prior is p(u | c)), got {self.auxiliary_dim}"
            )
        if self.backward_weight < 0:
            raise ValueError(f"model.world_model.backward_weight must be >= 0, got {self.backward_weight!r}")
        if not 0 < self.discount <= 1:
            raise ValueError(f"model.world_model.discount must be in (0, 1], got {self.discount!r}")


@dataclasses.dataclass
class ValuePredictions:
    """The value heads on a window's posterior latents, each [B, N+1] (Eq. 13–15).

    `scenario` is V_k(sg s_t) of the row's training scenario (rows outside training read head
    0; the losses leave them out), `scenario_target` V̄_k(s_t) of the target network,
    `meta` V_meta(sg s_t), and `meta_of_prior` V_meta(ŝ_t) with V_meta's parameters held out,
    ŝ_t = [z_t ~ p(z_t | h_t, c_t), h_t, u_t ~ p(u_t | c_t)] the latent the model predicts.
    """

    scenario: torch.Tensor
    scenario_target: torch.Tensor
    meta: torch.Tensor
    meta_of_prior: torch.Tensor


@dataclasses.dataclass
class Predictions:
    """One posterior pass over a window and every head's output on it; the losses and the
    metrics read these, nothing runs twice.

    Attributes:
        latents: s_0..s_N with their priors and posteriors (`LatentSequence`).
        context: c_0..c_N, [B, N+1, D].
        prompt_tokens, history_tokens: the context window's tokens, [B, L, D] and [B, N, D]
            (imagination continues the window from them).
        obs: decoded o_0..o_N in the normalised space, [B, N+1, O_max], zero on padding.
        obs_target: the real o_0..o_N in the same space.
        obs_mask: [B, O_max], 1 on the row's real observation dims.
        reward_logits: r_0..r_{N−1} predicted from s̄_1..s̄_N, the latents at the posteriors'
            means (`LatentSequence.mean_features`), [B, N, bins]; with the residual head, their
            changes Δ_0..Δ_{N−1} (`WorldModel.head_twohot`'s bins).
        reward: their expectation in the reward's own units, [B, N] (residual: r_{t−1} + E[Δ_t], clipped).
        prev_reward: the r_{t−1} the residual head read for each r_t, [B, N]: the batch's rewards
            shifted by one, 0 for the window's first (none is known; its Δ target is then r_0);
            None for the absolute head.
        values: the value heads' outputs, or None without L_mv.
        dynamics: CaDM's forward and backward predictions, or None without CaDM's context.
        rollout_context: CaDM's context at t = 0..N from the K real transitions ending at o_t, which
            imagination from step t holds fixed (CaDM's planner); None otherwise.
    """

    latents: LatentSequence
    context: torch.Tensor
    prompt_tokens: torch.Tensor | None
    history_tokens: torch.Tensor | None
    obs: torch.Tensor
    obs_target: torch.Tensor
    obs_mask: torch.Tensor
    reward_logits: torch.Tensor
    reward: torch.Tensor
    values: ValuePredictions | None
    dynamics: DynamicsPredictions | None = None
    rollout_context: torch.Tensor | None = None
    prev_reward: torch.Tensor | None = None


@dataclasses.dataclass
class ImaginedState:
    """Where a rollout stands at step t: the latent (h_t, z_t), the observation o_t (raw scale,
    padded) with the reward r_{t−1} that arrived with it, and the context window's tokens up to
    transition t − 1 (None without a context). `context` is c_t (the last one read).

    `offset` is added to every decoded observation of the rollout (raw scale): zero, or with
    `start(anchor=True)` the decoder's reconstruction error at the real start, o_t − dec(s_t).
    `reward_offset` likewise to every predicted reward: with `start(anchor_reward=True)` the
    reward head's error on the last real reward, r_{t−1} − r̂_{t−1} (zero with the residual head).

    `prev_reward` is also the base of the residual reward head: the real r_{t−1} at the start, then
    each step's predicted reward (as handed out: anchored, or naive).

    `naive_obs` and `naive_reward` replace the decoded observation and the predicted reward by the
    naive forecast, the current ones repeated (o_t and r_{t−1} of the start, by induction): the
    adaptation's null-model control and its two diagnostic halves (DESIGN.md §5). The latent
    state still evolves; only what the rollout hands out is naive."""

    recurrent: torch.Tensor
    stochastic: torch.Tensor
    obs: torch.Tensor
    prev_reward: torch.Tensor
    tokens: torch.Tensor | None
    context: torch.Tensor
    offset: torch.Tensor | None = None
    reward_offset: torch.Tensor | None = None
    naive_obs: bool = False
    naive_reward: bool = False


@dataclasses.dataclass
class Rollout:
    """H imagined transitions from a start state: the observations o_t..o_{t+H−1} the actions
    were taken in (the real one first), the actions, the predicted observations ô_{t+1}..ô_{t+H}
    and rewards r̂_t..r̂_{t+H−1}: [B, H, O_max], [B, H, A_max], [B, H, O_max], [B, H]."""

    obs: torch.Tensor
    action: torch.Tensor
    next_obs: torch.Tensor
    reward: torch.Tensor


def shifted(reward: torch.Tensor) -> torch.Tensor:
    """r_{i−1} for every transition i of a sequence [B, N], 0 for the first (none is known)."""
    return torch.cat([torch.zeros_like(reward[:, :1]), reward[:, :-1]], dim=1)


class WorldModel(nn.Module):
    """The unified world model over several domains.

    `obs_dims` / `act_dims` list each domain's sizes in domain-id order; batches carry the
    domain id per row and observations/actions zero-padded to the largest size.
    `meta_state` adds the meta-state prior r (Eq. 11); `meta_value` the value heads (Eq. 13–14).
    The baselines are switches of the same model (`WorldModelConfig`): CaDM's context and dynamics
    models (`models.cadm`), MAMBA's encoder (`models.mamba`).
    """

    def __init__(
        self,
        config: WorldModelConfig,
        obs_dims: list[int],
        act_dims: list[int],
        num_scenarios: int,
        meta_state: bool = True,
        meta_value: bool = True,
    ):
        super().__init__()
        c = self.config = config
        self.obs_dims, self.act_dims = list(obs_dims), list(act_dims)
        self.obs_tokenizer = DomainTokenizer(self.obs_dims, c.embed_dim, c.hidden_dim)
        self.action_tokenizer = DomainTokenizer(self.act_dims, c.embed_dim, c.hidden_dim)
        # Per domain and dim; identity until `set_observation_statistics` (saved in checkpoints).
        self.register_buffer("obs_mean", torch.zeros(len(self.obs_dims), max(self.obs_dims)))
        self.register_buffer("obs_std", torch.ones(len(self.obs_dims), max(self.obs_dims)))
        self.register_buffer("obs_statistics_set", torch.tensor(False))
        self.register_buffer("obs_mask", dim_masks(self.obs_dims), persistent=False)
        self.context_net = (
            ContextTransformer(c.embed_dim, c.context_length, c.heads, c.layers, use_prompt=c.context == "prompt")
            if c.context in ("prompt", "history")
            else None
        )
        self.transition_context = self.dynamics = None
        if c.context == "transitions":
            self.transition_context = TransitionContext(c.embed_dim, c.transition_context_dim, c.transitions, c.hidden_dim)
            self.dynamics = ContextDynamics(
                self.obs_dims, c.embed_dim, c.transition_context_dim, c.hidden_dim, c.prediction_steps
            )
        self.previous_step_encoder = PreviousStepEncoder(c.embed_dim, c.hidden_dim) if c.previous_step_encoder else None
        context_dim = {"prompt": c.embed_dim, "history": c.embed_dim, "transitions": c.transition_context_dim}
        self.cell = LatentCell(
            c.embed_dim, c.stochastic_dim, c.deterministic_dim, c.auxiliary_dim, c.hidden_dim, meta_prior=meta_state,
            context_dim=context_dim.get(c.context, 0),
        )
        feature_dim = self.cell.feature_dim
        self.decoder = DomainDecoder(self.obs_dims, feature_dim, c.hidden_dim)
        self.twohot = TwoHot(c.reward_bins, *c.reward_bin_range, symlog=c.reward_bin_scale == "symlog")
        residual = c.reward_head == "residual"
        span = c.reward_bin_range[1] - c.reward_bin_range[0]
        self.change_twohot = TwoHot(c.reward_bins, -span, span, symlog=c.reward_bin_scale == "symlog") if residual else None
        self.reward_head = mlp(feature_dim + int(residual), c.reward_bins, c.hidden_dim, 3)
        nn.init.zeros_(self.reward_head[-1].weight)  # DreamerV3: start predicting zero reward
        if residual:  # uniform over symmetric bins: zero change, the naive forecast
            nn.init.zeros_(self.reward_head[-1].bias)
        low, high = c.reward_range
        outside = (self.twohot.values() < low) | (self.twohot.values() > high)
        self.register_buffer("reward_outside", outside, persistent=False)
        self.scenario_values = (
            ScenarioValues(feature_dim, num_scenarios, c.hidden_dim) if meta_value else None
        )
        self.meta_value = MetaValue(feature_dim, c.hidden_dim) if meta_value else None

    def compile(self, **kwargs) -> None:
        """`torch.compile`s the parts that carry the step's time: the latent cell's time loop and
        imagination step, and the context transformer. The per-domain tokenizers and decoders stay
        eager (their row selection has data-dependent shapes). `kwargs` go to `torch.compile`."""
        self.cell.compile(**kwargs)
        if self.context_net is not None:
            self.context_net.compile(**kwargs)

    @torch.no_grad()
    def set_observation_statistics(self, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-2) -> None:
        """Per-domain observation mean and std `[domains, O_max]` for `standardize`."""
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp(min=min_std))
        self.obs_statistics_set.fill_(True)

    def normalize_obs(self, obs: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """Raw observations [B, ..., O] to the space the model reads and predicts them in."""
        if self.config.obs_normalization == "symlog":
            return symlog(obs)
        shape = (obs.shape[0],) + (1,) * (obs.dim() - 2) + (obs.shape[-1],)
        return (obs - self.obs_mean[domain].view(shape)) / self.obs_std[domain].view(shape)

    def denormalize_obs(self, obs: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        if self.config.obs_normalization == "symlog":
            return symexp(obs)
        shape = (obs.shape[0],) + (1,) * (obs.dim() - 2) + (obs.shape[-1],)
        return obs * self.obs_std[domain].view(shape) + self.obs_mean[domain].view(shape)

    def tokens(self, obs: torch.Tensor, action: torch.Tensor, prev_reward: torch.Tensor, domain: torch.Tensor):
        """Context tokens of transitions (o_i raw, a_i, r_{i−1}) [B, N, ·]; None without a context."""
        if self.context_net is None:
            return None
        obs_embed = self.obs_tokenizer(self.normalize_obs(obs, domain), domain)
        return self.context_net.tokens(obs_embed, self.action_tokenizer(action, domain), prev_reward)

    def predict(self, batch: Batch) -> Predictions:
        """The posterior pass over a window (Eq. 4–8) and every head on it (decoder, reward,
        values; CaDM's dynamics models): what the losses (Eq. 10–16) and the metrics read.

        An optional `batch["reset"]` [B, N+1] bool marks episode starts inside a meta-episode
        (MAMBA's training sequences); the recurrent state runs on across them."""
        obs, action, reward, domain = batch["obs"], batch["action"], batch["reward"], batch["domain"]
        obs_target = self.normalize_obs(obs, domain)
        obs_embed = self.obs_tokenizer(obs_target, domain)
        action_embed = self.action_tokenizer(action, domain)
        prev_action_embed = torch.cat([torch.zeros_like(action_embed[:, :1]), action_embed], dim=1)
        context, prompt, history = obs_embed[..., :0], None, None  # no context: c has no dims
        if self.context_net is not None:
            history = self.context_net.tokens(obs_embed[:, :-1], action_embed, shifted(reward))
            if self.config.context == "prompt":
                prompt_reward = shifted(batch["prompt_reward"])
                prompt = self.tokens(batch["prompt_obs"], batch["prompt_action"], prompt_reward, domain)
            prompt = self.context_net.start(prompt, history)
            context = self.context_net.contexts(prompt, history)
        dynamics = rollout_context = None
        if self.transition_context is not None:
            # c⁺_t reads the transitions ending at o_t; the latent at t reads c_t = c⁺_{t−1}, which
            # holds no o_t (DESIGN.md §4's rule; c_0 = c_1 = no transition yet).
            rollout_context = self.transition_context(obs_embed, action_embed)
            context = torch.cat([rollout_context[:, :1], rollout_context[:, :-1]], dim=1)
            dynamics = self.dynamics(
                obs_target, action_embed, rollout_context, context, domain, self.obs_mask[domain], self.obs_tokenizer
            )
        posterior_embed = obs_embed
        if self.previous_step_encoder is not None:
            reset = batch.get("reset")
            prev_action_embed = self.previous_step_encoder.previous_actions(prev_action_embed, reset)
            prev_reward = torch.cat([torch.zeros_like(reward[:, :1]), reward], dim=1)
            if reset is not None:
                prev_reward = prev_reward.masked_fill(reset, 0.0)
            posterior_embed = self.previous_step_encoder(obs_embed, prev_action_embed, prev_reward)
        latents = self.cell.observe(posterior_embed, prev_action_embed, context)
        features = latents.features
        # The residual head's base: r_{t−1} as the naive forecast and imagination's start read it.
        prev_reward = shifted(reward) if self.change_twohot is not None else None
        reward_logits = self.reward_logits(latents.mean_features[:, 1:], prev_reward)
        return Predictions(
            latents=latents,
            context=context,
            prompt_tokens=prompt,
            history_tokens=history,
            obs=self.decoder(features, domain),
            obs_target=obs_target,
            obs_mask=self.obs_mask[domain],
            reward_logits=reward_logits,
            reward=self.expected_reward(reward_logits, prev_reward),
            values=self._values(latents, batch["scenario"]) if self.meta_value is not None else None,
            dynamics=dynamics,
            rollout_context=rollout_context,
            prev_reward=prev_reward,
        )

    @property
    def head_twohot(self) -> TwoHot:
        """The bins of the reward head's logits: the reward's (`absolute`) or its change's (`residual`)."""
        return self.twohot if self.change_twohot is None else self.change_twohot

    def reward_logits(self, mean_features: torch.Tensor, prev_reward: torch.Tensor | None) -> torch.Tensor:
        """The reward head on s̄_{t+1} [..., F] (and, residual, r_{t−1} [...]): logits [..., bins]."""
        if self.change_twohot is None:
            return self.reward_head(mean_features)
        return self.reward_head(torch.cat([mean_features, prev_reward.unsqueeze(-1).to(mean_features.dtype)], dim=-1))

    def expected_reward(self, logits: torch.Tensor, prev_reward: torch.Tensor | None) -> torch.Tensor:
        """r̂_t in the reward's units: E[r_t], or (residual) r_{t−1} + E[Δ_t] clipped to `reward_range`."""
        if self.change_twohot is None:
            return self.twohot.mean(logits)
        return (prev_reward + self.change_twohot.mean(logits)).clamp(*self.config.reward_range)

    def _values(self, latents: LatentSequence, scenario: torch.Tensor) -> ValuePredictions:
        features = latents.features.detach()  # the value losses train the value heads only
        predicted = [latents.prior.rsample(), latents.deterministic]
        if latents.auxiliary_prior is not None:
            predicted.append(latents.auxiliary_prior.rsample())
        head = scenario.clamp(min=0)
        return ValuePredictions(
            scenario=self.scenario_values(features, head),
            scenario_target=self.scenario_values.target(features, head),
            meta=self.meta_value(features),
            meta_of_prior=self.meta_value.frozen(torch.cat(predicted, dim=-1)),
        )

    def reward_mass_outside(self, logits: torch.Tensor, prev_reward: torch.Tensor | None = None) -> torch.Tensor:
        """The probability the reward head puts on rewards outside `reward_range`: [...] from logits
        [..., bins]; the residual head's bins are changes, so it needs their base r_{t−1} [...]
        (`Predictions.prev_reward`): the mass on r_{t−1} + Δ outside the range."""
        if self.change_twohot is None:
            return (logits.softmax(-1) * self.reward_outside).sum(-1)
        if prev_reward is None:
            raise ValueError("reward_mass_outside of the residual reward head needs prev_reward, the r_{t−1} it read")
        low, high = self.config.reward_range
        rewards = prev_reward.unsqueeze(-1) + self.change_twohot.values()
        slack = 1e-6 * (high - low)  # linspace's zero-change bin is −5e-8, not 0: no change is inside
        return (logits.softmax(-1) * ((rewards < low - slack) | (rewards > high + slack))).sum(-1)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The world-model parameters every loss term reaches: tokenizers, context and latent cell
        (what the gradient shares are measured on; the heads are each trained by one term)."""
        parts = [self.obs_tokenizer, self.action_tokenizer, self.cell]
        parts += [m for m in (self.context_net, self.transition_context, self.previous_step_encoder) if m is not None]
        return [p for part in parts for p in part.parameters() if p.requires_grad]

    def decode(self, features: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """Predicted observations in the raw scale, zero-padded: [B, ..., O]."""
        return self.denormalize_obs(self.decoder(features, domain), domain)

    def start(
        self, predictions: Predictions, batch: Batch, step: int, anchor: bool = False, anchor_reward: bool = False
    ) -> ImaginedState:
        """The rollout state at real step `step` of a window's posterior pass: (h, z) inferred from
        o_0..o_step, the real o_step and r_{step−1}, and the context window up to transition step−1.

        `anchor` makes the rollout's decoded observations ô + (o_step − dec(s_step)): the decoder's
        error where the real observation is known, carried forward as a bias correction, so that
        an imagined transition's change starts from the real o_step rather than from its blurred
        reconstruction (measured in benchmarks/LOG.md, "Why the model's data hurt: the second look").

        `anchor_reward` does the same for the rewards: r̂ + (r_{step−1} − r̂_{step−1}), with r̂_{step−1}
        the reward head's reading of the posterior s_step (zero offset at step 0, where no reward is
        known), so that imagined rewards are the last real reward plus the model's predicted change.
        The residual head (`reward_head: residual`) predicts exactly that already, r̂_step = r_{step−1}
        + E[Δ], and each r̂ is the next step's base, so an offset would enter every later step once
        more (h-fold at step h): there `anchor_reward` gives a zero offset and changes nothing."""
        latents = predictions.latents
        reward = batch["reward"]
        tokens = None
        if predictions.history_tokens is not None:
            tokens = torch.cat([predictions.prompt_tokens, predictions.history_tokens[:, :step]], dim=1)
            tokens = tokens[:, -self.context_net.receptive_field :]
        return ImaginedState(
            recurrent=latents.recurrent[:, step],
            stochastic=latents.stochastic[:, step],
            obs=batch["obs"][:, step],
            prev_reward=reward[:, step - 1] if step > 0 else torch.zeros_like(reward[:, 0]),
            tokens=tokens,
            context=(predictions.rollout_context if predictions.rollout_context is not None else predictions.context)[:, step],
            offset=batch["obs"][:, step] - self.denormalize_obs(predictions.obs[:, step], batch["domain"]) if anchor else None,
            reward_offset=(
                (reward[:, step - 1] - predictions.reward[:, step - 1])
                if step > 0 and self.change_twohot is None else torch.zeros_like(reward[:, 0])
            ) if anchor_reward else None,
        )

    def start_from_history(
        self, batch: Batch, positions, anchor: bool = False, anchor_reward: bool = False
    ) -> ImaginedState:
        """Rollout states inferred over a whole real history (MAMBA's imagination start, Rimon et al.
        2024): one posterior pass over each row of `batch`, a meta-episode of every real episode so far
        joined with episode-start flags (`datamodules.meta_episodes.meta_episode_batch`), the recurrent
        state carried across episodes; then the state at each of `positions` (real steps of the joined
        sequence, 0..N), as `start` gives it. Rows are ordered (batch row, position): [B·P]."""
        predictions = self.predict(batch)
        starts = [self.start(predictions, batch, int(position), anchor, anchor_reward) for position in positions]

        def joined(name: str):
            values = [getattr(state, name) for state in starts]
            return torch.stack(values, 1).flatten(0, 1) if isinstance(values[0], torch.Tensor) else values[0]

        return ImaginedState(**{field.name: joined(field.name) for field in dataclasses.fields(ImaginedState)})

    def step(self, state: ImaginedState, action: torch.Tensor, domain: torch.Tensor) -> tuple[ImaginedState, torch.Tensor]:
        """One imagined step with a raw (padded) action a_t: the window takes the token
        (o_t, a_t, r_{t−1}) and gives c_{t+1}; then h_{t+1} = f(h_t, z_t, a_t), z_{t+1} ~ p(z | h_{t+1},
        c_{t+1}), and the heads give ô_{t+1} and r̂_t (the residual head from the state's r_{t−1}).
        Returns the next state and r̂_t [B].

        A state without a context window (`tokens` None: CaDM's context, or none) keeps its c."""
        tokens, context = state.tokens, state.context
        if tokens is not None:
            token = self.tokens(state.obs[:, None], action[:, None], state.prev_reward[:, None], domain)
            tokens = torch.cat([tokens, token], dim=1)[:, -self.context_net.receptive_field :]
            context = self.context_net(tokens)[:, -1]
        recurrent, stochastic, features, mean_features = self.cell.imagine(
            state.recurrent, state.stochastic, self.action_tokenizer(action, domain), context
        )
        prev_reward = state.prev_reward if self.change_twohot is not None else None
        reward = self.expected_reward(self.reward_logits(mean_features, prev_reward), prev_reward)
        if state.reward_offset is not None:
            reward = reward + state.reward_offset
        if state.naive_reward:
            reward = state.prev_reward
        obs = self.decode(features, domain)
        if state.offset is not None:
            obs = obs + state.offset
        if state.naive_obs:
            obs = state.obs
        next_state = dataclasses.replace(
            state, recurrent=recurrent, stochastic=stochastic, obs=obs, prev_reward=reward, tokens=tokens, context=context
        )
        return next_state, reward

    def rollout(
        self,
        state: ImaginedState,
        actions: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
        horizon: int,
        domain: torch.Tensor,
    ) -> Rollout:
        """`horizon` imagined steps from `state`: the one rollout of the open-loop metrics and of
        adaptation. `actions` is a tensor [B, horizon, A_max] (given actions) or a policy that maps
        the current observation (raw scale, padded) to a padded action."""
        steps: dict[str, list[torch.Tensor]] = {"obs": [], "action": [], "next_obs": [], "reward": []}
        for h in range(horizon):
            action = actions[:, h] if isinstance(actions, torch.Tensor) else actions(state.obs)
            obs = state.obs
            state, reward = self.step(state, action, domain)
            for key, value in zip(steps, (obs, action, state.obs, reward)):
                steps[key].append(value)
        return Rollout(**{key: torch.stack(values, 1) for key, values in steps.items()})

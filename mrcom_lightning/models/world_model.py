"""The MrCoM world model: tokenizers, context, latent cell and heads wired together (§3)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from mrcom_lightning.models.context import ContextTransformer
from mrcom_lightning.models.latent import LatentCell, LatentSequence
from mrcom_lightning.models.layers import TwoHot, mlp, symexp, symlog
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
        auxiliary_dim: size of u_t; 0 removes u (RSSM and CaDM baselines). The paper gives no size.
        context: `prompt` (MrCoM: prompt plus history), `history` (CaDM-style: last
            `context_length` transitions only) or `none` (the "w/o c" ablation, RSSM).
        context_length: prompt length L and context window.
        heads: attention heads. The paper says 3, which does not divide 128: 4 here.
        layers: transformer layers.
        reward_bins: two-hot bins of the reward head (DreamerV3).
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
    context: Literal["prompt", "history", "none"] = "prompt"
    context_length: int = 20
    heads: int = 4
    layers: int = 1
    reward_bins: int = 255
    discount: float = 0.99
    obs_normalization: Literal["symlog", "standardize"] = "symlog"

    def __post_init__(self) -> None:
        for name in ("embed_dim", "hidden_dim", "stochastic_dim", "context_length", "heads", "layers", "reward_bins"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.world_model.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("deterministic_dim", "auxiliary_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.world_model.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.embed_dim % self.heads:
            raise ValueError(
                f"model.world_model.embed_dim ({self.embed_dim}) must be divisible by heads ({self.heads})"
            )
        if not 0 < self.discount <= 1:
            raise ValueError(f"model.world_model.discount must be in (0, 1], got {self.discount!r}")


@dataclasses.dataclass
class Observation:
    """What a posterior pass over a window gives: latents, context and embeddings, all [B, N+1, ·]."""

    latents: LatentSequence
    context: torch.Tensor
    obs_embed: torch.Tensor
    prev_action_embed: torch.Tensor


class WorldModel(nn.Module):
    """The unified world model over several domains.

    `obs_dims` / `act_dims` list each domain's sizes in domain-id order; batches carry the
    domain id per row and observations/actions zero-padded to the largest size.
    `meta_state` adds the meta-state prior r (Eq. 11); `meta_value` the value heads (Eq. 13–14).
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
        self.context_net = (
            ContextTransformer(c.embed_dim, c.context_length, c.heads, c.layers, use_prompt=c.context == "prompt")
            if c.context != "none"
            else None
        )
        self.cell = LatentCell(
            c.embed_dim, c.stochastic_dim, c.deterministic_dim, c.auxiliary_dim, c.hidden_dim, meta_prior=meta_state
        )
        feature_dim = self.cell.feature_dim
        self.decoder = DomainDecoder(self.obs_dims, feature_dim, c.hidden_dim)
        self.twohot = TwoHot(c.reward_bins)
        self.reward_head = mlp(feature_dim, c.reward_bins, c.hidden_dim, 3)
        nn.init.zeros_(self.reward_head[-1].weight)  # DreamerV3: start predicting zero reward
        self.scenario_values = (
            ScenarioValues(feature_dim, num_scenarios, c.hidden_dim, c.discount) if meta_value else None
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

    def context(self, prompt_tokens: torch.Tensor | None, history_tokens: torch.Tensor) -> torch.Tensor:
        """c_0..c_N from the prompt and the history (zeros without a context)."""
        batch, steps, dim = history_tokens.shape
        if self.context_net is None:
            return history_tokens.new_zeros(batch, steps + 1, dim)
        if prompt_tokens is None:
            prompt_tokens = history_tokens.new_zeros(batch, self.config.context_length, dim)
        return self.context_net(prompt_tokens, history_tokens)

    def transition_tokens(self, obs, action, reward, domain) -> torch.Tensor | None:
        if self.context_net is None:
            return None
        obs_embed = self.obs_tokenizer(self.normalize_obs(obs, domain), domain)
        return self.context_net.tokens(obs_embed, self.action_tokenizer(action, domain), reward)

    def observe(self, batch: dict[str, torch.Tensor]) -> Observation:
        """The posterior pass over a window: `obs [B, N+1, O]`, `action [B, N, A]`, `reward [B, N]`,
        `domain [B]` and the prompt `prompt_obs [B, L, O]`, `prompt_action`, `prompt_reward`."""
        obs, action, reward, domain = batch["obs"], batch["action"], batch["reward"], batch["domain"]
        obs_embed = self.obs_tokenizer(self.normalize_obs(obs, domain), domain)
        action_embed = self.action_tokenizer(action, domain)
        prev_action_embed = torch.cat([torch.zeros_like(action_embed[:, :1]), action_embed], dim=1)
        context = obs_embed.new_zeros(*obs_embed.shape)
        if self.context_net is not None:
            history = self.context_net.tokens(obs_embed[:, :-1], action_embed, reward)
            prompt = None
            if self.config.context == "prompt":
                prompt = self.transition_tokens(batch["prompt_obs"], batch["prompt_action"], batch["prompt_reward"], domain)
            context = self.context(prompt, history)
        latents = self.cell.observe(obs_embed, prev_action_embed, context)
        return Observation(latents, context, obs_embed, prev_action_embed)

    def decode(self, features: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """Predicted observations in the normalised space (`normalize_obs`), zero-padded: [B, ..., O]."""
        return self.decoder(features, domain)

    def reward_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.reward_head(features)

    def imagine(self, recurrent, stochastic, action, domain, context):
        """One step in imagination from (h, z) with a raw (padded) action and a fixed context.

        Returns the next (recurrent, stochastic), the decoded observation and the expected reward.
        """
        recurrent, stochastic, features = self.cell.imagine(
            recurrent, stochastic, self.action_tokenizer(action, domain), context
        )
        obs = self.denormalize_obs(self.decode(features, domain), domain)
        reward = self.twohot.mean(self.reward_logits(features))
        return recurrent, stochastic, obs, reward

    def open_loop(self, batch: dict[str, torch.Tensor], burn_in: int, horizon: int) -> torch.Tensor:
        """Observations predicted `horizon` steps ahead from the posterior at `burn_in` with the real
        actions and the context held at c_{burn_in}: [B, horizon, O] (raw scale)."""
        history = dict(
            batch,
            obs=batch["obs"][:, : burn_in + 1],
            action=batch["action"][:, :burn_in],
            reward=batch["reward"][:, :burn_in],
        )
        posterior = self.observe(history)
        recurrent = posterior.latents.recurrent[:, -1]
        stochastic = posterior.latents.stochastic[:, -1]
        context = posterior.context[:, -1]
        predictions = []
        for t in range(burn_in, burn_in + horizon):
            recurrent, stochastic, obs, _ = self.imagine(recurrent, stochastic, batch["action"][:, t], batch["domain"], context)
            predictions.append(obs)
        return torch.stack(predictions, dim=1)

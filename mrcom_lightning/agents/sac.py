"""Soft Actor-Critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications").

Plain `nn.Module`s: a tanh-squashed Gaussian `Actor`, a twin-Q `Critic`, and `SAC`, which owns
both, a Polyak-averaged target critic, the learned temperature and the optimizers. The
scenario-adaptation loop (DESIGN.md §5, MBPO-style) reuses `SAC.update` on batches that mix
real and imagined transitions.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mrcom_lightning.models.layers import mlp  # one MLP builder for the world model and the agent

# Soft bounds of the actor's log standard deviation (pytorch_sac / DrQ's choice).
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclasses.dataclass
class SACConfig:
    """Hyperparameters of SAC; defaults follow the MrCoM paper (Appendix D) where it gives them."""

    hidden_dim: int = 256
    """Width of every hidden layer of the actor and the critics."""
    hidden_layers: int = 2
    """Number of hidden layers of the actor and of each critic."""
    discount: float = 0.99
    """Discount factor gamma of the soft Bellman backup."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor (paper)."""
    critic_lr: float = 2e-4
    """Adam learning rate of the twin critics (paper)."""
    # The paper gives no temperature learning rate; 1e-4 matches its actor's.
    temperature_lr: float = 1e-4
    """Adam learning rate of log(alpha), the entropy temperature."""
    init_temperature: float = 0.1
    """Initial entropy temperature alpha."""
    target_entropy: float | None = None
    """Entropy the temperature steers towards; None means -act_dim (Haarnoja et al. 2018)."""
    tau: float = 0.005
    """Polyak coefficient of the target critic: target <- (1 - tau) target + tau critic."""
    batch_size: int = 256
    """Transitions per gradient update."""
    updates_per_step: int = 1
    """Gradient updates per environment step (the paper uses 10 during adaptation)."""
    warmup_steps: int = 5000
    """Environment steps of uniformly random actions before learning starts."""
    buffer_size: int = 1_000_000
    """Capacity of the replay buffer, in transitions."""
    critic_dropout: float = 0.0
    """Dropout rate of each hidden layer of the critics (DroQ, Hiraoka et al. 2022: 0.01)."""
    critic_layer_norm: bool = False
    """LayerNorm after each hidden layer of the critics (DroQ: on). With dropout, the agent made for
    many updates per real step that the adaptation benchmark runs as a model-free control."""

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, want: str) -> None:
            if not ok:
                raise ValueError(f"sac.{name} must be {want}, got {getattr(self, name)!r}")

        counts = ("hidden_dim", "hidden_layers", "batch_size", "updates_per_step", "buffer_size")
        for name in counts + ("warmup_steps",):
            value, least = getattr(self, name), 0 if name == "warmup_steps" else 1
            is_int = isinstance(value, (int, np.integer))
            check(name, is_int and value >= least, f"an integer >= {least}")
        check("discount", 0.0 < self.discount <= 1.0, "in (0, 1]")
        check("critic_dropout", 0.0 <= self.critic_dropout < 1.0, "in [0, 1)")
        check("tau", 0.0 < self.tau <= 1.0, "in (0, 1]")
        for name in ("actor_lr", "critic_lr", "temperature_lr", "init_temperature"):
            check(name, getattr(self, name) > 0, "> 0")
        entropy = self.target_entropy
        check("target_entropy", entropy is None or math.isfinite(entropy), "None or a finite float")


class Actor(nn.Module):
    """The policy pi(a | s): a Gaussian squashed by tanh into [-1, 1] (Haarnoja et al. 2018, App C).

    The log standard deviation is soft-clamped to [LOG_STD_MIN, LOG_STD_MAX].
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256, hidden_layers: int = 2):
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden_dim, hidden_layers + 1)

    def forward(
        self,
        obs: torch.Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(action, log_prob)`; `deterministic` gives tanh(mean) and its log-density."""
        mean, raw_log_std = self.net(obs).chunk(2, dim=-1)
        # A soft clamp keeps a gradient at the bounds, where a hard clamp would cut it.
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw_log_std) + 1)
        std = log_std.exp()
        if deterministic:
            pre_tanh = mean
        else:
            pre_tanh = mean + std * torch.empty_like(mean).normal_(generator=generator)
        gaussian_log_prob = (
            -0.5 * ((pre_tanh - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        ).sum(-1)
        # Change of variables for tanh: log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)),
        # the numerically stable form (no log of a value that rounds to 0).
        log_det = (2 * (math.log(2.0) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1)
        return torch.tanh(pre_tanh), gaussian_log_prob - log_det


class Critic(nn.Module):
    """Twin soft Q-functions Q1, Q2(s, a); the minimum curbs overestimation (clipped double Q).
    With `dropout` and `layer_norm`, DroQ's regularised critics (dropout stays on in every
    evaluation, the target's included, as in DroQ)."""

    def __init__(
        self, obs_dim: int, act_dim: int, hidden_dim: int = 256, hidden_layers: int = 2, dropout: float = 0.0,
        layer_norm: bool = False,
    ):
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, 1, hidden_dim, hidden_layers + 1, dropout, layer_norm)
        self.q2 = mlp(obs_dim + act_dim, 1, hidden_dim, hidden_layers + 1, dropout, layer_norm)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- (1 - tau) target + tau source."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


class SAC(nn.Module):
    """Soft Actor-Critic with a learned temperature (Haarnoja et al. 2018, Algorithm 1).

    `seed` (an int or a `torch.Generator` on `device`) fixes the initial weights and every
    sampled action, so the same seed gives the same actions and losses on CPU. The device is
    fixed at construction (the generator lives there); do not move the module with `.to()`.

    Saving: `state_dict()` holds the networks and the temperature, as for any module;
    `checkpoint()` adds the optimizers, the generator, the config and the sizes, and
    `SAC.from_checkpoint(checkpoint())` rebuilds an identical agent. `policy_checkpoint()`
    keeps only what acting needs (the actor, the config, the sizes; about a fifth of the
    size): an agent rebuilt from it acts exactly like the original but cannot resume training.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: SACConfig | None = None,
        seed: int | torch.Generator = 0,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        self.config = cfg = config or SACConfig()
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.device = torch.device(device)
        if isinstance(seed, torch.Generator):
            self.generator = seed
        else:
            self.generator = torch.Generator(self.device).manual_seed(int(seed))
        self.target_entropy = float(-act_dim if cfg.target_entropy is None else cfg.target_entropy)

        init_seed = int(torch.randint(2**62, (1,), generator=self.generator, device=self.device))
        # Seed the initial weights without touching (or depending on) torch's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.actor = Actor(obs_dim, act_dim, cfg.hidden_dim, cfg.hidden_layers)
            self.critic = Critic(obs_dim, act_dim, cfg.hidden_dim, cfg.hidden_layers, cfg.critic_dropout, cfg.critic_layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.to(self.device)

        # The fused kernel is ~15% faster per update than the default on CPU (small networks).
        adam = functools.partial(torch.optim.Adam, fused=True)
        self.actor_optimizer = adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), cfg.critic_lr)
        self.temperature_optimizer = adam([self.log_temperature], cfg.temperature_lr)

    @property
    def temperature(self) -> torch.Tensor:
        """alpha = exp(log alpha); learned in log space so it stays positive."""
        return self.log_temperature.exp()

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Action(s) in [-1, 1] for one observation `[obs_dim]` or a batch `[B, obs_dim]`."""
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        action, _ = self.actor(obs_t, deterministic=deterministic, generator=self.generator)
        return action.cpu().numpy()

    def update_critic(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One step on the soft Bellman residual of both critics (Haarnoja et al. 2018, Eq. 5).

        The target uses the target critic and a fresh action a' ~ pi(s'):
        y = r + gamma (1 - done) (min_i Q'_i(s', a') - alpha log pi(a' | s')).
        """
        with torch.no_grad():
            next_action, next_log_prob = self.actor(batch["next_obs"], generator=self.generator)
            target_q = torch.min(*self.critic_target(batch["next_obs"], next_action))
            soft_value = target_q - self.temperature * next_log_prob
            # `done` is a true terminal only: a time-limit end still bootstraps.
            target = batch["reward"] + self.config.discount * (1.0 - batch["done"]) * soft_value
        q1, q2 = self.critic(batch["obs"], batch["action"])
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        return {"critic_loss": critic_loss.item(), "q_mean": q1.mean().item()}

    def update_actor(self, obs: torch.Tensor) -> dict[str, float]:
        """One step on the policy (Eq. 7) and on the temperature (Eq. 18) at states `obs`."""
        action, log_prob = self.actor(obs, generator=self.generator)
        q = torch.min(*self.critic(obs, action))
        actor_loss = (self.temperature.detach() * log_prob - q).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        # Only the actor's gradients are needed: the critic's are skipped, not computed and dropped.
        actor_loss.backward(inputs=list(self.actor.parameters()))
        self.actor_optimizer.step()

        # J(alpha) = E[-alpha (log pi(a|s) + target entropy)]: alpha grows when entropy is too low.
        temperature_loss = -(self.temperature * (log_prob.detach() + self.target_entropy)).mean()
        self.temperature_optimizer.zero_grad(set_to_none=True)
        temperature_loss.backward()
        self.temperature_optimizer.step()
        return {
            "actor_loss": actor_loss.item(),
            "temperature_loss": temperature_loss.item(),
            "temperature": self.temperature.item(),
            "entropy": -log_prob.mean().item(),
        }

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One SAC step: critics, then actor and temperature, then Polyak averaging of the target.

        `batch` holds `obs [B, obs_dim]`, `action [B, act_dim]`, `reward [B]`,
        `next_obs [B, obs_dim]`, `done [B]` (1 for a true terminal, which cuts bootstrapping).
        Returns `critic_loss, q_mean, actor_loss, temperature_loss, temperature, entropy`.
        """
        metrics = self.update_critic(batch)
        metrics |= self.update_actor(batch["obs"])
        soft_update(self.critic_target, self.critic, self.config.tau)
        return metrics

    def checkpoint(self) -> dict:
        """A deep copy of everything needed to resume: networks, optimizers, generator, config."""
        return copy.deepcopy(
            {
                "obs_dim": self.obs_dim,
                "act_dim": self.act_dim,
                "config": dataclasses.asdict(self.config),
                "model": self.state_dict(),
                "actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(),
                "temperature_optimizer": self.temperature_optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "generator_device": self.generator.device.type,
            }
        )

    def policy_checkpoint(self) -> dict:
        """What acting needs: the actor's weights, the config and the sizes (e.g. a behaviour policy file)."""
        return copy.deepcopy(
            {
                "obs_dim": self.obs_dim,
                "act_dim": self.act_dim,
                "config": dataclasses.asdict(self.config),
                "actor": self.actor.state_dict(),
            }
        )

    def load_checkpoint(self, checkpoint: dict) -> None:
        """Restores a `checkpoint()` (or a `policy_checkpoint()`) of an agent with the same sizes, in place."""
        sizes = (checkpoint["obs_dim"], checkpoint["act_dim"])
        if sizes != (self.obs_dim, self.act_dim):
            raise ValueError(
                f"checkpoint has (obs_dim, act_dim) = {sizes}, this agent "
                f"{(self.obs_dim, self.act_dim)}: build the agent with SAC.from_checkpoint"
            )
        if "model" not in checkpoint:  # a policy file: the critics and optimizers stay as built
            self.actor.load_state_dict(checkpoint["actor"])
            return
        self.load_state_dict(checkpoint["model"])
        self.actor_optimizer.load_state_dict(checkpoint["actor_optimizer"])
        self.critic_optimizer.load_state_dict(checkpoint["critic_optimizer"])
        self.temperature_optimizer.load_state_dict(checkpoint["temperature_optimizer"])
        # A generator's state only fits a generator of the same device type (CPU and CUDA differ).
        if checkpoint.get("generator_device") == self.generator.device.type:
            self.generator.set_state(checkpoint["generator"])

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, device: str | torch.device = "cpu") -> "SAC":
        """A new agent restored from `checkpoint()` (e.g. a saved expert or medium policy)."""
        config = SACConfig(**checkpoint["config"])
        agent = cls(checkpoint["obs_dim"], checkpoint["act_dim"], config, device=device)
        agent.load_checkpoint(checkpoint)
        return agent

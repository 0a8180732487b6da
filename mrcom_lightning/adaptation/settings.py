"""How a target scenario is adapted to (Algorithm 2, DESIGN.md §5): the loop's settings, grouped by
the stage that reads them. Each default was measured; benchmarks/LOG.md says where ("Adaptation against
plain SAC" and its sections, "Issue 23: adaptation against controls that could explain the gain").

The paper's budget is 100k real steps, 1000-step episodes and 10 SAC updates per real step
(`env_steps=100000 episode_steps=1000`, and `sac.updates_per_step=3` on real data plus
`replay.model_updates_per_step=7` while the pool feeds imagined rows: configs/study/adapt_gpu.yaml);
the defaults are sized for a CPU.
"""

from __future__ import annotations

import dataclasses

from mrcom_lightning.adaptation.imagination import IMAGINATION as _IMAGINATION
from mrcom_lightning.agents import SACConfig

IMAGINATION = tuple(_IMAGINATION)
UNCERTAINTY = ("truncate", "penalty", "none")


def _check(group: str, name: str, ok: bool, want: str, value) -> None:
    if not ok:
        raise ValueError(f"adaptation.{group}{name} must be {want}, got {value!r}")


@dataclasses.dataclass
class RolloutSettings:
    """Imagination: rollouts of the world model from real latent states, acting with the current policy."""

    every: int = 250
    """Real steps between rollout rounds (MBPO: 250)."""
    starts: int = 1000
    """Rollout starts per round, each the latent state at the end of a real window."""
    samples: int = 4
    """Rollouts per start (K): they differ only by the model's sampling; their spread is the disagreement."""
    horizon: int = 5
    """Imagined steps per rollout at most (paper: 5)."""
    anchor_observations: bool = True
    """Add the decoder's error at the real start, o_t − dec(s_t), to every decoded observation."""
    anchor_rewards: bool = True
    """Add the reward head's error on the last real reward to every predicted reward."""
    imagination: str = "model"
    """What rollouts hand the agent: "model", or a control that swaps predictions for the naive
    forecast (the real start repeated): "null" both, "naive_reward" the rewards, "naive_obs" the
    observations (DESIGN.md §5)."""
    uncertainty: str = "truncate"
    """Where the K samples disagree: "truncate" cuts the rollout before its first step above
    `uncertainty_threshold`, "penalty" uses r − `uncertainty_penalty` · disagreement (MOPO), "none"."""
    uncertainty_threshold: float = 0.5
    """Disagreement (std of the normalised next observation, mean over dims, plus std of the reward) that truncation cuts at."""
    uncertainty_penalty: float = 1.0
    """λ of "penalty"."""

    def __post_init__(self) -> None:
        for name in ("every", "starts", "samples", "horizon"):
            _check("rollout.", name, getattr(self, name) > 0, "> 0", getattr(self, name))
        for name in ("uncertainty_threshold", "uncertainty_penalty"):
            _check("rollout.", name, getattr(self, name) >= 0, ">= 0", getattr(self, name))
        _check("rollout.", "imagination", self.imagination in IMAGINATION, f"one of {IMAGINATION}", self.imagination)
        _check("rollout.", "uncertainty", self.uncertainty in UNCERTAINTY, f"one of {UNCERTAINTY}", self.uncertainty)


@dataclasses.dataclass
class ReplaySettings:
    """How SAC's batches mix the real buffer with the model pool."""

    real_ratio: float = 0.5
    """Share of real transitions in each SAC batch while the pool holds imagined ones."""
    model_updates_per_step: int = 7
    """Extra SAC updates per real step made only while the pool holds imagined transitions."""
    pool_rounds: int = 4
    """Rollout rounds the model pool holds (MBPO: about one epoch)."""
    share_cap: bool = False
    """A guard against late collapse (issue 34), off by default: each round the imagined share,
    1 − `real_ratio`, is scaled by clip((high − e) / (high − low), 0, 1), e the model's one-step
    observation error on the newest `rollout.every` real transitions in units of the naive forecast's
    (per dim, averaged; `charts/model_error/obs_h1`); at 0 SAC learns from real rows alone."""
    share_cap_low: float = 1.0
    """e at or below which the whole imagined share is used (1: the naive forecast's error)."""
    share_cap_high: float = 2.0
    """e at or above which no imagined row is used."""

    def __post_init__(self) -> None:
        _check("replay.", "real_ratio", 0.0 < self.real_ratio <= 1.0, "in (0, 1]", self.real_ratio)
        _check("replay.", "model_updates_per_step", self.model_updates_per_step >= 0, ">= 0", self.model_updates_per_step)
        _check("replay.", "pool_rounds", self.pool_rounds > 0, "> 0", self.pool_rounds)
        _check("replay.", "share_cap_low", self.share_cap_low >= 0, ">= 0", self.share_cap_low)
        _check("replay.", "share_cap_high", self.share_cap_high > self.share_cap_low,
               f"> replay.share_cap_low ({self.share_cap_low})", self.share_cap_high)


@dataclasses.dataclass
class FineTuneSettings:
    """Training the world model on the target's real windows, once per rollout round."""

    enabled: bool = True
    """Fine-tune at all."""
    steps: int = 20
    """Gradient steps of the world model's loss (Eq. 16) per round."""
    batch: int = 16
    """Windows per step."""
    lr: float = 3e-4
    """AdamW learning rate."""
    newest: int = 0
    """A guard against late collapse (issue 34), off by default (0: windows anywhere in the real
    history): draw every window among the newest `newest` real transitions (its last transition one
    of them), so that the model follows the states the current policy visits."""

    def __post_init__(self) -> None:
        _check("fine_tune.", "steps", self.steps >= 0, ">= 0", self.steps)
        _check("fine_tune.", "newest", self.newest >= 0, ">= 0", self.newest)
        _check("fine_tune.", "batch", self.batch > 0, "> 0", self.batch)
        _check("fine_tune.", "lr", self.lr > 0, "> 0", self.lr)


@dataclasses.dataclass
class SafeguardSettings:
    """Before each round, keep imagined steps only up to the horizon where the model beats the naive
    forecast (repeat the last observation and reward) on the newest real transitions, so that a
    model worse than none leaves plain SAC. Off by default: it refused data that helped (measured)."""

    enabled: bool = False
    """Apply the safeguard."""
    memory: float = 0.0
    """Weight of past rounds in the judged errors (an exponential moving average; 0: this round's only)."""
    reward_tolerance: float = 1.0
    """A step is trusted while its reward error is below this multiple of the naive forecast's."""

    def __post_init__(self) -> None:
        _check("safeguard.", "memory", 0.0 <= self.memory < 1.0, "in [0, 1)", self.memory)
        _check("safeguard.", "reward_tolerance", self.reward_tolerance >= 1, ">= 1", self.reward_tolerance)


@dataclasses.dataclass
class AdaptationConfig:
    """The adaptation loop: the budget, evaluation, and each stage's settings.

    `sac` is the agent, including `sac.warmup_steps` (random actions before learning) and
    `sac.updates_per_step` (updates per real step on real data; the paper's 10)."""

    env_steps: int = 10_000
    """Real environment steps in the target scenario (the budget)."""
    episode_steps: int = 250
    """Steps per target episode (dm_control's and the paper's: 1000)."""
    history_length: int = 16
    """Real transitions of each window that a latent state is inferred from (rollouts, fine-tuning, errors)."""
    eval_every: int = 1000
    """Real steps between evaluations, the score curve (0: only at the end)."""
    eval_episodes: int = 5
    """Evaluation episodes; the score is their mean return in percent of the maximum."""
    error_windows: int = 64
    """Windows of the newest transitions the model's errors are measured on (at each evaluation, and by the safeguard)."""
    rollout: RolloutSettings = dataclasses.field(default_factory=RolloutSettings)
    replay: ReplaySettings = dataclasses.field(default_factory=ReplaySettings)
    fine_tune: FineTuneSettings = dataclasses.field(default_factory=FineTuneSettings)
    safeguard: SafeguardSettings = dataclasses.field(default_factory=SafeguardSettings)
    sac: SACConfig = dataclasses.field(
        default_factory=lambda: SACConfig(warmup_steps=1000, critic_dropout=0.01, critic_layer_norm=True))
    """The agent. Its critics are DroQ's (dropout 0.01, LayerNorm): the guard against late collapse
    that benchmarks/adapt_guards.py's fixed rule chose on the tuning targets (benchmarks/LOG.md,
    2026-12-05: no collapse in 6 runs against 1, the critic's final mean Q 15.8 against 111.6). Plain
    SAC, the baseline and the `sac`/`sac_utd` controls, pins plain critics (`controls.plain_sac`)."""

    def __post_init__(self) -> None:
        for name in ("env_steps", "episode_steps", "history_length", "eval_episodes", "error_windows"):
            _check("", name, getattr(self, name) > 0, "> 0", getattr(self, name))
        _check("", "eval_every", self.eval_every >= 0, ">= 0", self.eval_every)
        if self.history_length >= self.episode_steps:
            raise ValueError(f"adaptation.history_length ({self.history_length}) must be shorter than "
                             f"adaptation.episode_steps ({self.episode_steps})")

    def replace(self, **changes) -> "AdaptationConfig":
        """A copy with `changes`, whose keys may name a group's field with a dot: `rollout.horizon=3`."""
        groups: dict[str, dict] = {}
        top = {}
        for key, value in changes.items():
            group, dot, name = key.partition(".")
            if dot:
                groups.setdefault(group, {})[name] = value
            else:
                top[key] = value
        for group, fields in groups.items():
            if not hasattr(self, group) or not dataclasses.is_dataclass(getattr(self, group)):
                raise ValueError(f"adaptation.{group} is not a group of settings")
            top[group] = dataclasses.replace(getattr(self, group), **fields)
        return dataclasses.replace(self, **top)

"""Scenario adaptation (Algorithm 2, DESIGN.md §5): SAC on real plus imagined transitions (MBPO-style).

One loop serves the `ScenarioAdaptation` callback during `fit`, `mrcom test` and `mrcom adapt`;
with `use_model=False` it is the no-model baseline (plain SAC with the same real-step budget).

Each rollout round (every `rollout_every` real steps once learning starts) does, in order:
1. safeguard: the model's open-loop error on windows ending at the newest real transitions,
   against the naive forecast; imagined steps are kept only up to the first horizon step where
   the model is not better on both observation (in each dim's own one-step change,
   `per_dim_relative_errors`) and reward (none: the pool is emptied and SAC learns from real
   data alone, exactly as plain SAC would);
2. fine-tuning of the world model on the target's real history so far;
3. rollouts from real latents, K samples per start; rollouts are cut where the samples disagree
   (or their reward is penalised, MOPO), and the rest enter the model pool.
Between rounds every SAC batch mixes `real_ratio` real rows with imagined ones.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from mrcom_lightning.adaptation.history import RealHistory
from mrcom_lightning.adaptation.imagination import IMAGINATION, imagine
from mrcom_lightning.adaptation.rounds import (
    ErrorAverage,
    error_metrics,
    fine_tune,
    imagined_transitions,
    model_errors,
    trusted_horizon,
)
from mrcom_lightning.agents import SAC, ReplayBuffer, SACConfig, evaluate
from mrcom_lightning.scenarios import ScenarioSpec, make_env
from mrcom_lightning.seeding import derive_seed

UNCERTAINTY = ("truncate", "penalty", "none")
# SAC.update's keys under CleanRL's names.
SAC_METRICS = {
    "critic_loss": "losses/qf_loss",
    "actor_loss": "losses/actor_loss",
    "temperature": "losses/alpha",
    "temperature_loss": "losses/alpha_loss",
    "q_mean": "charts/q_mean",
    "entropy": "charts/entropy",
}


@dataclasses.dataclass
class AdaptationConfig:
    """How a target scenario is adapted to. The defaults are sized for a CPU (benchmarks/README.md
    measures them); the paper's budget is `env_steps=100000 episode_steps=1000 updates_per_step=10`.

    Attributes:
        env_steps: real environment steps in the target scenario (the budget).
        episode_steps: steps per target episode (dm_control's default and the paper's is 1000).
        warmup_steps: random-action steps before the policy acts and learns.
        updates_per_step: SAC updates per real environment step, for both methods (paper: 10).
        model_updates_per_step: extra SAC updates per real step made only while the model pool holds
            trusted imagined transitions (MBPO's many updates per real step, which the model's data
            pay for); with an empty pool the run stays plain SAC's. Measured on cheetah
            (benchmarks/README.md): with 3, the area under the score curve is 2.6× plain SAC's but
            the final score 1.2× (p = 0.38); with 7, the final score is 1.54× plain SAC's (five seeds,
            p = 0.007) and 1.47× that of SAC making four updates per step on real data alone;
            without extra updates the model's data do not speed SAC up.
        horizon: imagined steps per rollout at most (paper: 5).
        rollout_every: real steps between rollout rounds (MBPO: 250).
        rollout_batch: rollout starts per round, each a real latent state.
        rollout_samples: rollouts per start (K), which differ only by the model's sampling; their
            spread is the disagreement that `uncertainty` reads, and all K enter the pool.
        anchor_observations: add the decoder's error at each rollout's real start, o_t − dec(s_t),
            to the rollout's decoded observations (and in the safeguard's measurement), so that
            imagined changes start from the real observation, not from its reconstruction.
        anchor_rewards: likewise add the reward head's error on the last real reward, r_{t−1} − r̂_{t−1},
            to the rollout's rewards: imagined rewards are the last real reward plus the model's
            predicted change, and a model biased in the target cannot hand the agent that bias
            (one-step reward error on held-out target episodes 2–5× lower, still above naive's).
        imagination: what the rollouts hand the agent: "model" (its predictions), or the controls
            of DESIGN.md §5 that replace predictions by the naive forecast (the real start's
            observation and reward repeated): "null" both (a model that predicts no change: pool
            rows are real rows with new actions), "naive_reward" the rewards only, "naive_obs"
            the observations only. The loop, fine-tuning and pool are the same in every case.
        uncertainty: "truncate" cuts a rollout before its first step whose disagreement exceeds
            `uncertainty_threshold`; "penalty" uses r − `uncertainty_penalty` · disagreement (MOPO);
            "none" keeps every step.
        uncertainty_threshold: the disagreement (std of the normalised next observation, mean over
            dims, plus std of the reward) above which "truncate" cuts.
        uncertainty_penalty: λ of "penalty" (λ = 1 halved the score: the samples' spread, 0.15–0.2,
            is as large as the rewards themselves).
        real_ratio: share of real transitions in each SAC batch while the pool has imagined ones
            (MBPO: 0.05, with an ensemble fitted to the target and 20-40 updates per step; 0.25
            measured no different from 0.5 here).
        model_pool_rounds: rollout rounds the model pool can hold (MBPO: about one epoch).
        history_length: real transitions each start latent is inferred from.
        safeguard: keep imagined steps only at horizons where the model currently beats the naive
            forecast on the newest real transitions (observation and reward, h = 1..horizon), so
            that a model worse than no model (e.g. random weights, tested) leaves plain SAC. Off by
            default, measured: this model's rewards are never better than repeating the last reward
            (1.4–2× its error after fine-tuning) and its one-step observations stop beating naive as
            the policy moves on, so the safeguard refuses data that help (on: 1.0× plain SAC
            at three extra updates; off: 1.54× at seven). Turn it on for a model you do not trust.
        safeguard_windows: real windows per round that the safeguard measures the model on.
        safeguard_memory: weight of the past rounds in the safeguard's errors (an exponential moving
            average over rounds; 0: each round is judged on its own windows alone).
        safeguard_reward_tolerance: the safeguard trusts a horizon step whose reward error is below
            this multiple of the naive forecast's (1: strictly better, the default). Observations
            are always held to 1. A model that predicts the reward's change no better than zero
            change can still carry useful transitions: this is the knob for that trade (a broken
            model's errors are far above any small multiple). Measured at 2: more rounds trusted,
            an earlier learning curve, but a worse final score (benchmarks/README.md).
        fine_tune: train the world model on the target's real data as it arrives (measured in
            benchmarks/README.md: unguarded, it made a 2000-step model's sampled rollouts harmful,
            0.24× SAC; with anchored rollouts of a model faithful per dim it did not, 0.89×, p = 0.53).
        fine_tune_steps: world-model gradient steps per rollout round when fine-tuning.
        fine_tune_batch: windows per fine-tuning step.
        fine_tune_lr: learning rate (AdamW) of that fine-tuning.
        eval_every: real steps between evaluations, the score curve (0: only at the end).
        eval_episodes: evaluation episodes; the score is their mean return in percent of the maximum.
        sac: the agent's settings (paper: discount 0.99, actor lr 1e-4, critic lr 2e-4).
    """

    env_steps: int = 10_000
    episode_steps: int = 250
    warmup_steps: int = 1000
    updates_per_step: int = 1
    model_updates_per_step: int = 7
    horizon: int = 5
    rollout_every: int = 250
    rollout_batch: int = 1000
    rollout_samples: int = 4
    anchor_observations: bool = True
    anchor_rewards: bool = True
    imagination: str = "model"
    uncertainty: str = "truncate"
    uncertainty_threshold: float = 0.5
    uncertainty_penalty: float = 1.0
    real_ratio: float = 0.5
    model_pool_rounds: int = 4
    history_length: int = 16
    safeguard: bool = False
    safeguard_windows: int = 64
    safeguard_memory: float = 0.0
    safeguard_reward_tolerance: float = 1.0
    fine_tune: bool = True
    fine_tune_steps: int = 20
    fine_tune_batch: int = 16
    fine_tune_lr: float = 3e-4
    eval_every: int = 1000
    eval_episodes: int = 5
    sac: SACConfig = dataclasses.field(default_factory=lambda: SACConfig(warmup_steps=0))

    def __post_init__(self) -> None:
        for name in ("env_steps", "episode_steps", "horizon", "rollout_every", "rollout_batch", "rollout_samples",
                     "model_pool_rounds", "history_length", "safeguard_windows", "fine_tune_batch", "eval_episodes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"adaptation.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "updates_per_step", "model_updates_per_step", "fine_tune_steps", "eval_every",
                     "uncertainty_threshold", "uncertainty_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"adaptation.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 < self.real_ratio <= 1.0:
            raise ValueError(f"adaptation.real_ratio must be in (0, 1], got {self.real_ratio!r}")
        if self.imagination not in IMAGINATION:
            raise ValueError(f"adaptation.imagination must be one of {tuple(IMAGINATION)}, got {self.imagination!r}")
        if self.uncertainty not in UNCERTAINTY:
            raise ValueError(f"adaptation.uncertainty must be one of {UNCERTAINTY}, got {self.uncertainty!r}")
        if not 0.0 <= self.safeguard_memory < 1.0:
            raise ValueError(f"adaptation.safeguard_memory must be in [0, 1), got {self.safeguard_memory!r}")
        if self.safeguard_reward_tolerance < 1:
            raise ValueError(f"adaptation.safeguard_reward_tolerance must be >= 1, got {self.safeguard_reward_tolerance!r}")
        if self.fine_tune_lr <= 0:
            raise ValueError(f"adaptation.fine_tune_lr must be > 0, got {self.fine_tune_lr!r}")
        if self.history_length >= self.episode_steps:
            raise ValueError(
                f"adaptation.history_length ({self.history_length}) must be shorter than "
                f"adaptation.episode_steps ({self.episode_steps})"
            )


@dataclasses.dataclass
class AdaptationResult:
    """Scores are mean evaluation returns in percent of the maximum (return / 10 for 1000-step episodes).
    `metrics` maps a name (`losses/qf_loss`, `charts/score`, ...) to its (real step, value) points."""

    target: ScenarioSpec
    use_model: bool
    method: str
    score: float
    eval_steps: list[int]
    eval_scores: list[float]
    imagined: int
    seconds: float
    agent: SAC
    metrics: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict:
        share = [value for _, value in self.metrics.get("charts/imagined_share", [])]
        return {
            "target": str(self.target),
            "method": self.method,
            "score": self.score,
            "best_score": max(self.eval_scores, default=0.0),
            "curve_mean": float(np.mean(self.eval_scores)) if self.eval_scores else 0.0,
            "collapsed": collapsed(self.eval_scores),
            "real_steps": self.eval_steps[-1] if self.eval_steps else 0,
            "imagined_transitions": self.imagined,
            "imagined_share": float(np.mean(share)) if share else 0.0,
            "seconds": round(self.seconds, 1),
        }


class MetricLog:
    """Per-step values averaged between log points: `history[name] = [(real step, mean), ...]`."""

    def __init__(self) -> None:
        self.pending: dict[str, list[float]] = collections.defaultdict(list)
        self.history: dict[str, list[tuple[int, float]]] = {}

    def add(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.pending[name].append(float(value))

    def log(self, step: int, values: dict[str, float] | None = None) -> None:
        self.add(values or {})
        for name, pending in self.pending.items():
            self.history.setdefault(name, []).append((step, float(np.mean(pending))))
        self.pending.clear()


def method_name(config: AdaptationConfig, use_model: bool) -> str:
    """What a run is called in logs and tables: "sac" without the model, "mrcom" with its
    predictions, the control's name ("null", "naive_reward", "naive_obs") otherwise."""
    if not use_model:
        return "sac"
    return "mrcom" if config.imagination == "model" else config.imagination


def collapsed(scores: list[float], floor: float = 20.0, kept: float = 0.7) -> bool:
    """Late collapse of a score curve: it reached at least `floor` and ends below `kept` × its best."""
    best = max(scores, default=0.0)
    return best >= floor and scores[-1] < kept * best


def score_of(returns: list[float], episode_steps: int) -> float:
    """Mean return in percent of the maximum (each step's reward is at most 1)."""
    return 100.0 * float(np.mean(returns)) / episode_steps


def _mixed(real: ReplayBuffer, model: ReplayBuffer, batch_size: int, ratio: float, rng, device) -> tuple[dict, float]:
    """A SAC batch and its imagined share; with an empty pool exactly plain SAC's draw."""
    if len(model) == 0:
        return real.sample(batch_size, rng, device=device), 0.0
    n_real = max(1, math.ceil(ratio * batch_size))
    a = real.sample(n_real, rng, device=device)
    b = model.sample(batch_size - n_real, rng, device=device)
    return {key: torch.cat([a[key], b[key]]) for key in a}, (batch_size - n_real) / batch_size


@contextlib.contextmanager
def _own_torch_rng(seed: int, device: torch.device):
    """The world model's sampling (rollouts, fine-tuning) from `seed`, leaving the caller's RNG as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def adapt(
    target: ScenarioSpec,
    config: AdaptationConfig,
    module=None,
    use_model: bool = True,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> AdaptationResult:
    """Learns a policy for `target` with SAC on real transitions and, with `use_model`, on rollouts of
    `module`'s world model (a trained `MrCoM`). Returns the final score, the evaluation curve and the
    logged metrics. With `config.fine_tune`, `module` itself is trained: pass a copy to keep the original.

    The agent's own draws (environment, replay, actions) do not depend on the model: when the
    safeguard trusts the model nowhere, the run is plain SAC's with the same seed, step for step."""
    device = torch.device(device)
    with _own_torch_rng(derive_seed(seed, "world model"), device):
        return _adapt(target, config, module, use_model, seed, progress, device)


def _adapt(target, config: AdaptationConfig, module, use_model: bool, seed: int, progress: bool, device) -> AdaptationResult:
    start_time = time.perf_counter()
    rng = np.random.default_rng(seed)
    model_rng = np.random.default_rng(derive_seed(seed, "model windows"))
    error_rng = np.random.default_rng(derive_seed(seed, "model errors"))  # measuring leaves the run as it is
    env = make_env(target, seed=seed, episode_steps=config.episode_steps)
    obs_dim, act_dim = env.obs_dim, env.act_dim
    domain_id, optimizer = None, None
    if use_model:
        if module is None:
            raise ValueError("adaptation with the world model needs a trained model (module=None)")
        if target.domain not in module.domains:
            raise ValueError(f"target domain {target.domain!r} is not one of the model's domains {module.domains}")
        domain_id = module.domains.index(target.domain)
        expected = (module.obs_dims[domain_id], module.act_dims[domain_id])
        if (obs_dim, act_dim) != expected:
            raise ValueError(
                f"target {target} has (obs, act) dims {(obs_dim, act_dim)}, the model expects {expected} for "
                f"{target.domain} (is its obs_fn the one the model was trained with?)"
            )
        module.to(device).eval()
        if config.fine_tune:
            optimizer = torch.optim.AdamW(module.parameters(), lr=config.fine_tune_lr)

    agent = SAC(obs_dim, act_dim, config.sac, seed=seed, device=device)
    real = ReplayBuffer(obs_dim, act_dim, config.env_steps)
    pool_size = config.rollout_batch * config.rollout_samples * config.horizon * config.model_pool_rounds
    model_pool = ReplayBuffer(obs_dim, act_dim, pool_size)
    history = RealHistory(obs_dim, act_dim)
    safeguard_errors = ErrorAverage(config.safeguard_memory)
    # Imagination acts with its own generator, so that the agent's draws do not depend on it.
    imagination_generator = torch.Generator(device).manual_seed(derive_seed(seed, "imagination policy"))

    def policy(obs: torch.Tensor) -> torch.Tensor:
        action, _ = agent.actor(obs, generator=imagination_generator)
        return action

    def evaluation_env(index: int):
        return make_env(target, seed=derive_seed(seed, "evaluation", index), episode_steps=config.episode_steps)

    obs = env.reset()
    history.start(obs)
    log = MetricLog()
    imagined, eval_steps, eval_scores = 0, [], []
    bar = tqdm(total=config.env_steps, desc=f"adapt {method_name(config, use_model)} {target.domain}",
               unit="step", disable=not progress, dynamic_ncols=True)
    for step in range(1, config.env_steps + 1):
        action = env.random_action(rng) if step <= config.warmup_steps else agent.act(obs)
        next_obs, reward, done = env.step(action)
        real.add(obs, action, reward, next_obs, False, episode_end=done)
        history.add(action, reward, next_obs, done)
        log.add({"charts/real_reward": reward})
        obs = next_obs
        if done:
            obs = env.reset()
            history.start(obs)

        learning = step > config.warmup_steps
        if use_model and learning and (step - config.warmup_steps - 1) % config.rollout_every == 0:
            trusted = config.horizon
            if config.safeguard:
                trusted, errors = trusted_horizon(module, history, config, domain_id, model_rng, device, safeguard_errors)
                log.add(errors)
            if optimizer is not None:
                loss = fine_tune(module, history, config, domain_id, optimizer, model_rng, device)
                if loss is not None:
                    log.add({"losses/model_fine_tune": loss})
            if trusted == 0:
                model_pool = ReplayBuffer(obs_dim, act_dim, pool_size)  # nothing the model says is trusted now
            else:
                batch = history.batch(config.rollout_batch, config.history_length,
                                      module.world_model.config.context_length, model_rng, domain_id,
                                      max(module.obs_dims), max(module.act_dims), device)
                if batch is not None:
                    rollouts = imagine(module.world_model, batch, policy, trusted, obs_dim, act_dim, config.rollout_samples,
                                       config.anchor_observations, config.anchor_rewards, config.imagination)
                    kept = imagined_transitions(rollouts, config, trusted)
                    model_pool.add(*(kept[k] for k in ("obs", "action", "reward", "next_obs", "done")))
                    imagined += len(kept["reward"])
                    log.add({"charts/disagreement": rollouts["disagreement"].mean().item(),
                             "charts/uncertain_share": (rollouts["disagreement"] > config.uncertainty_threshold).float().mean().item(),
                             "charts/kept_fraction": len(kept["reward"]) / len(rollouts["reward"])})
                    if len(kept["reward"]):  # beside charts/real_reward: the model's optimism
                        log.add({"charts/imagined_reward": float(kept["reward"].mean())})
            log.add({"charts/model_pool": len(model_pool)})
        if learning and len(real) >= 1:
            updates = config.updates_per_step + (config.model_updates_per_step if len(model_pool) else 0)
            for _ in range(updates):
                batch, share = _mixed(real, model_pool, config.sac.batch_size, config.real_ratio if use_model else 1.0,
                                      rng, device)
                log.add({SAC_METRICS[key]: value for key, value in agent.update(batch).items() if key in SAC_METRICS})
                log.add({"charts/imagined_share": share})
        evaluating = (config.eval_every and step % config.eval_every == 0) or step == config.env_steps
        if evaluating:
            if use_model:  # the model where the policy goes now: the suspect of a late collapse
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    errors = model_errors(module, history, config, domain_id, error_rng, device,
                                          newest=config.eval_every or config.env_steps)
                if errors is not None:
                    log.add(error_metrics(errors))
            returns = evaluate(agent, evaluation_env, config.eval_episodes)
            eval_steps.append(step)
            eval_scores.append(score_of(returns, config.episode_steps))
            bar.set_postfix(score=f"{eval_scores[-1]:.1f}", refresh=False)
            log.log(step, {"charts/score": eval_scores[-1]})
        elif step % config.rollout_every == 0:
            log.log(step)
        bar.update(1)
    bar.close()
    return AdaptationResult(target, use_model, method_name(config, use_model), eval_scores[-1], eval_steps, eval_scores,
                            imagined, time.perf_counter() - start_time, agent, log.history)

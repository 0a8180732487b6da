"""Scenario adaptation (Algorithm 2, DESIGN.md §5): SAC on real plus imagined transitions (MBPO-style).

One loop serves the `ScenarioAdaptation` callback during `fit`, `mrcom test` and `mrcom adapt`;
with `use_model=False` it is the no-model baseline (plain SAC with the same real-step budget).
Settings: `settings.py`; the model's stages: `rounds.py`.

Each real step: act (randomly during `sac.warmup_steps`), store the transition, and once learning
has started, every `rollout.every` steps a model round; then SAC updates, each on a batch that
mixes `replay.real_ratio` real rows with imagined ones while the pool holds any. A model round:
1. safeguard (when enabled): the model's errors on the newest real transitions against the
   naive forecast decide how many imagined steps are trusted (none: the pool is emptied and the
   run is plain SAC's from there); the share cap (when enabled) scales the imagined share of SAC's
   batches down as the model's one-step error there rises (at 0: real rows only);
2. fine-tuning of the world model on the target's real history so far (or its newest part);
3. rollouts from real latents, K samples per start, cut where the samples disagree (or their
   reward penalised), into the model pool.
At every evaluation the model's errors where the policy goes now are logged beside the score.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mrcom_lightning.adaptation.history import RealHistory
from mrcom_lightning.adaptation.imagination import imagine
from mrcom_lightning.adaptation.rounds import (
    ErrorAverage,
    error_metrics,
    fine_tune,
    imagined_transitions,
    model_errors,
    share_cap,
    trusted_horizon,
)
from mrcom_lightning.adaptation.settings import AdaptationConfig
from mrcom_lightning.agents import SAC, ReplayBuffer, evaluate
from mrcom_lightning.datamodules import meta_episode_batch
from mrcom_lightning.scenarios import ScenarioSpec, make_env
from mrcom_lightning.seeding import derive_seed

PROGRESS_EVERY = 10  # real steps between calls of `adapt`'s `on_progress` (besides each evaluation)

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
    return "mrcom" if config.rollout.imagination == "model" else config.rollout.imagination


def collapsed(scores: list[float], floor: float = 20.0, kept: float = 0.7) -> bool:
    """Late collapse of a score curve: it reached at least `floor` and ends below `kept` × its best."""
    best = max(scores, default=0.0)
    return best >= floor and scores[-1] < kept * best


def score_of(returns: list[float], episode_steps: int) -> float:
    """Mean return in percent of the maximum (each step's reward is at most 1)."""
    return 100.0 * float(np.mean(returns)) / episode_steps


def _mixed(real: ReplayBuffer, model: ReplayBuffer | None, batch_size: int, ratio: float, rng, device) -> tuple[dict, float]:
    """A SAC batch and its imagined share; without a pool or with an empty one exactly plain SAC's draw."""
    if model is None or len(model) == 0:
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
    on_progress: Callable[[int, float], None] | None = None,
) -> AdaptationResult:
    """Learns a policy for `target` with SAC on real transitions and, with `use_model`, on rollouts of
    `module`'s world model (a trained `MrCoM`). Returns the final score, the evaluation curve and the
    logged metrics. With `config.fine_tune.enabled`, `module` itself is trained: pass a copy to keep
    the original.

    `progress` shows a tqdm bar; `on_progress(real steps done, last evaluation score)` (NaN before the
    first) is called every `PROGRESS_EVERY` real steps and at each evaluation, the last step included.

    The agent's own draws (environment, replay, actions) do not depend on the model: when the
    safeguard trusts the model nowhere, the run is plain SAC's with the same seed, step for step."""
    device = torch.device(device)
    with _own_torch_rng(derive_seed(seed, "world model"), device):
        return _adapt(target, config, module, use_model, seed, progress, device, on_progress)


class ModelStage:
    """The world model's part of the loop: its model pool, and each rollout round's work (safeguard,
    fine-tuning, rollouts). Its draws are its own, so that the agent's never depend on it."""

    def __init__(self, module, target: ScenarioSpec, config: AdaptationConfig, agent: SAC, seed: int, device) -> None:
        if module is None:
            raise ValueError("adaptation with the world model needs a trained model (module=None)")
        if target.domain not in module.domains:
            raise ValueError(f"target domain {target.domain!r} is not one of the model's domains {module.domains}")
        self.module, self.config, self.device = module.to(device).eval(), config, device
        self.domain = module.domains.index(target.domain)
        self.obs_dim, self.act_dim = agent.obs_dim, agent.act_dim
        expected = (module.obs_dims[self.domain], module.act_dims[self.domain])
        if (self.obs_dim, self.act_dim) != expected:
            raise ValueError(
                f"target {target} has (obs, act) dims {(self.obs_dim, self.act_dim)}, the model expects {expected} for "
                f"{target.domain} (is its obs_fn the one the model was trained with?)"
            )
        rollout = config.rollout
        self.pool_size = rollout.starts * rollout.samples * rollout.horizon * config.replay.pool_rounds
        self.pool = ReplayBuffer(self.obs_dim, self.act_dim, self.pool_size)
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=config.fine_tune.lr) if config.fine_tune.enabled else None
        self.safeguard_errors = ErrorAverage(config.safeguard.memory)
        self.cap = 1.0  # the share cap's factor on the imagined share (1 until measured)
        self.window_rng = np.random.default_rng(derive_seed(seed, "model windows"))
        self.error_rng = np.random.default_rng(derive_seed(seed, "model errors"))  # measuring leaves the run as it is
        self.cap_rng = np.random.default_rng(derive_seed(seed, "share cap"))
        # Imagination acts with its own generator, so that the agent's draws do not depend on it.
        generator = torch.Generator(device).manual_seed(derive_seed(seed, "imagination policy"))
        self.policy = lambda obs: agent.actor(obs, generator=generator)[0]
        self.imagined = 0

    def round(self, history: RealHistory) -> dict[str, float]:
        """Safeguard, share cap, fine-tuning and rollouts into the pool; the values to log."""
        config, rollout, logged = self.config, self.config.rollout, {}
        horizon, errors = rollout.horizon, None
        if config.safeguard.enabled:
            errors = model_errors(self.module, history, rollout, config.error_windows, config.history_length, self.domain,
                                  self.window_rng, self.device, newest=rollout.every)
            horizon, values = trusted_horizon(errors, config.safeguard, self.safeguard_errors)
            logged |= values
        if config.replay.share_cap:
            if not config.safeguard.enabled:  # measured with draws of its own: the run is as it would be
                errors = self.measure(history, self.cap_rng, rollout.every)
            if errors is not None:  # without a measurement the cap stays as it was
                self.cap = share_cap(errors, config.replay)
            logged["charts/share_cap"] = (1 - config.replay.real_ratio) * self.cap
        if self.optimizer is not None:
            loss = fine_tune(self.module, history, config.fine_tune, config.history_length, self.domain, self.optimizer,
                             self.window_rng, self.device)
            if loss is not None:
                logged["losses/model_fine_tune"] = loss
        if horizon == 0:  # nothing the model says is trusted now
            self.pool = ReplayBuffer(self.obs_dim, self.act_dim, self.pool_size)
            return logged | {"charts/model_pool": 0}
        batch, start = self.starts(history)
        if batch is not None:
            rollouts = imagine(self.module.world_model, batch, self.policy, horizon, self.obs_dim, self.act_dim,
                               rollout.samples, rollout.anchor_observations, rollout.anchor_rewards, rollout.imagination,
                               start)
            kept = imagined_transitions(rollouts, rollout, horizon)
            self.pool.add(*(kept[k] for k in ("obs", "action", "reward", "next_obs", "done")))
            self.imagined += len(kept["reward"])
            logged |= {"charts/disagreement": rollouts["disagreement"].mean().item(),
                       "charts/uncertain_share": (rollouts["disagreement"] > rollout.uncertainty_threshold).float().mean().item(),
                       "charts/kept_fraction": len(kept["reward"]) / len(rollouts["reward"])}
            if len(kept["reward"]):  # beside charts/real_reward: the model's optimism
                logged["charts/imagined_reward"] = float(kept["reward"].mean())
        return logged | {"charts/model_pool": len(self.pool)}

    def starts(self, history: RealHistory):
        """Where rollouts start: the ends of real windows of `history_length` transitions (the batch;
        states computed by `imagine`), or, for a model that infers its state over whole meta-episodes
        (MAMBA), states inferred over the entire real history so far at uniformly drawn real steps."""
        rollout, module = self.config.rollout, self.module
        if not module.world_model.config.previous_step_encoder:
            return history.model_batch(module, self.domain, rollout.starts, self.config.history_length, self.window_rng,
                                       self.device), None
        episodes = history.all_episodes()
        if sum(len(e["action"]) for e in episodes) < 1:
            return None, None
        joined = meta_episode_batch(episodes, self.domain, max(module.obs_dims), max(module.act_dims),
                                    module.world_model.config.context_length, self.device)
        positions = self.window_rng.integers(1, joined["obs"].shape[1], rollout.starts)
        start = module.world_model.start_from_history(joined, positions, rollout.anchor_observations, rollout.anchor_rewards)
        return joined, start

    def feeds(self) -> bool:
        """Whether SAC's batches take imagined rows now: the pool holds some and the share cap allows them."""
        return len(self.pool) > 0 and self.cap > 0

    def real_ratio(self) -> float:
        """The real share of each SAC batch while the pool feeds it: `replay.real_ratio`, raised toward 1 by the share cap."""
        ratio = self.config.replay.real_ratio
        return ratio + (1 - ratio) * (1 - self.cap)

    def measure(self, history: RealHistory, rng: np.random.Generator, newest: int) -> dict[str, torch.Tensor] | None:
        """`model_errors` on the newest `newest` real transitions, drawn from `rng`, the torch RNG of the run untouched."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            return model_errors(self.module, history, self.config.rollout, self.config.error_windows,
                                self.config.history_length, self.domain, rng, self.device, newest)

    def errors_where_the_policy_goes(self, history: RealHistory, newest: int) -> dict[str, float]:
        """`charts/model_error/...` on the newest `newest` real transitions, without touching any RNG of the run."""
        errors = self.measure(history, self.error_rng, newest)
        return error_metrics(errors) if errors is not None else {}


def _adapt(target, config: AdaptationConfig, module, use_model: bool, seed: int, progress: bool, device,
           on_progress: Callable[[int, float], None] | None) -> AdaptationResult:
    start_time = time.perf_counter()
    rng = np.random.default_rng(seed)
    env = make_env(target, seed=seed, episode_steps=config.episode_steps)
    agent = SAC(env.obs_dim, env.act_dim, config.sac, seed=seed, device=device)
    model = ModelStage(module, target, config, agent, seed, device) if use_model else None
    real = ReplayBuffer(env.obs_dim, env.act_dim, min(config.env_steps, config.sac.buffer_size))
    history = RealHistory(env.obs_dim, env.act_dim)

    def evaluation_env(index: int):
        return make_env(target, seed=derive_seed(seed, "evaluation", index), episode_steps=config.episode_steps)

    obs = env.reset()
    history.start(obs)
    log = MetricLog()
    eval_steps, eval_scores = [], []
    bar = tqdm(total=config.env_steps, desc=f"adapt {method_name(config, use_model)} {target.domain}",
               unit="step", disable=not progress, dynamic_ncols=True)
    for step in range(1, config.env_steps + 1):
        # Act in the target and store the transition.
        learning = step > config.sac.warmup_steps
        action = agent.act(obs) if learning else env.random_action(rng)
        next_obs, reward, done = env.step(action)
        real.add(obs, action, reward, next_obs, False, episode_end=done)
        history.add(action, reward, next_obs, done)
        log.add({"charts/real_reward": reward})
        obs = env.reset() if done else next_obs
        if done:
            history.start(obs)

        if learning:
            # A model round every `rollout.every` learning steps.
            if model is not None and (step - config.sac.warmup_steps - 1) % config.rollout.every == 0:
                log.add(model.round(history))
            # SAC updates: more while the pool feeds them imagined data.
            feeding = model is not None and model.feeds()
            pool, ratio = (model.pool, model.real_ratio()) if feeding else (None, 1.0)
            extra = config.replay.model_updates_per_step if feeding else 0
            for _ in range(config.sac.updates_per_step + extra):
                batch, share = _mixed(real, pool, config.sac.batch_size, ratio, rng, device)
                log.add({SAC_METRICS[key]: value for key, value in agent.update(batch).items() if key in SAC_METRICS})
                log.add({"charts/imagined_share": share})

        # Evaluate, with the model's errors where the policy goes now.
        evaluating = (config.eval_every and step % config.eval_every == 0) or step == config.env_steps
        if evaluating:
            if model is not None:
                log.add(model.errors_where_the_policy_goes(history, newest=config.eval_every or config.env_steps))
            eval_steps.append(step)
            eval_scores.append(score_of(evaluate(agent, evaluation_env, config.eval_episodes), config.episode_steps))
            bar.set_postfix(score=f"{eval_scores[-1]:.1f}", refresh=False)
            log.log(step, {"charts/score": eval_scores[-1]})
        elif step % config.rollout.every == 0:
            log.log(step)
        bar.update(1)
        if on_progress is not None and (evaluating or step % PROGRESS_EVERY == 0):
            on_progress(step, eval_scores[-1] if eval_scores else math.nan)
    bar.close()
    return AdaptationResult(target, use_model, method_name(config, use_model), eval_scores[-1] if eval_scores else 0.0,
                            eval_steps, eval_scores, model.imagined if model else 0, time.perf_counter() - start_time,
                            agent, log.history)

"""Scenario adaptation (Algorithm 2, DESIGN.md §5): imagination from real latents with the current
policy, fine-tuning that fits the model to the target, the uncertainty cut, the safeguard that
turns a broken model into plain SAC, a model pool that feeds SAC, the logged metrics, target
names, the callback inside `fit`, `mrcom adapt`, and adaptation that beats a random policy."""

from __future__ import annotations

import copy
import dataclasses
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mrcom_lightning.adaptation import (
    AdaptationConfig,
    FineTuneSettings,
    RealHistory,
    ReplaySettings,
    RolloutSettings,
    SafeguardSettings,
    adapt,
    imagine,
    resolve_targets,
    score_of,
)
from mrcom_lightning.adaptation import loop, rounds
from mrcom_lightning.adaptation.imagination import open_loop_errors, per_dim_relative_errors
from mrcom_lightning.agents import SAC, SACConfig
from mrcom_lightning.metrics import masked_mean
from mrcom_lightning.models import WorldModelConfig
from mrcom_lightning.module import MrCoM
from mrcom_lightning.scenarios import MetaScenarioSet, ScenarioSpec, make_env

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quick.yaml"
QUICK_CONFIG = yaml.safe_load(QUICK.read_text())
TIMEOUT_S = 300

DIMS = {"hopper": (15, 4), "cheetah": (17, 6)}  # hopper is domain 0, cheetah domain 1
HOPPER = ScenarioSpec("hopper", target_speed=0.5, seed=3)
TINY = WorldModelConfig(
    embed_dim=16, hidden_dim=32, stochastic_dim=8, deterministic_dim=16, auxiliary_dim=4, context_length=4, heads=4, reward_bins=31
)
TINY_SAC = SACConfig(hidden_dim=32, batch_size=16, warmup_steps=20)
# 60 real steps in 30-step episodes; rollouts start at step 21 and come every 10 steps: 4 rounds.
TINY_ADAPT = AdaptationConfig(
    env_steps=60, episode_steps=30, history_length=6, eval_episodes=1, sac=TINY_SAC,
    rollout=RolloutSettings(horizon=2, every=10, starts=8), replay=ReplaySettings(model_updates_per_step=0, pool_rounds=2),
    fine_tune=FineTuneSettings(steps=2), safeguard=SafeguardSettings(enabled=True),
)


def tiny_model() -> MrCoM:
    torch.manual_seed(0)
    return MrCoM(world_model=TINY, domain_dims=DIMS, num_scenarios=2).eval()


def tiny_config(**changes) -> AdaptationConfig:
    """TINY_ADAPT with `changes`; a group's field is named with a double underscore: `rollout__horizon=3`."""
    return TINY_ADAPT.replace(**{key.replace("__", "."): value for key, value in changes.items()})


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """The entries of two state dicts that differ."""
    assert after.keys() == before.keys()
    return [name for name in before if not torch.equal(before[name], after[name])]


def hopper_history(episodes: int = 2, steps: int = 30) -> RealHistory:
    """Random-action episodes of a real hopper scenario."""
    env = make_env(HOPPER, seed=0, episode_steps=steps)
    rng = np.random.default_rng(0)
    history = RealHistory(env.obs_dim, env.act_dim)
    for _ in range(episodes):
        history.start(env.reset())
        done = False
        while not done:
            action = env.random_action(rng)
            next_obs, reward, done = env.step(action)
            history.add(action, reward, next_obs, done)
    return history


# --- imagination -------------------------------------------------------------------------


def test_imagined_transitions_come_from_real_latents_and_the_current_policy():
    model = tiny_model()
    history = hopper_history()
    assert len(history.episodes) == 2
    count, length, horizon = 5, 6, 3
    batch = history.batch(count, length, TINY.context_length, np.random.default_rng(0), domain=model.domains.index("hopper"), obs_max=17, act_max=6)
    assert batch["obs"].shape == (count, length + 1, 17) and batch["action"].shape == (count, length, 6)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        assert obs.shape == (count, 15)  # the target's own sizes, not the padded ones
        return torch.tanh(obs[:, :4])

    torch.manual_seed(0)
    out = imagine(model.world_model, batch, policy, horizon, 15, 4)
    n = count * horizon
    assert out["obs"].shape == (n, 15) and out["next_obs"].shape == (n, 15)
    assert out["action"].shape == (n, 4) and out["reward"].shape == (n,) and out["done"].shape == (n,)
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    assert not out["done"].any()  # DMC episodes have a fixed length: no termination model

    # Every action is the policy's at its own observation.
    torch.testing.assert_close(out["action"], torch.tanh(out["obs"][:, :4]), rtol=0, atol=0)
    # Rows are rollout-major ([rollout i, step k] at i·horizon + k): each step starts where the last ended.
    steps = {key: out[key].view(count, horizon, -1) for key in ("obs", "next_obs")}
    torch.testing.assert_close(steps["obs"][:, 1:], steps["next_obs"][:, :-1], rtol=0, atol=0)
    # The first step starts at the real last observation of each window.
    torch.testing.assert_close(steps["obs"][:, 0], batch["obs"][:, -1, :15], rtol=0, atol=0)
    real = np.concatenate([e["obs"] for e in history.episodes])
    assert all((real == o).all(1).any() for o in steps["obs"][:, 0].numpy())

    # The actions drive the model: another policy from the same latents imagines other states.
    torch.manual_seed(0)
    other = imagine(model.world_model, batch, lambda obs: -torch.tanh(obs[:, :4]), horizon, 15, 4)
    other_steps = other["obs"].view(count, horizon, -1)
    torch.testing.assert_close(other_steps[:, 0], steps["obs"][:, 0], rtol=0, atol=0)
    assert not torch.allclose(other["next_obs"].view(count, horizon, -1)[:, 0], steps["next_obs"][:, 0])


def test_given_start_states_take_their_batch_rows_domain(monkeypatch):
    """`start` (e.g. MAMBA's whole-history states, P per batch row) decides where rollouts start; each
    start state takes its batch row's domain; a count that is not P per row is refused."""
    model = tiny_model()
    wm = model.world_model
    batch = hopper_history().batch(2, 6, TINY.context_length, np.random.default_rng(0), domain=0, obs_max=17, act_max=6)
    batch["domain"] = torch.tensor([0, 1])  # two rows of two domains (hopper's sizes fit both)
    start = wm.start_from_history(batch, [3, 5])  # rows (batch row, position)
    domains, original_rollout = [], wm.rollout

    def recording_rollout(state, actions, horizon, domain):
        domains.append(domain.tolist())
        return original_rollout(state, actions, horizon, domain)

    monkeypatch.setattr(wm, "rollout", recording_rollout)
    out = imagine(wm, batch, lambda obs: torch.tanh(obs[:, :4]), 2, 15, 4, samples=2, start=start)
    assert domains == [[0, 0, 0, 0, 1, 1, 1, 1]]  # 2 rows x 2 positions x 2 samples
    torch.testing.assert_close(out["obs"].view(4, 2, 2, 15)[:, 0, 0], start.obs[:, :15], rtol=0, atol=0)
    rows3 = hopper_history().batch(3, 6, TINY.context_length, np.random.default_rng(1), domain=0, obs_max=17, act_max=6)
    three = wm.start(wm.predict(rows3), rows3, 6)
    with pytest.raises(ValueError, match="3 start states for a batch of 2 rows"):
        imagine(wm, batch, lambda obs: torch.tanh(obs[:, :4]), 2, 15, 4, start=three)


def imagined_with(imagination: str, samples: int = 2):
    model, history = tiny_model(), hopper_history()
    with torch.no_grad():  # a reward head that predicts changes (a fresh one predicts 0 everywhere)
        model.world_model.reward_head[-1].weight.normal_(generator=torch.Generator().manual_seed(0))
    batch = history.batch(4, 6, TINY.context_length, np.random.default_rng(0), domain=model.domains.index("hopper"), obs_max=17, act_max=6)
    torch.manual_seed(0)
    policy_generator = torch.Generator().manual_seed(0)
    out = imagine(model.world_model, batch, lambda obs: torch.rand(len(obs), 4, generator=policy_generator) * 2 - 1,
                  3, 15, 4, samples, anchor=True, anchor_reward=True, imagination=imagination)
    return out, batch, history


def test_the_null_model_imagines_the_real_start_repeated_with_new_actions():
    """The null-model control: every imagined observation and reward is the real start's (o_t, r_{t−1}),
    step for step; only the actions are the policy's; its copies agree, so nothing is truncated."""
    out, batch, history = imagined_with("null")
    start_obs = batch["obs"][:, -1, :15].repeat_interleave(2 * 3, dim=0)  # 4 starts x 2 copies x 3 steps
    start_reward = batch["reward"][:, -1].repeat_interleave(2 * 3, dim=0)
    torch.testing.assert_close(out["obs"], start_obs, rtol=0, atol=0)
    torch.testing.assert_close(out["next_obs"], start_obs, rtol=0, atol=0)
    torch.testing.assert_close(out["reward"], start_reward, rtol=0, atol=0)
    assert (out["disagreement"] == 0).all()
    assert len(torch.unique(out["action"], dim=0)) > 1  # the actions are new draws of the policy
    # A null pool row is a real observation with the reward that arrived with it and a new action.
    real = {(tuple(obs), reward) for e in history.episodes for obs, reward in zip(e["obs"][1:].tolist(), e["reward"].tolist())}
    kept = rounds.imagined_transitions(out, tiny_config().rollout, 3)
    assert len(kept["reward"]) == len(out["reward"])
    assert all((tuple(o), r) in real for o, r in zip(kept["obs"].tolist(), kept["reward"].tolist()))


def test_the_diagnostic_halves_swap_one_prediction_for_the_naive_forecast():
    model_out, batch, _ = imagined_with("model", samples=1)
    start_obs = batch["obs"][:, -1, :15].repeat_interleave(3, dim=0)
    start_reward = batch["reward"][:, -1].repeat_interleave(3, dim=0)
    assert not torch.allclose(model_out["next_obs"], start_obs) and not torch.allclose(model_out["reward"], start_reward)
    naive_reward, _, _ = imagined_with("naive_reward", samples=1)  # the model's observations, the naive reward
    torch.testing.assert_close(naive_reward["reward"], start_reward, rtol=0, atol=0)
    assert not torch.allclose(naive_reward["next_obs"], start_obs)
    naive_obs, _, _ = imagined_with("naive_obs", samples=1)  # the naive observation, the model's reward
    torch.testing.assert_close(naive_obs["next_obs"], start_obs, rtol=0, atol=0)
    assert not torch.allclose(naive_obs["reward"], start_reward)


def test_the_null_models_errors_are_the_naive_forecasts():
    model = tiny_model()
    batch = hopper_history().batch(8, 9, TINY.context_length, np.random.default_rng(0), domain=0, obs_max=17, act_max=6)
    errors = open_loop_errors(model.world_model, batch, 3, True, True, imagination="null")
    torch.testing.assert_close(errors["model_obs"], errors["naive_obs"])
    torch.testing.assert_close(errors["model_reward"], errors["naive_reward"])


@pytest.mark.parametrize("scores, expected", [
    ([5.0, 30.0, 50.0, 34.0], True),   # best 50, final 34 < 35: collapsed
    ([5.0, 30.0, 50.0, 36.0], False),  # kept more than 0.7 of its best
    ([5.0, 50.0, 10.0, 45.0], False),  # fell, then recovered
    ([1.0, 19.0, 5.0, 2.0], False),    # never learned (best below 20)
])
def test_the_collapse_flag(scores, expected):
    assert loop.collapsed(scores) is expected


def test_a_null_model_run_is_named_and_fills_the_pool():
    config = tiny_config(safeguard__enabled=False, rollout__imagination="null", eval_every=0)
    result = adapt(HOPPER, config, tiny_model(), use_model=True, seed=0, progress=False)
    assert result.method == "null" and result.summary()["method"] == "null"
    assert result.imagined > 0
    with pytest.raises(ValueError, match="adaptation.rollout.imagination"):
        tiny_config(rollout__imagination="zero")


def test_history_windows_need_a_prompt_and_a_long_enough_episode():
    history = hopper_history(episodes=1, steps=10)
    rng = np.random.default_rng(0)
    assert history.windows(3, 6, prompt_length=11, rng=rng) is None  # no episode as long as the prompt
    assert history.windows(3, 11, prompt_length=4, rng=rng) is None  # no episode as long as the window
    windows = history.windows(3, 6, prompt_length=4, rng=rng)
    assert np.shape(windows["obs"]) == (3, 7, 15) and np.shape(windows["prompt_obs"]) == (3, 4, 15)


def test_a_history_prompt_is_another_episode_or_the_windows_own_past():
    history = hopper_history(episodes=2, steps=10)
    history.episodes[1]["reward"][:] += 1.0  # the best episode
    rng = np.random.default_rng(0)
    windows = history.windows(40, 3, prompt_length=4, rng=rng)
    episodes = history.episodes
    for obs, prompt in zip(windows["obs"], windows["prompt_obs"]):
        own = next(i for i, e in enumerate(episodes) if any((e["obs"][s : s + 4] == obs).all() for s in range(8)))
        assert not np.array_equal(prompt, episodes[own]["obs"][:4]), "a prompt from the window's own episode"
    # One episode so far: its prompt is its first transitions, and windows start after them.
    single = hopper_history(episodes=1, steps=10)
    windows = single.windows(40, 3, prompt_length=4, rng=rng)
    starts = [next(s for s in range(8) if (single.episodes[0]["obs"][s : s + 4] == obs).all()) for obs in windows["obs"]]
    assert min(starts) >= 4


# --- the world model is held out of policy learning ----------------------------------------


def test_without_fine_tuning_the_world_model_is_untouched():
    model = tiny_model()
    before = snapshot(model)
    result = adapt(HOPPER, tiny_config(fine_tune__enabled=False, safeguard__enabled=False), model, use_model=True, seed=0, progress=False)
    assert result.imagined > 0  # the model was used
    assert changed(before, model.state_dict()) == []
    assert math.isfinite(result.score) and result.use_model


def test_fine_tuning_is_on_by_default_and_trains_the_world_model():
    assert AdaptationConfig().fine_tune.enabled
    model = tiny_model()
    before = snapshot(model)
    result = adapt(HOPPER, tiny_config(), model, use_model=True, seed=0, progress=False)
    names = changed(before, model.state_dict())
    assert any(name.startswith("world_model.") for name in names), names
    assert not model.training  # handed back in evaluation mode
    assert len(result.metrics["losses/model_fine_tune"]) == expected_rounds(tiny_config())


def reconstruction_error(model: MrCoM, batch) -> float:
    """MSE of the decoded observations against the real ones (normalised space, real dims)."""
    with torch.no_grad():
        predictions = model.world_model.predict(batch)
    return masked_mean((predictions.obs - predictions.obs_target) ** 2, predictions.obs_mask).mean().item()


def test_fine_tuning_lowers_the_error_on_the_targets_transitions():
    model = tiny_model()
    history = hopper_history(episodes=3)
    config = tiny_config(fine_tune__steps=40, fine_tune__lr=3e-3)
    domain = model.domains.index("hopper")
    held = history.batch(32, config.history_length, TINY.context_length, np.random.default_rng(1), domain=domain, obs_max=17, act_max=6)
    before = reconstruction_error(model, held)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.fine_tune.lr)
    loss = rounds.fine_tune(model, history, config.fine_tune, config.history_length, domain, optimizer,
                            np.random.default_rng(0), "cpu")
    assert math.isfinite(loss)
    assert reconstruction_error(model, held) < 0.8 * before


def test_plain_sac_needs_no_model():
    result = adapt(HOPPER, tiny_config(), None, use_model=False, seed=0, progress=False)
    assert result.imagined == 0 and not result.use_model
    assert result.eval_steps == [60] and math.isfinite(result.score)


@pytest.mark.parametrize(
    "target, message",
    [
        (ScenarioSpec("walker"), "'walker' is not one of the model's domains"),
        (ScenarioSpec("hopper", obs_fn="add_dims"), r"\(obs, act\) dims .*obs_fn"),
    ],
)
def test_a_target_the_model_cannot_read_is_refused(target, message):
    with pytest.raises(ValueError, match=message):
        adapt(target, tiny_config(), tiny_model(), use_model=True, progress=False)


def test_adapting_with_the_model_needs_a_model():
    with pytest.raises(ValueError, match="needs a trained model"):
        adapt(HOPPER, tiny_config(), None, use_model=True, progress=False)


@pytest.mark.parametrize(
    "changes, key",
    [
        (dict(env_steps=0), "adaptation.env_steps"),
        (dict(episode_steps=0), "adaptation.episode_steps"),
        (dict(rollout__horizon=0), "adaptation.rollout.horizon"),
        (dict(rollout__every=0), "adaptation.rollout.every"),
        (dict(rollout__starts=0), "adaptation.rollout.starts"),
        (dict(replay__pool_rounds=0), "adaptation.replay.pool_rounds"),
        (dict(sac__warmup_steps=-1), "sac.warmup_steps"),
        (dict(sac__updates_per_step=0), "sac.updates_per_step"),
        (dict(eval_every=-5), "adaptation.eval_every"),
        (dict(eval_episodes=0), "adaptation.eval_episodes"),
        (dict(replay__real_ratio=0.0), "adaptation.replay.real_ratio"),
        (dict(replay__real_ratio=1.5), "adaptation.replay.real_ratio"),
        (dict(history_length=30), "adaptation.history_length"),
        (dict(rollout__samples=0), "adaptation.rollout.samples"),
        (dict(rollout__uncertainty="ensemble"), "adaptation.rollout.uncertainty"),
        (dict(rollout__uncertainty_threshold=-1.0), "adaptation.rollout.uncertainty_threshold"),
        (dict(rollout__imagination="zero"), "adaptation.rollout.imagination"),
        (dict(error_windows=0), "adaptation.error_windows"),
        (dict(safeguard__reward_tolerance=0.5), "adaptation.safeguard.reward_tolerance"),
        (dict(safeguard__memory=1.0), "adaptation.safeguard.memory"),
        (dict(safeguard__memory=-0.1), "adaptation.safeguard.memory"),
        (dict(fine_tune__lr=0.0), "adaptation.fine_tune.lr"),
        (dict(fine_tune__newest=-1), "adaptation.fine_tune.newest"),
        (dict(replay__share_cap_low=-0.5), "adaptation.replay.share_cap_low"),
        (dict(replay__share_cap_high=1.0), "adaptation.replay.share_cap_high"),
    ],
)
def test_bad_adaptation_settings_name_their_key(changes, key):
    with pytest.raises(ValueError, match=key):
        tiny_config(**changes)


# --- the model pool feeds SAC ------------------------------------------------------------


def expected_rounds(config: AdaptationConfig) -> int:
    """Rollout rounds: at the first learning step, then every `rollout_every` real steps."""
    return len(range(config.sac.warmup_steps + 1, config.env_steps + 1, config.rollout.every))


@pytest.mark.parametrize("use_model", [True, False])
def test_the_model_pool_feeds_sac(monkeypatch, use_model):
    # Every rollout kept (no safeguard, no cut, one sample per start): the pool's mechanics alone.
    config = tiny_config(safeguard__enabled=False, rollout__uncertainty="none", rollout__samples=1, fine_tune__enabled=False)
    rollouts, batches = [], []
    original_imagine, original_update = loop.imagine, SAC.update

    def recording_imagine(*args, **kwargs):
        rollouts.append(original_imagine(*args, **kwargs))
        return rollouts[-1]

    def recording_update(agent, batch):
        batches.append((len(rollouts), {key: value.clone() for key, value in batch.items()}))
        return original_update(agent, batch)

    monkeypatch.setattr(loop, "imagine", recording_imagine)
    monkeypatch.setattr(SAC, "update", recording_update)
    result = adapt(HOPPER, config, tiny_model() if use_model else None, use_model=use_model, seed=1, progress=False)

    assert len(batches) == (config.env_steps - config.sac.warmup_steps) * config.sac.updates_per_step
    if not use_model:
        assert result.imagined == 0 and rollouts == []
        return
    n_rounds = expected_rounds(config)
    assert n_rounds == 4
    assert len(rollouts) == n_rounds
    assert result.imagined == n_rounds * config.rollout.starts * config.rollout.horizon
    # Every SAC batch after the first round is imagined but for ceil(real_ratio · batch) real rows;
    # imagined next observations are decoded ones, which no real transition has.
    imagined = {row.numpy().tobytes() for out in rollouts for row in out["next_obs"]}
    n_real = math.ceil(config.replay.real_ratio * config.sac.batch_size)
    for after_rounds, batch in batches:
        from_model = sum(row.numpy().tobytes() in imagined for row in batch["next_obs"])
        assert from_model == (config.sac.batch_size - n_real if after_rounds else 0)
    shares = [value for _, value in result.metrics["charts/imagined_share"]]
    assert shares[-1] == pytest.approx(1 - n_real / config.sac.batch_size)


# --- uncertainty and the safeguard ---------------------------------------------------------


def test_samples_of_one_start_share_actions_and_disagree_by_the_models_sampling():
    model = tiny_model()
    batch = hopper_history().batch(3, 6, TINY.context_length, np.random.default_rng(0), domain=0, obs_max=17, act_max=6)
    out = imagine(model.world_model, batch, lambda obs: torch.tanh(obs[:, :4]), 2, 15, 4, samples=5)
    assert out["obs"].shape == (3 * 5 * 2, 15)
    action = out["action"].view(3, 5, 2, 4)
    torch.testing.assert_close(action, action[:, :1].expand_as(action), rtol=0, atol=0)  # the first copy's
    next_obs = out["next_obs"].view(3, 5, 2, 15)
    assert not torch.allclose(next_obs[:, 0], next_obs[:, 1])  # the copies sample their own latents
    disagreement = out["disagreement"].view(3, 5, 2)
    assert (disagreement > 0).all() and (disagreement == disagreement[:, :1]).all()  # one value per start and step
    assert out["step"].view(3, 5, 2).tolist() == [[[0, 1]] * 5] * 3


def rollouts_with(disagreement: list[list[float]]) -> dict[str, torch.Tensor]:
    """`imagine`-shaped transitions of len(disagreement) rollouts with the given disagreement per step."""
    d = torch.tensor(disagreement).view(-1)
    n = len(d)
    return {"obs": torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3), "action": torch.zeros(n, 2),
            "reward": torch.ones(n), "next_obs": torch.zeros(n, 3), "done": torch.zeros(n), "disagreement": d}


def test_truncation_keeps_each_rollout_up_to_its_first_uncertain_step():
    rollouts = rollouts_with([[0.1, 0.7, 0.1], [0.1, 0.2, 0.3], [0.9, 0.1, 0.1]])
    kept = rounds.imagined_transitions(rollouts, tiny_config(rollout__uncertainty="truncate", rollout__uncertainty_threshold=0.5).rollout, 3)
    assert kept["obs"][:, 0].tolist() == [0, 3, 4, 5]  # rollout 0 until its step 1, all of 1, none of 2
    penalised = rounds.imagined_transitions(rollouts, tiny_config(rollout__uncertainty="penalty", rollout__uncertainty_penalty=2.0).rollout, 3)
    np.testing.assert_allclose(penalised["reward"], 1 - 2 * rollouts["disagreement"].numpy(), rtol=1e-6)
    assert len(rounds.imagined_transitions(rollouts, tiny_config(rollout__uncertainty="none").rollout, 3)["reward"]) == 9


def test_the_safeguard_trusts_the_horizons_where_the_model_beats_the_naive_forecast(monkeypatch):
    # The model is better than naive at h = 1, 2 and worse on the reward at h = 3: two steps are trusted.
    errors = {"model_obs": torch.tensor([0.1, 0.2, 0.3, 0.1, 0.1]), "naive_obs": torch.ones(5),
              "model_reward": torch.tensor([0.1, 0.1, 2.0, 0.1, 0.1]), "naive_reward": torch.ones(5)}
    monkeypatch.setattr(rounds, "open_loop_errors", lambda *args: errors)
    horizons = []
    original_imagine = loop.imagine

    def recording_imagine(world_model, batch, policy, horizon, *args):
        horizons.append(horizon)
        return original_imagine(world_model, batch, policy, horizon, *args)

    monkeypatch.setattr(loop, "imagine", recording_imagine)
    config = tiny_config(rollout__horizon=5, rollout__uncertainty="none")
    result = adapt(HOPPER, config, tiny_model(), use_model=True, seed=0, progress=False)
    assert horizons == [2] * expected_rounds(config)
    assert result.imagined == expected_rounds(config) * config.rollout.starts * config.rollout.samples * 2
    assert {value for _, value in result.metrics["charts/trusted_horizon"]} == {2.0}


@pytest.mark.parametrize(("tolerance", "trusted"), [(1.0, 0), (1.9, 2), (3.0, 5)])
def test_the_safeguards_reward_tolerance(monkeypatch, tolerance, trusted):
    # Observations beat naive everywhere; the reward error is 1.5, 1.5, 2.0, 1.5, 1.5 × naive's.
    errors = {"model_obs": torch.full((5,), 0.5), "naive_obs": torch.ones(5),
              "model_reward": torch.tensor([1.5, 1.5, 2.0, 1.5, 1.5]), "naive_reward": torch.ones(5)}
    monkeypatch.setattr(rounds, "open_loop_errors", lambda *args: errors)
    config = tiny_config(rollout__horizon=5, safeguard__reward_tolerance=tolerance)
    result = adapt(HOPPER, config, tiny_model(), use_model=True, seed=0, progress=False)
    assert {value for _, value in result.metrics["charts/trusted_horizon"]} == {float(trusted)}
    assert (result.imagined > 0) == (trusted > 0)


@pytest.mark.parametrize(("memory", "trusted"), [(0.0, [5, 0] * 5), (0.5, [5] * 10)])
def test_the_safeguards_memory_keeps_a_noisy_measure_from_flapping(monkeypatch, memory, trusted):
    # Rounds alternate between a reward error of 0.6 and 1.1 × naive's: judged alone, every second
    # round is refused; averaged over rounds (0.6, 0.85, 0.73, ...), the model stays below naive.
    calls = []

    def alternating(*args):
        calls.append(None)
        ratio = 0.6 if len(calls) % 2 else 1.1
        return {"model_obs": torch.full((5,), 0.5), "naive_obs": torch.ones(5),
                "model_reward": torch.full((5,), ratio), "naive_reward": torch.ones(5)}

    monkeypatch.setattr(rounds, "open_loop_errors", alternating)
    config = tiny_config(env_steps=120, rollout__horizon=5, safeguard__memory=memory)
    result = adapt(HOPPER, config, tiny_model(), use_model=True, seed=0, progress=False)
    assert [value for _, value in result.metrics["charts/trusted_horizon"]] == [float(t) for t in trusted]
    ratios = [value for _, value in result.metrics["charts/safeguard_reward_ratio"]]
    assert ratios[:3] == pytest.approx([0.6, 1.1, 0.6] if memory == 0 else [0.6, 0.85, 0.725])


CHEETAH = ScenarioSpec("cheetah", target_speed=0.1, seed=3)


def test_the_safeguard_makes_a_broken_model_plain_sac():
    """A model with random weights predicts worse than repeating the last observation: the
    safeguard trusts it nowhere, the agent learns from real data alone, and adaptation is plain
    SAC's, step for step (same seed, same draws), not worse by any noise at all."""
    config = tiny_config(env_steps=120, sac__warmup_steps=40)
    for seed in (0, 1):
        model = adapt(CHEETAH, config, tiny_model(), use_model=True, seed=seed, progress=False)
        sac = adapt(CHEETAH, config, None, use_model=False, seed=seed, progress=False)
        assert [value for _, value in model.metrics["charts/trusted_horizon"]] == [0.0] * expected_rounds(config)
        assert model.imagined == 0
        assert all(value == 0 for _, value in model.metrics["charts/imagined_share"])
        assert model.eval_scores == sac.eval_scores
        assert changed(snapshot(sac.agent), model.agent.state_dict()) == []
    # Without the safeguard the same broken model feeds the agent, which then learns otherwise.
    unguarded = adapt(CHEETAH, config.replace(**{"safeguard.enabled": False}), tiny_model(), use_model=True, seed=1,
                      progress=False)
    assert unguarded.imagined > 0 and changed(snapshot(sac.agent), unguarded.agent.state_dict()) != []


def test_observation_errors_are_measured_in_each_dims_own_one_step_change():
    g = torch.Generator().manual_seed(0)
    # Two dims: a velocity that changes by ~5 per step and an angle that changes by ~0.01.
    last = torch.randn(64, 1, 2, generator=g)
    change = torch.randn(64, 3, 2, generator=g) * torch.tensor([5.0, 0.01])
    real = last + change.cumsum(1)
    mask = torch.ones(64, 2)
    model, naive = per_dim_relative_errors(real.clone(), real, last, mask)
    assert torch.all(model == 0) and naive[0].item() == pytest.approx(1.0)
    # Off by 1 on the velocity (5x better than naive there) and by 0.1 on the angle (10x its change):
    # a plain MSE over dims calls this model better than naive; in each dim's own units it is not.
    off = real + torch.tensor([1.0, 0.1])
    assert ((off - real) ** 2).mean() < ((last - real[:, :1]) ** 2).mean()
    model, naive = per_dim_relative_errors(off, real, last, mask)
    assert model[0] > 10 * naive[0]
    # Padding dims (mask 0) do not count.
    padded = per_dim_relative_errors(torch.nn.functional.pad(off, (0, 1), value=9.0), torch.nn.functional.pad(real, (0, 1)),
                                     torch.nn.functional.pad(last, (0, 1)), torch.nn.functional.pad(mask, (0, 1)))
    torch.testing.assert_close(padded[0], model)


@pytest.mark.parametrize("anchor", [(False, False), (True, False), (False, True)])
def test_the_safeguard_measures_the_rollouts_the_agent_gets(monkeypatch, anchor):
    calls = []
    original_imagine, original_errors = loop.imagine, rounds.open_loop_errors

    def recording_imagine(*args):
        calls.append(("imagine", args[-4:-1]))  # (anchor, anchor_reward, imagination); the last is the start
        return original_imagine(*args)

    def recording_errors(*args):
        calls.append(("measure", args[-3:]))
        return original_errors(*args)

    monkeypatch.setattr(loop, "imagine", recording_imagine)
    monkeypatch.setattr(rounds, "open_loop_errors", recording_errors)
    # Safeguard off: the model's errors are measured at each evaluation, with what the agent gets.
    config = tiny_config(rollout__anchor_observations=anchor[0], rollout__anchor_rewards=anchor[1], rollout__imagination="naive_reward",
                         safeguard__enabled=False, eval_every=20)
    adapt(HOPPER, config, tiny_model(), use_model=True, seed=0, progress=False)
    assert {kind for kind, _ in calls} == {"imagine", "measure"}
    assert all(value == anchor + ("naive_reward",) for _, value in calls)


def test_the_model_error_curve_is_measured_where_the_policy_goes(monkeypatch):
    """At each evaluation the model's open-loop errors on windows among the newest `eval_every` real
    transitions are logged (`charts/model_error/...`), the values `open_loop_errors` gives on them;
    other data (another seed's policy) give another curve; measuring leaves the run unchanged."""
    measured, newest = [], []
    original_errors, original_batch = rounds.open_loop_errors, RealHistory.model_batch

    def recording_errors(world_model, batch, *args):
        measured.append(original_errors(world_model, batch, *args))
        return measured[-1]

    def recording_batch(self, *args, **kwargs):
        newest.append(kwargs.get("newest"))
        return original_batch(self, *args, **kwargs)

    config = tiny_config(safeguard__enabled=False, eval_every=20)
    plain = adapt(HOPPER, config, tiny_model(), use_model=True, seed=0, progress=False)
    monkeypatch.setattr(rounds, "open_loop_errors", recording_errors)
    monkeypatch.setattr(RealHistory, "model_batch", recording_batch)
    result = adapt(HOPPER, config, tiny_model(), use_model=True, seed=0, progress=False)
    points = result.metrics["charts/model_error/obs_h1"]
    assert [step for step, _ in points] == [20, 40, 60] and newest.count(20) == 3 and len(measured) == 3
    assert [value for _, value in points] == pytest.approx([errors["model_obs"][0].item() for errors in measured])
    ratio = [value for _, value in result.metrics["charts/model_error/reward_h1_over_naive"]]
    assert all(math.isfinite(value) for value in ratio)
    assert result.eval_scores == plain.eval_scores  # the measurement has its own draws
    other = adapt(HOPPER, config, tiny_model(), use_model=True, seed=1, progress=False)
    assert [v for _, v in other.metrics["charts/model_error/obs_h1"]] != [v for _, v in points]


def test_model_updates_are_made_only_while_the_pool_holds_trusted_transitions(monkeypatch):
    updates = []
    original_update = SAC.update

    def counting_update(agent, batch):
        updates.append(len(batch["reward"]))
        return original_update(agent, batch)

    monkeypatch.setattr(SAC, "update", counting_update)
    learning_steps = TINY_ADAPT.env_steps - TINY_ADAPT.sac.warmup_steps
    # Unguarded, the first round fills the pool before the first update: every step makes 1 + 2.
    unguarded = tiny_config(safeguard__enabled=False, rollout__uncertainty="none", fine_tune__enabled=False, replay__model_updates_per_step=2)
    adapt(CHEETAH, unguarded, tiny_model(), use_model=True, seed=0, progress=False)
    assert len(updates) == learning_steps * 3
    # A broken model is trusted nowhere: its pool stays empty and the extra updates never happen.
    updates.clear()
    model = adapt(CHEETAH, tiny_config(replay__model_updates_per_step=2), tiny_model(), use_model=True, seed=0, progress=False)
    assert model.imagined == 0 and len(updates) == learning_steps


def test_the_safeguard_measures_windows_ending_among_the_newest_transitions():
    history = hopper_history(episodes=3, steps=30)
    windows = history.windows(50, 6, prompt_length=4, rng=np.random.default_rng(0), newest=10)
    last = history.episodes[-1]["obs"]
    # Every window ends within the last 10 transitions of the last episode.
    for obs in windows["obs"]:
        end = next(s for s in range(len(last) - 6) if (last[s : s + 7] == obs).all()) + 6
        assert end >= 30 - 10 + 1
    model = tiny_model()
    batch = history.batch(8, 6 + 3, TINY.context_length, np.random.default_rng(0), domain=0, obs_max=17, act_max=6, newest=10)
    errors = open_loop_errors(model.world_model, batch, 3)
    assert all(value.shape == (3,) and torch.isfinite(value).all() for value in errors.values())


# --- guards against late collapse (issue 34) --------------------------------------------

# The model feeds the agent (no safeguard), one extra update per step while it does.
FED = dict(safeguard__enabled=False, replay__model_updates_per_step=1, eval_every=20)


def run_record(config: AdaptationConfig, module=None, seed: int = 1):
    result = adapt(CHEETAH, config, module, use_model=module is not None, seed=seed, progress=False)
    return result, {key: value for key, value in result.metrics.items() if key != "charts/share_cap"}


def test_the_guards_are_off_by_default_and_off_leaves_the_run_as_it_was():
    assert AdaptationConfig().replay.share_cap is False and AdaptationConfig().fine_tune.newest == 0
    plain, plain_metrics = run_record(tiny_config(**FED), tiny_model())
    assert plain.imagined > 0 and "charts/share_cap" not in plain.metrics
    # Present but off: the same run, step for step.
    off, off_metrics = run_record(tiny_config(**FED, replay__share_cap=False, replay__share_cap_low=0.1,
                                              replay__share_cap_high=0.2, fine_tune__newest=0), tiny_model())
    # On, with a band no model reaches (the whole share everywhere): measuring changes no draw of the run.
    wide, wide_metrics = run_record(tiny_config(**FED, replay__share_cap=True, replay__share_cap_low=1e6,
                                                replay__share_cap_high=2e6), tiny_model())
    assert {value for _, value in wide.metrics["charts/share_cap"]} == {1 - TINY_ADAPT.replay.real_ratio}
    for other, metrics in ((off, off_metrics), (wide, wide_metrics)):
        assert other.eval_scores == plain.eval_scores and metrics == plain_metrics
        assert changed(snapshot(plain.agent), other.agent.state_dict()) == []


def test_the_share_cap_keeps_a_broken_models_rows_out_of_sacs_batches():
    """A model with random weights predicts worse than twice the naive forecast's error: capped, its
    rows still enter the pool but no SAC batch takes them and the extra updates stop, so the agent
    learns as plain SAC does, step for step; uncapped, the same model feeds it."""
    config = tiny_config(**FED)
    uncapped, _ = run_record(config, tiny_model())
    capped, _ = run_record(config.replace(**{"replay.share_cap": True}), tiny_model())
    sac, _ = run_record(config)
    assert min(value for _, value in capped.metrics["charts/model_error/obs_h1"]) > 2.0  # above share_cap_high
    assert {value for _, value in capped.metrics["charts/share_cap"]} == {0.0}
    assert max(value for _, value in uncapped.metrics["charts/imagined_share"]) == 1 - config.replay.real_ratio
    assert capped.imagined > 0 and all(value == 0 for _, value in capped.metrics["charts/imagined_share"])
    assert capped.eval_scores == sac.eval_scores and changed(snapshot(sac.agent), capped.agent.state_dict()) == []
    assert changed(snapshot(sac.agent), uncapped.agent.state_dict()) != []


def test_the_share_cap_scales_the_imagined_share_between_its_bounds(monkeypatch):
    # A one-step error of 1.5 × naive's, halfway between 1 and 2: half of the share of 1 − 0.5.
    errors = {"model_obs": torch.full((2,), 1.5), "naive_obs": torch.ones(2),
              "model_reward": torch.ones(2), "naive_reward": torch.ones(2)}
    monkeypatch.setattr(rounds, "open_loop_errors", lambda *args: errors)
    result, _ = run_record(tiny_config(**FED, replay__share_cap=True), tiny_model())
    assert {value for _, value in result.metrics["charts/share_cap"]} == {0.25}
    n_real = math.ceil(0.75 * TINY_SAC.batch_size)
    assert {value for _, value in result.metrics["charts/imagined_share"]} == {1 - n_real / TINY_SAC.batch_size}


def test_fine_tuning_on_the_newest_transitions_draws_its_windows_there(monkeypatch):
    history = hopper_history(episodes=3, steps=30)
    newest = {row.tobytes() for row in history.episodes[-1]["obs"][-10:]}  # what the last 10 transitions end in
    seen = []
    monkeypatch.setattr(rounds, "train_steps", lambda module, batches, optimizer: seen.extend(batches) or [])
    model = tiny_model()
    for setting in (10, 0):
        seen.clear()
        rounds.fine_tune(model, history, FineTuneSettings(steps=3, batch=16, newest=setting), 6, 0, None,
                         np.random.default_rng(0), "cpu")
        ends = [row[:15].numpy().tobytes() in newest for batch in seen for row in batch["obs"][:, -1]]
        assert len(ends) == 48 and (all(ends) if setting else not all(ends))
    # The loop hands its setting to fine-tuning: the model it adapts ends elsewhere.
    calls = []
    original_batch = RealHistory.model_batch

    def recording_batch(self, module, domain, count, *args, **kwargs):
        calls.append((count, kwargs.get("newest")))
        return original_batch(self, module, domain, count, *args, **kwargs)

    monkeypatch.undo()
    monkeypatch.setattr(RealHistory, "model_batch", recording_batch)
    config = tiny_config(**FED, fine_tune__newest=7)
    after_newest, after_all = tiny_model(), tiny_model()
    adapt(CHEETAH, config, after_newest, use_model=True, seed=1, progress=False)
    assert (config.fine_tune.batch, 7) in calls
    assert all(newest in (7, None, 20) for _, newest in calls)  # fine-tuning, rollout starts, the error curve
    adapt(CHEETAH, tiny_config(**FED), after_all, use_model=True, seed=1, progress=False)
    assert changed(snapshot(after_all), after_newest.state_dict()) != []


# --- logged metrics ----------------------------------------------------------------------

LOGGED = ("losses/qf_loss", "losses/actor_loss", "losses/alpha", "charts/q_mean", "losses/model_fine_tune",
          "charts/imagined_share", "charts/model_error/obs_h1", "charts/model_error/reward_h1_over_naive", "charts/score")


def test_adaptation_logs_sac_model_and_score_metrics():
    config = tiny_config(eval_every=20)
    result = adapt(HOPPER, config, tiny_model(), use_model=True, seed=0, progress=False)
    for name in LOGGED:
        points = result.metrics[name]
        assert points and all(math.isfinite(value) for _, value in points), name
    assert result.metrics["charts/score"] == list(zip(result.eval_steps, result.eval_scores))
    assert result.eval_steps == [20, 40, 60]
    sac = adapt(HOPPER, config, None, use_model=False, seed=0, progress=False)
    assert "losses/qf_loss" in sac.metrics and "losses/model_fine_tune" not in sac.metrics
    assert "charts/real_reward" in sac.metrics and "charts/imagined_reward" not in sac.metrics
    # The model's optimism: the mean imagined reward beside the real one, while it feeds the agent.
    unguarded = adapt(HOPPER, tiny_config(safeguard__enabled=False), tiny_model(), use_model=True, seed=0, progress=False)
    assert all(math.isfinite(value) for _, value in unguarded.metrics["charts/imagined_reward"])


def test_the_callback_and_mrcom_adapt_share_their_defaults():
    import inspect

    from mrcom_lightning.adaptation.cli import adapt_parser
    from mrcom_lightning.callbacks import ScenarioAdaptation

    callback_default = inspect.signature(ScenarioAdaptation).parameters["adaptation"].default
    assert callback_default == AdaptationConfig()
    parser = adapt_parser()
    parsed = parser.instantiate(parser.parse_args(["--ckpt_path", "x.ckpt"]))
    assert parsed.adaptation == AdaptationConfig()


# --- target names ------------------------------------------------------------------------


def test_resolve_targets_names_one_scenario_per_domain():
    scenarios = MetaScenarioSet(domains=("hopper", "walker", "cheetah"), num_test_ood=2)
    targets = resolve_targets(scenarios, ["test_ood/*/0"])
    assert list(targets) == ["test_ood/hopper-0", "test_ood/walker-0", "test_ood/cheetah-0"]
    drawn = scenarios.draw("test_ood")
    for domain in ("hopper", "walker", "cheetah"):
        assert targets[f"test_ood/{domain}-0"] == [s for s in drawn if s.domain == domain][0]
    second = resolve_targets(scenarios, ["test_ood/walker/1", "val/cheetah/0"])
    assert second == {
        "test_ood/walker-1": [s for s in drawn if s.domain == "walker"][1],
        "val/cheetah-0": [s for s in scenarios.draw("val") if s.domain == "cheetah"][0],
    }


@pytest.mark.parametrize(
    "selector, message",
    [
        ("test_ood/hopper", "SPLIT/DOMAIN/INDEX"),
        ("test_ood/hopper/0/1", "SPLIT/DOMAIN/INDEX"),
        ("holdout/hopper/0", "SPLIT/DOMAIN/INDEX"),
        ("test_ood/walker/0", "'walker' is not one of"),
        ("test_ood/dog/0", "'dog' is not one of"),
        ("test_ood/hopper/2", r"index must be in 0\.\.1"),
        ("test_ood/hopper/-1", r"index must be in 0\.\.1"),
        ("test_ood/*/x", r"index must be in 0\.\.1"),
    ],
)
def test_resolve_targets_rejects_bad_selectors(selector, message):
    scenarios = MetaScenarioSet(domains=("hopper", "cheetah"), num_test_ood=2)
    with pytest.raises(ValueError, match=message):
        resolve_targets(scenarios, [selector])


# --- every adaptation starts from the same weights -----------------------------------------


def mutating_adapt(starts: list):
    """A stand-in for `adapt` that records the weights it is given, then fine-tunes them (a change)."""

    def fake(target, config, module=None, use_model=True, seed=0, progress=True, device="cpu", on_progress=None):
        if use_model:
            starts.append(snapshot(module))
            with torch.no_grad():
                for parameter in module.parameters():
                    parameter.add_(1.0)
        return loop.AdaptationResult(target, use_model, loop.method_name(config, use_model), 1.0, [config.env_steps], [1.0], 0, 0.0, None)

    return fake


def test_callback_adapts_every_target_from_the_models_own_weights(monkeypatch):
    from mrcom_lightning.adaptation import parallel
    from mrcom_lightning.callbacks import ScenarioAdaptation

    starts = []
    monkeypatch.setattr(parallel, "adapt", mutating_adapt(starts))  # the runs in this process: workers=1
    model = tiny_model()
    before = snapshot(model)
    logged = []
    scenarios = MetaScenarioSet(domains=("hopper", "cheetah"), num_val=1)
    trainer = types.SimpleNamespace(
        datamodule=types.SimpleNamespace(hparams=types.SimpleNamespace(dataset=types.SimpleNamespace(scenarios=scenarios))),
        loggers=[types.SimpleNamespace(log_metrics=lambda metrics, step: logged.append((metrics, step)))],
        global_step=7,
    )
    callback = ScenarioAdaptation(targets=["val/*/0"], adaptation=tiny_config(fine_tune__enabled=True), workers=1)
    metrics = callback._run(trainer, model, callback.targets, baseline=False)

    summary = {"score": 1.0, "real_steps": 60.0, "imagined_share": 0.0}
    assert metrics == {f"adapt/val/{d}-0/{k}": v for d in ("hopper", "cheetah") for k, v in summary.items()}
    assert logged == [(metrics | {"adapt/seconds": logged[0][0]["adapt/seconds"]}, 7)]
    assert len(starts) == 2 and all(changed(before, start) == [] for start in starts)
    assert changed(before, model.state_dict()) == []  # training never sees the adaptation


def test_the_loop_has_droq_critics_and_every_plain_sac_run_plain_ones(monkeypatch):
    """The loop's default critics are DroQ's (the guard benchmarks/adapt_guards.py chose); plain SAC,
    as the `--baseline` of `mrcom adapt` and the callback (`adapt_all`) and as the `sac`/`sac_utd`
    controls, gets plain critics, and the `droq` and `null` controls keep DroQ's."""
    from mrcom_lightning.adaptation import controls, parallel

    default = AdaptationConfig()
    assert (default.sac.critic_dropout, default.sac.critic_layer_norm) == (0.01, True)
    for name in ("sac", "sac_utd"):
        sac = controls.control_config(name, default)[1].sac
        assert (sac.critic_dropout, sac.critic_layer_norm) == (0.0, False), name
    for name in ("droq", "null"):
        sac = controls.control_config(name, default)[1].sac
        assert (sac.critic_dropout, sac.critic_layer_norm) == (0.01, True), name
    seen = {}

    def fake(target, config, module, use_model, seed, **kwargs):
        seen[use_model] = config.sac
        return loop.AdaptationResult(target, use_model, loop.method_name(config, use_model), 1.0, [1], [1.0], 0, 0.0, None)

    monkeypatch.setattr(parallel, "adapt", fake)
    spec = MetaScenarioSet(domains=("cheetah",), num_val=1).draw("val")[0]
    runs = [parallel.AdaptationRun("val/cheetah/0", spec, use_model, 0) for use_model in (True, False)]
    parallel.adapt_all(runs, default, tiny_model(), workers=1, progress=False)
    assert seen[True].critic_layer_norm and seen[True].critic_dropout == 0.01
    assert not seen[False].critic_layer_norm and seen[False].critic_dropout == 0.0


# --- inside `fit`, and `mrcom adapt` -------------------------------------------------------

# Two model rounds (real steps 51 and 76) and one evaluation: every stage of the loop, in seconds.
TINY_ADAPT_ARGS = {
    "env_steps": 100,
    "sac.warmup_steps": 50,
    "episode_steps": 25,
    "rollout.every": 25,
    "rollout.starts": 10,
    "fine_tune.steps": 4,
    "eval_episodes": 1,
    "sac.updates_per_step": 1,
    "history_length": 8,
    "sac.hidden_dim": 64,
    "sac.batch_size": 64,
}


def mrcom(cwd: Path, *args) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "mrcom_lightning.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, f"mrcom exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result


def mlflow_client(cwd: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlruns.db'}")


@pytest.fixture(scope="module")
def fit_with_adaptation(tmp_path_factory) -> Path:
    """`mrcom fit --config configs/quick.yaml` with the adaptation callback at a tiny budget."""
    cwd = tmp_path_factory.mktemp("adapt-fit")
    overrides = [item for key, value in TINY_ADAPT_ARGS.items() for item in (f"--trainer.callbacks.adaptation.{key}", value)]
    mrcom(cwd, "fit", "--config", QUICK, "--data.dataset.root", cwd / "data", "--trainer.enable_progress_bar", "false",
          "--trainer.callbacks+=mrcom_lightning.callbacks.ScenarioAdaptation", *overrides)
    return cwd


@pytest.mark.slow
def test_fit_logs_adaptation_scores_to_mlflow(fit_with_adaptation):
    client = mlflow_client(fit_with_adaptation)
    experiment = client.get_experiment_by_name(QUICK_CONFIG["trainer"]["logger"]["init_args"]["experiment_name"])
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    trainer = QUICK_CONFIG["trainer"]
    validations = list(range(trainer["val_check_interval"], trainer["max_steps"] + 1, trainer["val_check_interval"]))
    for domain in QUICK_CONFIG["data"]["dataset"]["scenarios"]["domains"]:
        history = client.get_metric_history(runs[0].info.run_id, f"adapt/val/{domain}-0/score")
        assert sorted(m.step for m in history) == validations, domain


@pytest.mark.slow
def test_mrcom_adapt_scores_against_sac_and_logs_runs(fit_with_adaptation):
    cwd = fit_with_adaptation
    overrides = [item for key, value in TINY_ADAPT_ARGS.items() for item in (f"--adaptation.{key}", value)]
    result = mrcom(cwd, "adapt", "--ckpt_path", "runs/quick/checkpoints/best.ckpt", "--target", "[test_ood/hopper/0]",
                   "--progress", "false", *overrides)
    rows = [line.split() for line in result.stdout.strip().splitlines()[-2:]]
    assert [row[:3] for row in rows] == [["test_ood/hopper-0", "mrcom", "0"], ["test_ood/hopper-0", "sac", "0"]]
    printed = {row[1]: float(row[3]) for row in rows}

    client = mlflow_client(cwd)
    runs = client.search_runs([client.get_experiment_by_name("adapt").experiment_id])
    assert sorted(r.data.params["method"] for r in runs) == ["mrcom", "sac"]
    for run in runs:
        assert run.data.params["target"] == "test_ood/hopper-0" and run.data.params["adaptation.env_steps"] == "100"
        history = client.get_metric_history(run.info.run_id, "adapt/test_ood/hopper-0/score")
        assert [m.step for m in history] == [100]
        logged = {"losses/qf_loss", "losses/actor_loss", "losses/alpha", "charts/q_mean", "charts/imagined_share"}
        if run.data.params["method"] == "mrcom":
            logged |= {"losses/model_fine_tune", "charts/model_error/obs_h1", "charts/model_error/reward_h1"}
        assert logged <= set(run.data.metrics), run.data.params["method"]
        # The printed table and the tracked run report the same evaluation.
        assert history[0].value == pytest.approx(printed[run.data.params["method"]], abs=0.005)


@pytest.mark.slow
def test_mrcom_adapt_starts_every_run_from_the_checkpoint(fit_with_adaptation, monkeypatch):
    from mrcom_lightning.adaptation import cli, parallel

    starts = []
    monkeypatch.setattr(parallel, "adapt", mutating_adapt(starts))
    cwd = fit_with_adaptation
    cli.adapt_main([
        "--ckpt_path", str(cwd / "runs/quick/checkpoints/best.ckpt"), "--target", "[test_ood/hopper/0, test_ood/walker/0]",
        "--seeds", "[0, 1]", "--baseline", "false", "--adaptation.fine_tune.enabled", "true", "--progress", "false",
        "--tracking_uri", f"sqlite:///{cwd / 'mutating.db'}", "--workers", "1",
    ])
    assert len(starts) == 4
    assert all(changed(starts[0], start) == [] for start in starts[1:])


# --- adaptation learns -------------------------------------------------------------------

# Cheetah at a tenth of its top speed (1 m/s), 200-step episodes. Measured on a busy 2-core CPU
# (~70 s): MrCoM scored 36.6 and 24.1 (seeds 0, 1) where random actions score 4.4 and 3.7; with
# another data and model seed, 19.1 and 15.4. A model trained on random-action data alone stays
# below the random policy at this budget: it has never seen the reward of moving forward.
LEARN_TARGET = ScenarioSpec("cheetah", target_speed=0.1, seed=5)
# The loop as it was measured: every rollout kept (no safeguard, no cut, no fine-tuning), 5% real rows.
LEARN = AdaptationConfig(
    env_steps=5000, episode_steps=200, eval_every=0, history_length=8, eval_episodes=3,
    rollout=RolloutSettings(every=100, starts=100, samples=1, uncertainty="none"),
    replay=ReplaySettings(real_ratio=0.05, model_updates_per_step=0),
    fine_tune=FineTuneSettings(enabled=False), safeguard=SafeguardSettings(enabled=False),
    sac=SACConfig(hidden_dim=64, batch_size=128, warmup_steps=200),
)
SMALL = WorldModelConfig(
    embed_dim=64, hidden_dim=128, stochastic_dim=32, deterministic_dim=64, auxiliary_dim=8, context_length=8, heads=4, reward_bins=63
)


def model_trained_on_the_target(data_steps: int = 5000, model_steps: int = 1000) -> MrCoM:
    """A MrCoM trained on the target's own data: the replay of a short SAC run on it (random actions
    first, then ever better ones: the `mix` behaviour of DESIGN.md §3), cut into windows with
    prompts the way adaptation cuts them."""
    from mrcom_lightning.agents import train_sac

    run = train_sac(
        lambda i: make_env(LEARN_TARGET, seed=10_000 + i, episode_steps=LEARN.episode_steps), data_steps,
        dataclasses.replace(LEARN.sac, warmup_steps=1000), seed=123, eval_every=0, eval_episodes=1, progress=False,
    )
    history = RealHistory(17, 6)
    history.episodes = [{key: episode[key] for key in ("obs", "action", "reward")} for episode in run.replay.episodes()]
    torch.manual_seed(0)
    module = MrCoM(world_model=SMALL, domain_dims={"cheetah": (17, 6)}, num_scenarios=1, lr=2e-3)
    optimizer = module.configure_optimizers()
    rng = np.random.default_rng(0)
    for _ in range(model_steps):
        batch = history.batch(32, LEARN.history_length, SMALL.context_length, rng, domain=0, obs_max=17, act_max=6)
        terms, _ = module.losses(batch)
        optimizer.zero_grad()
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 100.0)
        optimizer.step()
    return module.eval()


class RandomPolicy:
    """Uniform random actions, in the agent interface that `evaluate` drives."""

    def __init__(self, act_dim: int, seed: int):
        self.act_dim, self.rng = act_dim, np.random.default_rng(seed)

    def act(self, obs, deterministic: bool = False) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.act_dim).astype(np.float32)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_adaptation_with_a_model_of_the_target_beats_a_random_policy(monkeypatch):
    # One thread, whatever an earlier test in this process set (`--threads auto` sets every core): the
    # run's numbers depend on the reduction order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _beats_a_random_policy(monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _beats_a_random_policy(monkeypatch):
    module = model_trained_on_the_target()
    evaluations = []
    original_evaluate = loop.evaluate

    def recording_evaluate(agent, make_env_fn, episodes, *args, **kwargs):
        evaluations.append((make_env_fn, episodes))
        return original_evaluate(agent, make_env_fn, episodes, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", recording_evaluate)
    for seed in (0, 1):
        evaluations.clear()
        result = adapt(LEARN_TARGET, LEARN, copy.deepcopy(module), use_model=True, seed=seed, progress=False)
        assert result.imagined > 0
        # The random policy plays the very evaluation episodes the adapted agent was scored on.
        (make_env_fn, episodes), = evaluations
        random_score = score_of(original_evaluate(RandomPolicy(6, seed), make_env_fn, episodes), LEARN.episode_steps)
        assert result.score > 2 * random_score, f"seed {seed}: adapted {result.score:.2f}, random {random_score:.2f}"


# --- reports: `mrcom test`, MLflow and `mrcom compare` -------------------------------------


def test_mrcom_test_prints_both_scores_with_the_real_steps(monkeypatch, capsys):
    from mrcom_lightning.adaptation import parallel
    from mrcom_lightning.callbacks import ScenarioAdaptation

    def fake(target, config, module=None, use_model=True, seed=0, progress=True, device="cpu", on_progress=None):
        score = 12.5 if use_model else 10.0
        return loop.AdaptationResult(target, use_model, loop.method_name(config, use_model), score, [config.env_steps], [score], 0, 0.0, None)

    monkeypatch.setattr(parallel, "adapt", fake)
    scenarios = MetaScenarioSet(domains=("hopper",), num_test_id=1)
    trainer = types.SimpleNamespace(
        datamodule=types.SimpleNamespace(hparams=types.SimpleNamespace(dataset=types.SimpleNamespace(scenarios=scenarios))),
        loggers=[], global_step=0, is_global_zero=True,
    )
    callback = ScenarioAdaptation(test_targets=["test_id/hopper/0"], adaptation=tiny_config(), workers=1)
    callback.on_test_end(trainer, tiny_model())
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[-2].split() == ["target", "mrcom", "sac", "real_steps"]
    assert rows[-1].split() == ["test_id/hopper-0", "12.50", "10.00", "60"]


def test_adapt_runs_are_logged_to_mlflow_and_compare_draws_their_curves(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from mrcom_lightning.adaptation.cli import _log
    from mrcom_lightning.compare import compare_main

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    config = tiny_config(eval_every=20)
    for seed in (0, 1):
        for use_model in (True, False):
            result = adapt(HOPPER, config, tiny_model() if use_model else None, use_model, seed, progress=False)
            _log(uri, "adapt", "x.ckpt", "test_id/hopper-0", seed, result, config)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("adapt").experiment_id])
    assert len(runs) == 4
    for run in runs:
        names = set(run.data.metrics)
        assert {"losses/qf_loss", "losses/alpha", "charts/q_mean", "charts/score", "adapt/test_id/hopper-0/score"} <= names
        if run.data.params["method"] == "mrcom":
            assert {"losses/model_fine_tune", "charts/model_error/obs_h1", "charts/imagined_share"} <= names
        assert [m.step for m in client.get_metric_history(run.info.run_id, "charts/score")] == [20, 40, 60]

    out = tmp_path / "comparison"
    compare_main(["--tracking_uri", uri, "--experiment", "[adapt]", "--metric", "adapt/test_id/{domain}/score",
                  "--columns", "params.method", "--curve", "charts/score", "--reference", "sac", "--out", str(out)])
    assert "| hopper-0 |" in capsys.readouterr().out
    assert (out / "curves.png").stat().st_size > 0


# --- `mrcom adapt` from the MLflow store ------------------------------------------------------


@pytest.mark.slow
def test_mrcom_adapt_reads_runs_and_models_uris_and_tags_the_run_it_evaluates(fit_with_adaptation, capsys):
    from mlflow.tracking import MlflowClient

    from mrcom_lightning import tracking
    from mrcom_lightning.adaptation import cli

    cwd = fit_with_adaptation
    uri = f"sqlite:///{cwd / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    (fit,) = client.search_runs([client.get_experiment_by_name(QUICK_CONFIG["trainer"]["logger"]["init_args"]["experiment_name"]).experiment_id])
    fit_id = fit.info.run_id
    client.create_registered_model("quick-mrcom")
    client.create_model_version("quick-mrcom", f"runs:/{fit_id}/checkpoints", run_id=fit_id)
    overrides = [item for key, value in TINY_ADAPT_ARGS.items() for item in (f"--adaptation.{key}", str(value))]
    for ckpt_path in (f"runs:/{fit_id}", "models:/quick-mrcom/1"):
        cli.adapt_main(["--ckpt_path", ckpt_path, "--target", "[test_ood/hopper/0]", "--baseline", "false",
                        "--progress", "false", "--tracking_uri", uri, "--experiment", "adapt-from-store", *overrides])
    assert "Adaptation (" not in capsys.readouterr().out  # --progress false: no bar

    experiment = client.get_experiment_by_name("adapt-from-store")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND  # opens on its runs in the UI
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.data.params["ckpt_path"] for r in runs] == [f"runs:/{fit_id}", "models:/quick-mrcom/1"]
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags[tracking.EVALUATES_TAG] == fit_id
        assert run.data.tags["command"] == "adapt" and "adapt/test_ood/hopper-0/score" in run.data.metrics
    with pytest.raises(SystemExit):  # a run without that artifact: one line naming it
        cli.adapt_main(["--ckpt_path", f"runs:/{fit_id}/checkpoints/missing.ckpt", "--tracking_uri", uri])
    assert f"runs:/{fit_id}/checkpoints/missing.ckpt is not in the MLflow store" in capsys.readouterr().err

"""The baselines (DESIGN.md §4, docs/baselines.md): MAMBA's loss window, encoder and whole-history
start; CaDM's context, forward and backward models and their prediction loss; every baseline's
config fits and adapts through the same commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mrcom_lightning.adaptation import adapt
from mrcom_lightning.batch import pad_batch
from mrcom_lightning.datamodules import meta_episode_batch
from mrcom_lightning.models import WorldModelConfig, loss_window_length
from mrcom_lightning.module import MrCoM
from mrcom_lightning.scenarios import ScenarioSpec
from model_batch import TINY_DIMS, synthetic_batch
from test_adaptation import TINY_ADAPT
from test_cli import mrcom, quick_fit_args

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("rssm", "history_rssm", "cadm", "mamba")
TINY = dict(embed_dim=16, hidden_dim=32, stochastic_dim=8, deterministic_dim=16, context_length=4, reward_bins=31)


def baseline_settings(name: str) -> tuple[dict, dict]:
    """The (world_model, module) settings of configs/baselines/<name>.yaml."""
    model = yaml.safe_load((ROOT / "configs" / "baselines" / f"{name}.yaml").read_text())["model"]
    return model.pop("world_model"), model


def tiny_baseline(name: str, dims=TINY_DIMS, seed: int = 0, **changes) -> MrCoM:
    world_model, module = baseline_settings(name)
    world_model = {**world_model, **TINY, **changes.pop("world_model", {})}
    torch.manual_seed(seed)
    return MrCoM(world_model=WorldModelConfig(**world_model), domain_dims=dims, num_scenarios=3, **{**module, **changes})


# --- MAMBA -------------------------------------------------------------------------------


def test_mamba_loss_window_follows_its_schedule():
    assert loss_window_length(0, 1000, start=50, growth=0.01) == 50
    assert loss_window_length(5000, 1000, start=50, growth=0.01) == 100
    assert loss_window_length(10**6, 1000, start=50, growth=0.01) == 1000  # the whole sequence
    assert loss_window_length(10**6, 1000, start=50, growth=0.01, limit=300) == 300
    model = tiny_baseline("mamba", loss_window_start=4, loss_window_growth=0.5, loss_window_limit=10)
    for step, length in ((0, 4), (6, 7), (100, 10)):
        weights = model.loss_window(step, 5, 13)
        assert weights.shape == (5, 13) and (weights.sum(1) == length).all()
        first = weights.argmax(1)
        assert all(weights[b, first[b] : first[b] + length].all() for b in range(5))  # one contiguous run


def test_mamba_positions_outside_the_window_carry_no_loss():
    model = tiny_baseline("mamba", loss_window_start=5, loss_window_growth=0.0, free_nats=0.0)
    batch = synthetic_batch(steps=12)
    torch.manual_seed(1)
    terms, predictions = model.losses(batch, window_step=0)
    prior_mean = predictions.latents.prior.base_dist.loc
    obs_grad, reward_grad, prior_grad = torch.autograd.grad(
        terms["wm"], [predictions.obs, predictions.reward_logits, prior_mean]
    )
    carries = [g.abs().flatten(2).sum(-1) > 0 for g in (obs_grad, reward_grad, prior_grad)]  # [B, positions]
    obs, reward, prior = carries
    assert (obs.sum(1) == 5).all() and torch.equal(obs, prior)  # the window's 5 latent states, nothing else
    assert torch.equal(reward, obs[:, 1:])  # r_{t−1} is read at s_t
    whole, predictions = model.losses(batch)  # without a step (evaluation, fine-tuning): the whole sequence
    assert torch.autograd.grad(whole["wm"], predictions.obs)[0].abs().flatten(2).sum(-1).gt(0).all()


def posterior_means(model: MrCoM, batch) -> torch.Tensor:
    torch.manual_seed(0)
    return model.world_model.predict(batch).latents.posterior.base_dist.loc.detach()


def test_mamba_encoder_reads_the_previous_reward_and_the_episode_start():
    batch = synthetic_batch(steps=8)
    changed = dict(batch, reward=batch["reward"].clone())
    changed["reward"][:, 3] += 1.0
    mamba, rssm = tiny_baseline("mamba"), tiny_baseline("rssm")
    before, after = posterior_means(mamba, batch), posterior_means(mamba, changed)
    assert torch.equal(before[:, :4], after[:, :4])  # r_3 arrives with o_4
    assert not torch.allclose(before[:, 4], after[:, 4])
    assert torch.equal(posterior_means(rssm, batch), posterior_means(rssm, changed))  # the RSSM's does not
    reset = torch.zeros(batch["reward"].shape[0], 9, dtype=torch.bool)
    reset[:, 5] = True
    flagged = posterior_means(mamba, dict(batch, reset=reset))
    assert torch.equal(before[:, :5], flagged[:, :5]) and not torch.allclose(before[:, 5], flagged[:, 5])


def test_mamba_imagination_starts_from_the_whole_history():
    model = tiny_baseline("mamba").eval()
    rng = np.random.default_rng(0)
    episodes = [
        {"obs": rng.normal(size=(steps + 1, 15)).astype(np.float32), "action": rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
         "reward": rng.uniform(size=steps).astype(np.float32)}
        for steps in (7, 5, 3)
    ]
    batch = meta_episode_batch(episodes, domain=1, obs_max=17, act_max=6)
    assert batch["obs"].shape == (1, 8 + 6 + 4, 17) and batch["action"].shape == (1, 17, 6)
    assert batch["reset"][0].nonzero().flatten().tolist() == [0, 8, 14]
    with torch.no_grad():
        state = model.world_model.start_from_history(batch, [3, 9, 17])
        rollout = model.world_model.rollout(state, torch.zeros(3, 2, 6), 2, torch.ones(3, dtype=torch.long))
    assert state.recurrent.shape == (3, 16) and rollout.next_obs.shape == (3, 2, 17)
    assert torch.equal(state.obs[1, :15], torch.as_tensor(episodes[1]["obs"][1]))  # position 9: episode 2, step 1
    # The latent at a later episode depends on the earlier ones: the state is carried across.
    with torch.no_grad():
        alone = model.world_model.start_from_history(meta_episode_batch(episodes[1:], 1, 17, 6), [1])
    assert not torch.allclose(alone.recurrent[0], state.recurrent[1])


# --- CaDM --------------------------------------------------------------------------------


def test_cadm_backward_model_predicts_o_t_from_the_next_observation_action_and_context():
    model = tiny_baseline("cadm", world_model={"transitions": 3, "prediction_steps": 4})
    batch = synthetic_batch(steps=10)
    obs = batch["obs"].clone().requires_grad_()
    action = batch["action"].clone().requires_grad_()
    dynamics = model.world_model.predict(dict(batch, obs=obs, action=action)).dynamics
    t, m = 5, 4
    assert dynamics.backward.shape == (6, 10 - m + 1, m, 17)
    assert torch.equal(dynamics.backward_target[:, t, 0], model.world_model.normalize_obs(batch["obs"][:, t + m - 1], batch["domain"]))
    obs_grad, action_grad = torch.autograd.grad(dynamics.backward[:, t, 0].sum(), [obs, action], retain_graph=True)
    reads = obs_grad.abs().sum((0, 2)) > 0
    # o_{t+M} is the input; the context holds the transitions ending at o_{t−1}; nothing in between.
    assert reads[t + m] and reads[t - 3 : t].all() and not reads[t : t + m].any() and not reads[t + m + 1 :].any()
    assert action_grad[:, t + m - 1].abs().sum() > 0 and action_grad[:, t - 3 : t - 1].abs().sum() > 0
    assert action_grad[:, t : t + m - 1].abs().sum() == 0
    forward_grad = torch.autograd.grad(dynamics.forward[:, t, 0].sum(), obs)[0].abs().sum((0, 2)) > 0
    assert forward_grad[t] and not forward_grad[t + 1 :].any()  # o_{t+1} from o_t and the past


TOY = {"toy": (3, 2)}


def toy_trajectories(scenario: int, count: int, steps: int, rng) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Two scenarios of different dynamics, o_{t+1} = o_t + 0.3·W a_t + b: opposite W and drifts b
    (as when gravity or a motor's sign differ); reward tanh of the first dim."""
    sign = 1.0 if scenario == 0 else -1.0
    weight = sign * np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -0.8]])
    drift = sign * np.array([0.1, -0.1, 0.05])
    out = []
    for _ in range(count):
        action = rng.uniform(-1, 1, (steps, 2)).astype(np.float32)
        obs = [rng.normal(size=3) * 0.5]
        for a in action:
            obs.append(obs[-1] + 0.3 * weight @ a + drift)
        obs = np.asarray(obs, np.float32)
        out.append((obs, action, np.tanh(obs[1:, 0])))
    return out


def toy_batch(trajectories, labels) -> dict[str, torch.Tensor]:
    count = len(trajectories)
    return pad_batch(
        obs=np.stack([t[0] for t in trajectories]), action=np.stack([t[1] for t in trajectories]),
        reward=np.stack([t[2] for t in trajectories]), domain=np.zeros(count, np.int64),
        scenario=np.asarray(labels), prompt_obs=np.zeros((count, 4, 3), np.float32),
        prompt_action=np.zeros((count, 4, 2), np.float32), prompt_reward=np.zeros((count, 4), np.float32),
        obs_max=3, act_max=2,
    )


def test_cadm_context_separates_two_scenarios_and_its_losses_fall():
    rng = np.random.default_rng(0)
    data = [toy_trajectories(k, 48, 12, rng) for k in (0, 1)]
    train = toy_batch(data[0][:32] + data[1][:32], [0] * 32 + [1] * 32)
    held_out = toy_batch(data[0][32:] + data[1][32:], [0] * 16 + [1] * 16)
    model = tiny_baseline("cadm", dims=TOY, world_model={"transitions": 3, "prediction_steps": 3}, lr=3e-3)
    optimizer = model.configure_optimizers()
    history = []
    for step in range(150):
        rows = torch.as_tensor(np.random.default_rng(step).choice(64, 16, replace=False))
        terms, _ = model.losses({key: value[rows] for key, value in train.items()})
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        history.append((terms["forward"].item(), terms["backward"].item()))
    first, last = np.mean(history[:10], 0), np.mean(history[-10:], 0)
    assert (last < 0.6 * first).all(), (first, last)

    def contexts(batch):  # the context of the last K real transitions, [rows, C]
        with torch.no_grad():
            return model.world_model.predict(batch).rollout_context[:, -1].numpy()

    features = np.concatenate([contexts(train), np.ones((64, 1))], 1)
    probe = np.linalg.lstsq(features, np.repeat([-1.0, 1.0], 32), rcond=None)[0]
    predicted = np.concatenate([contexts(held_out), np.ones((32, 1))], 1) @ probe > 0
    accuracy = (predicted == np.repeat([False, True], 16)).mean()
    assert accuracy >= 0.85, accuracy  # chance is 0.5


# --- every baseline through the same commands ---------------------------------------------


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_takes_the_residual_reward_head(name):
    """`reward_head: residual` in every baseline: the head reads r_{t−1} (MAMBA's loss window keeps
    r_{t−1}'s term at s_t as before), trains on Δ, and imagination hands out rewards from the last
    real one, anchoring adding nothing."""
    model = tiny_baseline(name, world_model={"reward_head": "residual"})
    wm, batch = model.world_model, synthetic_batch(steps=10)
    terms, predictions = model.losses(batch, window_step=0)
    assert torch.equal(predictions.prev_reward[:, 1:], batch["reward"][:, :-1]) and torch.isfinite(terms["total"])
    terms["total"].backward()
    assert wm.reward_head[-1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        state = wm.start(predictions, batch, 6, anchor=True, anchor_reward=True)
        rollout = wm.rollout(state, batch["action"][:, 6:9], 3, batch["domain"])
    assert torch.count_nonzero(state.reward_offset) == 0
    assert ((rollout.reward >= 0) & (rollout.reward <= 1)).all()


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_adapts_a_few_steps(name):
    model = tiny_baseline(name, dims={"hopper": (15, 4), "cheetah": (17, 6)})
    config = TINY_ADAPT.replace(**{"safeguard.enabled": False})  # imagine whatever the tiny model's errors
    result = adapt(ScenarioSpec("hopper", target_speed=0.5, seed=3), config, model.eval(), use_model=True, seed=0, progress=False)
    assert np.isfinite(result.score) and result.imagined > 0


def test_mamba_adapts_from_states_inferred_over_the_whole_real_history(monkeypatch):
    """Adaptation's rollouts of a MAMBA model start at states inferred over every real episode so far
    (`WorldModel.start_from_history`), not at the ends of short windows."""
    model = tiny_baseline("mamba", dims={"hopper": (15, 4), "cheetah": (17, 6)}).eval()
    calls = []
    original = type(model.world_model).start_from_history

    def recording(world_model, batch, positions, *args):
        calls.append((batch["obs"].shape, list(positions)))
        return original(world_model, batch, positions, *args)

    monkeypatch.setattr(type(model.world_model), "start_from_history", recording)
    config = TINY_ADAPT.replace(**{"safeguard.enabled": False, "fine_tune.enabled": False})
    result = adapt(ScenarioSpec("hopper", target_speed=0.5, seed=3), config, model, use_model=True, seed=0, progress=False)
    assert result.imagined > 0 and len(calls) == 4  # one per rollout round
    (rows, length, _), positions = calls[-1]
    # The last round comes at real step 51: 30 + 21 transitions of two episodes, the joining step, and o_0.
    assert rows == 1 and length == 51 + 1 + 1
    assert len(positions) == config.rollout.starts and all(1 <= p < length for p in positions)


@pytest.mark.slow
def test_baselines_fit_through_mrcom_fit(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    tiny = ["--data.dataset.scenarios.domains", "[hopper]", "--data.dataset.episode_steps", "40",
            "--data.dataset.root", str(root / "data"), "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
            "--trainer.limit_val_batches", "1", "--trainer.logger", "false", "--trainer.callbacks", "[]"]
    for name in BASELINES:
        args = quick_fit_args(root / "data", "--config", str(ROOT / "configs" / "baselines" / f"{name}.yaml"), *tiny,
                              "--trainer.default_root_dir", str(root / name))
        mrcom(root, *args).check()
        assert list((root / name).rglob("*.ckpt")), f"{name}: no checkpoint under {root / name}"

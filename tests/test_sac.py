"""Soft Actor-Critic: the critic fits, the policy learns a tiny task, runs are reproducible,
the replay buffer keeps its ring and episodes, and bad options fail with the field's name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrcom_lightning.agents import EVAL_SEED, SAC, ReplayBuffer, SACConfig, evaluate, train_sac

torch.set_num_threads(1)

SMALL = dict(hidden_dim=64, batch_size=64, buffer_size=10_000)


class PointEnv:
    """A point on a line that must reach 0: x += 0.25 a, reward -|x|, 20 steps, x0 ~ U(-1, 1)."""

    obs_dim, act_dim = 1, 1

    def __init__(self, seed: int, steps: int = 20):
        self.rng, self.steps = np.random.default_rng(seed), steps

    def reset(self) -> np.ndarray:
        self.x, self.t = self.rng.uniform(-1, 1), 0
        return np.array([self.x], np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        self.x = float(np.clip(self.x + 0.25 * float(np.asarray(action).reshape(-1)[0]), -2, 2))
        self.t += 1
        return np.array([self.x], np.float32), -abs(self.x), self.t >= self.steps

    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-1, 1, 1).astype(np.float32)


def random_batch(seed: int, n: int = 64, obs_dim: int = 5, act_dim: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(n, obs_dim, generator=g),
        "action": torch.rand(n, act_dim, generator=g) * 2 - 1,
        "reward": torch.randn(n, generator=g),
        "next_obs": torch.randn(n, obs_dim, generator=g),
        "done": torch.zeros(n),
    }


def fill(buffer: ReplayBuffer, n: int, start: int = 0) -> None:
    """Adds `n` single transitions whose every field encodes their number."""
    for i in range(start, start + n):
        obs, next_obs = np.full(buffer.obs_dim, i), np.full(buffer.obs_dim, i + 1)
        buffer.add(obs, np.full(buffer.act_dim, -i), i, next_obs, 0)


def test_critic_loss_falls_on_a_fixed_batch():
    agent = SAC(5, 2, SACConfig(**SMALL, critic_lr=1e-3), seed=0)
    batch = random_batch(0)
    losses = [agent.update_critic(batch)["critic_loss"] for _ in range(200)]
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.5 * first, (first, last)


DROQ = dict(critic_dropout=0.01, critic_layer_norm=True)  # the high-update control of the adaptation benchmark


def test_droq_critics_hold_dropout_and_layer_norm_and_learn():
    agent = SAC(5, 2, SACConfig(**SMALL, **DROQ, critic_lr=1e-3), seed=0)
    for q in (agent.critic.q1, agent.critic.q2, agent.critic_target.q1):
        kinds = [type(layer) for layer in q]
        assert kinds.count(torch.nn.Dropout) == 2 and kinds.count(torch.nn.LayerNorm) == 2, kinds
        assert all(layer.p == 0.01 for layer in q if isinstance(layer, torch.nn.Dropout))
    assert not any(isinstance(layer, (torch.nn.Dropout, torch.nn.LayerNorm)) for layer in agent.actor.net)
    batch = random_batch(0)
    torch.manual_seed(0)  # dropout draws from torch's generator
    losses = [agent.update(batch)["critic_loss"] for _ in range(200)]
    assert np.isfinite(losses).all() and np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_without_its_regularisers_droq_is_plain_sac():
    """Dropout 0 and no LayerNorm: the same networks, losses and actions as plain SAC on a fixed batch;
    with them, other losses (the test can fail)."""
    def losses(**changes) -> list[dict]:
        agent = SAC(5, 2, SACConfig(**SMALL, **changes), seed=0)
        torch.manual_seed(0)
        return [agent.update(random_batch(i)) for i in range(5)]

    assert losses(critic_dropout=0.0, critic_layer_norm=False) == losses()
    assert losses(**DROQ) != losses()


def test_policy_learns_a_tiny_task():
    config = SACConfig(
        **SMALL, warmup_steps=200, discount=0.9, actor_lr=1e-3, critic_lr=1e-3, temperature_lr=1e-3
    )
    untrained = np.mean(evaluate(SAC(1, 1, config, seed=0), PointEnv, 10))
    rng = np.random.default_rng(0)
    random_returns = []
    for j in range(10):
        env, done, total = PointEnv(EVAL_SEED + j), False, 0.0
        env.reset()
        while not done:
            _, reward, done = env.step(env.random_action(rng))
            total += reward
        random_returns.append(total)
    seen = []
    result = train_sac(
        PointEnv, 600, config, seed=0, eval_every=200, eval_episodes=10,
        on_eval=lambda step, ret, agent: seen.append((step, ret)), progress=False,
    )
    assert result.eval_steps == [200, 400, 600] and [s for s, _ in seen] == result.eval_steps
    baseline = max(untrained, np.mean(random_returns))  # both about -8 to -15
    assert result.final_return > baseline + 4, (baseline, result.eval_returns)
    assert result.final_return > -3, result.eval_returns
    assert len(result.episode_returns) == 30 and len(result.replay) == 600


def test_same_seed_same_actions_and_losses():
    def run(seed: int):
        agent = SAC(5, 2, SACConfig(**SMALL), seed=seed)
        obs = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
        actions = [agent.act(obs), agent.act(obs[0]), agent.act(obs, deterministic=True)]
        losses = [agent.update(random_batch(k)) for k in range(3)]
        return actions, losses

    (actions_a, losses_a), (actions_b, losses_b) = run(7), run(7)
    for a, b in zip(actions_a, actions_b):
        np.testing.assert_array_equal(a, b)
    assert losses_a == losses_b
    assert actions_a[0].shape == (4, 2) and actions_a[1].shape == (2,)
    assert np.abs(actions_a[0]).max() <= 1.0
    assert set(losses_a[0]) == {
        "critic_loss", "actor_loss", "temperature_loss", "temperature", "q_mean", "entropy"
    }
    actions_c, _ = run(8)
    assert not np.array_equal(actions_a[0], actions_c[0])


def test_checkpoint_restores_agent_and_optimizers():
    agent = SAC(5, 2, SACConfig(**SMALL), seed=3)
    agent.update(random_batch(0))
    snapshot = agent.checkpoint()
    expected = agent.update(random_batch(1))  # the snapshot must not follow later updates
    restored = SAC.from_checkpoint(snapshot)
    assert restored.update(random_batch(1)) == expected
    obs = np.ones(5, np.float32)
    np.testing.assert_array_equal(
        restored.act(obs, deterministic=True), agent.act(obs, deterministic=True)
    )


def test_policy_checkpoint_acts_like_the_agent_and_holds_only_the_actor():
    agent = SAC(5, 2, SACConfig(**SMALL), seed=3)
    agent.update(random_batch(0))
    policy = agent.policy_checkpoint()
    assert set(policy) == {"obs_dim", "act_dim", "config", "actor"}
    restored = SAC.from_checkpoint(policy)
    obs = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_array_equal(restored.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    fresh = SAC(5, 2, SACConfig(**SMALL), seed=4)
    assert not np.array_equal(fresh.act(obs, deterministic=True), agent.act(obs, deterministic=True))

def test_replay_ring_wraps_and_round_trips():
    buffer = ReplayBuffer(3, 2, capacity=5)
    fill(buffer, 7)
    assert len(buffer) == 5 and buffer.ptr == 2
    order = buffer.chronological()
    np.testing.assert_array_equal(buffer.arrays["reward"][order], [2, 3, 4, 5, 6])
    # A batch add that itself wraps around the end of the ring.
    n = np.arange(7, 11)[:, None]
    obs, action, next_obs = np.repeat(n, 3, 1), np.repeat(-n, 2, 1), np.repeat(n + 1, 3, 1)
    buffer.add(obs, action, n[:, 0], next_obs, np.zeros(4))
    np.testing.assert_array_equal(buffer.arrays["reward"][buffer.chronological()], [6, 7, 8, 9, 10])
    np.testing.assert_array_equal(buffer.arrays["obs"][buffer.chronological(), 0], [6, 7, 8, 9, 10])

    copy = ReplayBuffer(3, 2, capacity=5)
    copy.load_state_dict(buffer.state_dict())
    for key in buffer.arrays:
        np.testing.assert_array_equal(copy.arrays[key], buffer.arrays[key])
    a, b = buffer.sample(8, np.random.default_rng(0)), copy.sample(8, np.random.default_rng(0))
    assert set(a) == {"obs", "action", "reward", "next_obs", "done"}
    assert a["obs"].dtype == torch.float32
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    np.testing.assert_array_equal(a["reward"].numpy(), a["obs"][:, 0].numpy())  # rows stay aligned
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(3, 2, capacity=6).load_state_dict(buffer.state_dict())


def test_replay_recovers_whole_episodes():
    buffer = ReplayBuffer(1, 1, capacity=100)
    for episode, length, finished in [(0, 3, True), (1, 4, True), (2, 2, False)]:
        for t in range(length):
            end = finished and t == length - 1
            buffer.add([t], [0.5], 1.0, [t + 1], False, episode_end=end, episode=episode)
    episodes = list(buffer.episodes())
    assert [e["episode"] for e in episodes] == [0, 1]
    np.testing.assert_array_equal(episodes[1]["obs"][:, 0], [0, 1, 2, 3, 4])
    assert episodes[1]["action"].shape == (4, 1) and not episodes[1]["terminal"].any()

    small = ReplayBuffer(1, 1, capacity=5)  # episode 0 is partly overwritten, so it is dropped
    for episode in range(3):
        for t in range(3):
            small.add([t], [0.0], 0.0, [t + 1], False, episode_end=t == 2, episode=episode)
    assert [e["episode"] for e in small.episodes()] == [2]


@pytest.mark.parametrize(
    "field, value",
    [("discount", 1.5), ("tau", 0.0), ("actor_lr", -1.0), ("batch_size", 0), ("warmup_steps", -1),
     ("init_temperature", 0.0), ("hidden_layers", 0), ("target_entropy", float("nan")), ("critic_dropout", 1.0)],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"sac\.{field} must be .*got {value!r}"):
        SACConfig(**{field: value})


def test_train_sac_runs_on_a_scenario():
    from mrcom_lightning.scenarios import ScenarioSpec, make_env

    spec = ScenarioSpec("cheetah", target_speed=0.5)
    seen = []
    config = SACConfig(**(SMALL | dict(batch_size=16, warmup_steps=30)))
    result = train_sac(
        lambda i: make_env(spec, seed=i, episode_steps=20), 50, config, seed=0,
        eval_every=25, eval_episodes=1, on_eval=lambda *args: seen.append(args), progress=False,
    )
    assert [s for s, _, _ in seen] == [25, 50] and len(result.eval_returns) == 2
    episodes = list(result.replay.episodes())
    assert [e["episode"] for e in episodes] == [0, 1]  # the third, 10 steps in, is unfinished
    assert episodes[0]["obs"].shape == (21, 17) and episodes[0]["action"].shape == (20, 6)

"""Trustworthy imagination: a label-free, causal context that rolls forward with imagined steps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mrcom_lightning.models import WorldModelConfig
from mrcom_lightning.module import MrCoM
from model_batch import TINY_DIMS, synthetic_batch

TINY = WorldModelConfig(
    embed_dim=16, hidden_dim=32, stochastic_dim=8, deterministic_dim=16, auxiliary_dim=4, context_length=4, heads=4, reward_bins=31
)


def make_model(**kwargs) -> MrCoM:
    torch.manual_seed(0)
    return MrCoM(**{"world_model": TINY, "domain_dims": TINY_DIMS, "num_scenarios": 3, **kwargs})


def contexts(model: MrCoM, batch) -> torch.Tensor:
    return model.world_model.predict(batch).context


@pytest.mark.parametrize("k", [0, 3, 7])
def test_a_reward_enters_the_context_only_after_the_step_that_predicts_it(k):
    """s_{k+1} predicts r_k: c_0..c_{k+1} must not depend on r_k; later contexts do."""
    model, batch = make_model(), synthetic_batch()
    base = contexts(model, batch)
    reward = batch["reward"].clone()
    reward[:, k] += 3.0
    changed = contexts(model, dict(batch, reward=reward))
    assert torch.allclose(changed[:, : k + 2], base[:, : k + 2], atol=1e-6)
    assert not torch.allclose(changed[:, k + 2 :], base[:, k + 2 :])


@pytest.mark.parametrize("k", [0, 5])
def test_an_observation_enters_the_context_only_after_its_step(k):
    """s_k reconstructs o_k: c_0..c_k must not depend on o_k."""
    model, batch = make_model(), synthetic_batch()
    base = contexts(model, batch)
    obs = batch["obs"].clone()
    obs[:, k] += 1.0
    changed = contexts(model, dict(batch, obs=obs))
    assert torch.allclose(changed[:, : k + 1], base[:, : k + 1], atol=1e-6)
    assert not torch.allclose(changed[:, k + 1 :], base[:, k + 1 :])


def test_the_context_starts_from_the_prompt():
    model, batch = make_model(), synthetic_batch()
    other_prompt = dict(batch, prompt_obs=batch["prompt_obs"] + 1.0)
    assert not torch.allclose(contexts(model, other_prompt)[:, 0], contexts(model, batch)[:, 0])


@pytest.mark.parametrize("layers", [1, 2])
def test_rolling_the_window_over_real_steps_gives_the_posterior_pass_contexts(layers):
    """The rollout's incremental window (the last `receptive_field` tokens) computes exactly the
    contexts of the full pass when it is fed the real transitions."""
    model = make_model(world_model=dataclasses.replace(TINY, layers=layers))
    wm, batch = model.world_model, synthetic_batch()
    predictions = wm.predict(batch)
    state = wm.start(predictions, batch, 2)
    for t in range(2, 10):
        token = wm.tokens(batch["obs"][:, t : t + 1], batch["action"][:, t : t + 1], batch["reward"][:, t - 1 : t], batch["domain"])
        tokens = torch.cat([state.tokens, token], dim=1)[:, -wm.context_net.receptive_field :]
        state = dataclasses.replace(state, tokens=tokens)
        assert torch.allclose(wm.context_net(tokens)[:, -1], predictions.context[:, t + 1], atol=1e-5), t


def test_the_first_imagined_step_reads_the_real_next_context():
    model, batch = make_model(), synthetic_batch()
    wm = model.world_model
    predictions = wm.predict(batch)
    state = wm.start(predictions, batch, 6)
    next_state, _ = wm.step(state, batch["action"][:, 6], batch["domain"])
    assert torch.allclose(next_state.context, predictions.context[:, 7], atol=1e-5)


def test_imagined_contexts_and_rewards_depend_on_the_imagined_actions():
    model, batch = make_model(), synthetic_batch()
    wm = model.world_model
    with torch.no_grad():
        wm.reward_head[-1].weight.normal_()  # a reward head that reads its input
        predictions = wm.predict(batch)
        start = wm.start(predictions, batch, 6)
        runs = []
        for sign in (1.0, -1.0):
            torch.manual_seed(0)
            actions = sign * torch.ones_like(batch["action"][:, 6:11])
            state, seen, rewards = start, [], []
            for h in range(5):
                state, reward = wm.step(state, actions[:, h], batch["domain"])
                seen.append(state.context)
                rewards.append(reward)
            runs.append((torch.stack(seen, 1), torch.stack(rewards, 1)))
    (c_a, r_a), (c_b, r_b) = runs
    assert not torch.allclose(c_a[:, 1:], c_b[:, 1:]), "the context must take in the imagined actions"
    assert not torch.allclose(r_a, r_b)


def test_a_state_without_its_context_window_keeps_the_start_context():
    """benchmarks/imagination.py's frozen context (`frozen_context`): the start state without its
    tokens steps with c held at the start's value, while the window it would carry rolls c."""
    model, batch = make_model(), synthetic_batch()
    wm = model.world_model
    with torch.no_grad():
        predictions = wm.predict(batch)
        rolling = wm.start(predictions, batch, 6)
        frozen = dataclasses.replace(rolling, tokens=None)
        for h in range(3):
            action = batch["action"][:, 6 + h]
            frozen, _ = wm.step(frozen, action, batch["domain"])
            rolling, _ = wm.step(rolling, action, batch["domain"])
            assert torch.equal(frozen.context, predictions.context[:, 6]) and frozen.tokens is None
        assert not torch.allclose(rolling.context, predictions.context[:, 6])


def action_reward_batch(seed: int, batch: int = 16, steps: int = 12):
    """Synthetic windows whose reward is a function of the action taken: r_t = (1 + a_t[0]) / 2."""
    data = synthetic_batch(batch=batch, steps=steps, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    action = data["action"].clone()
    action[..., 0] = torch.rand(batch, steps, generator=generator) * 2 - 1
    reward = (1 + action[..., 0]) / 2
    prompt_action = data["prompt_action"].clone()
    prompt_action[..., 0] = torch.rand(prompt_action.shape[:2], generator=generator) * 2 - 1
    return dict(data, action=action, reward=reward, prompt_action=prompt_action, prompt_reward=(1 + prompt_action[..., 0]) / 2)


def test_a_briefly_trained_model_imagines_rewards_that_follow_the_imagined_actions():
    # w_mv = 0: at the paper's scale (units of return) L_mv holds this tiny model's latents near
    # the prior for the first few hundred steps, longer than this test trains (issue 24).
    model = make_model(lr=3e-3, w_mv=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        terms, _ = model.losses(action_reward_batch(step))
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
    wm, batch = model.world_model, action_reward_batch(10_000)
    with torch.no_grad():
        start = wm.start(wm.predict(batch), batch, 6)
        imagined = {}
        for value in (1.0, -1.0):
            actions = batch["action"][:, 6:11].clone()
            actions[..., 0] = value
            imagined[value] = wm.rollout(start, actions, 5, batch["domain"]).reward
    high, low = imagined[1.0].mean().item(), imagined[-1.0].mean().item()
    assert high - low > 0.5, f"imagined reward with a[0]=+1: {high:.3f}, with a[0]=-1: {low:.3f} (true: 1 and 0)"


def test_anchored_rollouts_start_from_the_real_observation_whatever_the_decoders_bias():
    """`start(anchor=True)` adds o_t − dec(s_t) to every decoded observation: a decoder that is off
    by a constant gives the same anchored rollout as one that is not."""
    model = make_model(world_model=dataclasses.replace(TINY, obs_normalization="standardize"))  # raw = normalised
    wm, batch = model.world_model, synthetic_batch()

    def rollout(shift: float, anchor: bool):
        with torch.no_grad():
            for net in wm.decoder.nets:
                net[-1].bias += shift
            torch.manual_seed(0)
            state = wm.start(wm.predict(batch), batch, 6, anchor=anchor)
            torch.manual_seed(1)
            out = wm.rollout(state, batch["action"][:, 6:9], 3, batch["domain"])
            for net in wm.decoder.nets:
                net[-1].bias -= shift
        return out, state

    (plain, state), (biased, _) = rollout(0.0, True), rollout(0.5, True)
    torch.testing.assert_close(biased.next_obs, plain.next_obs)
    torch.manual_seed(0)
    reconstruction = wm.decode(wm.predict(batch).latents.features, batch["domain"])[:, 6]
    torch.testing.assert_close(state.offset, batch["obs"][:, 6] - reconstruction)
    unanchored, _ = rollout(0.5, False)
    assert not torch.allclose(unanchored.next_obs, plain.next_obs)


def test_anchored_rewards_are_the_last_real_reward_plus_the_predicted_change(monkeypatch):
    """`start(anchor_reward=True)` adds r_{t−1} − r̂_{t−1} to every predicted reward: a reward head
    that is off by a constant gives the same anchored rewards as one that is not."""
    model = make_model()
    wm, batch = model.world_model, synthetic_batch()
    expectation = wm.twohot.mean

    def rollout(shift: float, anchor_reward: bool):
        monkeypatch.setattr(wm.twohot, "mean", lambda logits: expectation(logits) + shift)
        with torch.no_grad():
            torch.manual_seed(0)
            predictions = wm.predict(batch)
            state = wm.start(predictions, batch, 6, anchor_reward=anchor_reward)
            torch.manual_seed(1)
            out = wm.rollout(state, batch["action"][:, 6:9], 3, batch["domain"])
        return out, state, predictions

    (plain, state, predictions), (biased, _, _) = rollout(0.0, True), rollout(0.5, True)
    torch.testing.assert_close(biased.reward, plain.reward)
    torch.testing.assert_close(state.reward_offset, batch["reward"][:, 5] - predictions.reward[:, 5])
    unanchored, _, _ = rollout(0.0, False)
    # The first imagined step reads the same real context either way (later ones read the anchored rewards).
    torch.testing.assert_close(plain.reward[:, 0], unanchored.reward[:, 0] + state.reward_offset)
    assert not torch.allclose(rollout(0.5, False)[0].reward, plain.reward)
    # At the first real step no reward is known: no offset.
    with torch.no_grad():
        assert torch.count_nonzero(wm.start(predictions, batch, 0, anchor_reward=True).reward_offset) == 0


def test_residual_rewards_roll_from_the_last_real_reward():
    """`reward_head: residual` in imagination: step h reads r̂_{h−1}, the previous step's predicted
    reward (the first, the real last reward), and hands out r̂_h = r̂_{h−1} + E[Δ_h] clipped to
    [0, 1]. `anchor_reward` gives a zero offset there (the head already starts from the real
    reward), and the naive control still repeats the real start's reward."""
    model = make_model(world_model=dataclasses.replace(TINY, reward_head="residual"))
    wm, batch = model.world_model, synthetic_batch()
    seen = []
    wm.reward_head.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], output)))
    with torch.no_grad():
        wm.reward_head[-1].weight.normal_(std=0.3, generator=torch.Generator().manual_seed(5))  # a nonzero change
        predictions = wm.predict(batch)

        def rollout(**start):
            torch.manual_seed(1)
            seen.clear()
            state = wm.start(predictions, batch, 6, **start)
            return wm.rollout(state, batch["action"][:, 6:11], 5, batch["domain"]), state

        plain, state = rollout()
        base = batch["reward"][:, 5]
        assert torch.equal(state.prev_reward, base) and len(seen) == 5
        for h, (inputs, logits) in enumerate(seen):
            assert torch.equal(inputs[:, -1], base), h
            torch.testing.assert_close(plain.reward[:, h], (base + wm.change_twohot.mean(logits)).clamp(0.0, 1.0))
            base = plain.reward[:, h]
        inside = (plain.reward > 0) & (plain.reward < 1)
        assert inside.float().mean() > 0.5 and not torch.allclose(plain.reward[:, 1:], plain.reward[:, :-1])
        anchored, anchored_state = rollout(anchor_reward=True)
        assert torch.count_nonzero(anchored_state.reward_offset) == 0
        torch.testing.assert_close(anchored.reward, plain.reward)
        torch.manual_seed(1)
        naive = wm.rollout(dataclasses.replace(state, naive_reward=True), batch["action"][:, 6:11], 5, batch["domain"])
        assert torch.equal(naive.reward, batch["reward"][:, 5:6].expand(-1, 5))
        # From the first real step no reward is known: the first base is 0, as in training.
        seen.clear()
        wm.step(wm.start(predictions, batch, 0), batch["action"][:, 0], batch["domain"])
        assert torch.count_nonzero(seen[0][0][:, -1]) == 0

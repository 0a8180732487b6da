"""The world model: every loss term learns, gradients go where Eq. 13–16 say, ablations remove parts."""

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


def parameter_names(model: MrCoM) -> set[str]:
    return {name for name, _ in model.named_parameters()}


def test_losses_are_finite_and_named():
    model = make_model()
    terms, predictions = model.losses(synthetic_batch())
    names = ("obs", "reward", "kl_z", "kl_u", "wm", "ms", "ms_prior", "mv", "scenario_value", "meta_value", "total")
    for name in names:
        assert name in terms and torch.isfinite(terms[name]), name
    batch, steps = 6, 12
    assert predictions.latents.features.shape == (batch, steps + 1, 8 + 16 + 4)
    assert predictions.context.shape == (batch, steps + 1, 16)
    assert predictions.obs.shape == (batch, steps + 1, 17) and predictions.reward.shape == (batch, steps)


def test_reward_weight_scales_the_reward_term_of_the_world_model_loss():
    batch = synthetic_batch()
    torch.manual_seed(1)
    plain, _ = make_model().losses(batch)
    torch.manual_seed(1)
    weighted, _ = make_model(reward_weight=3.0).losses(batch)
    torch.testing.assert_close(weighted["reward"], plain["reward"])
    torch.testing.assert_close(weighted["wm"], plain["wm"] + 2.0 * plain["reward"])


def test_bf16_autocast_trains_with_float32_predictions():
    """`--trainer.precision bf16-mixed`: the per-domain modules compute in bf16 under autocast,
    the decoded observations the losses read stay float32, and every parameter gets a gradient."""
    model, batch = make_model(), synthetic_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms, predictions = model.losses(batch)
    assert predictions.obs.dtype == torch.float32
    assert all(torch.isfinite(terms[name]) for name in terms)
    terms["total"].backward()
    trained = [p for p in model.world_model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)


def test_copies_for_adaptation_are_eager_and_own_their_weights():
    """The adaptation callback's copy of a compiled model runs eagerly on its own weights."""
    model = make_model(compile=True)
    model.configure_model()
    assert set(model.world_model.cell.compiled) == {"_unroll", "_imagine"}
    copy = model.eval().eager_copy()
    assert copy.world_model.cell.compiled == {} and not copy.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.state_dict().values()))
    with torch.no_grad():
        copy.world_model.cell.transition_in[0].weight.add_(1.0)
    assert not torch.equal(copy.world_model.cell.transition_in[0].weight, model.world_model.cell.transition_in[0].weight)


@pytest.mark.slow
def test_compiled_model_gives_the_eager_losses_and_gradients():
    """`model.compile=true` (the time loop, the imagination step, the context transformer) computes
    what the eager model computes, on CPU."""
    eager, compiled = make_model(), make_model(compile=True)
    compiled.configure_model()
    batch = synthetic_batch()
    results = []
    for model in (eager, compiled):
        torch.manual_seed(1)
        terms, predictions = model.losses(batch)
        terms["total"].backward()
        state = model.world_model.start(predictions, batch, 7)
        torch.manual_seed(2)
        rollout = model.world_model.rollout(state, batch["action"][:, 7:], 5, batch["domain"])
        grads = [p.grad.clone() for p in model.world_model.cell.parameters()]
        results.append((terms["total"].detach(), rollout.next_obs.detach(), grads))
    (loss_a, obs_a, grads_a), (loss_b, obs_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-5)
    assert torch.allclose(obs_a, obs_b, rtol=1e-4, atol=1e-4)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(grads_a, grads_b))


@pytest.mark.parametrize(
    "term", ["obs", "reward", "kl_z", "kl_u", "ms", "ms_prior", "mv", "scenario_value", "meta_value"]
)
def test_each_term_falls_when_trained_alone(term):
    # No free nats here: a KL clipped at 1 nat could not show that it is being minimised.
    model = make_model(free_nats=0.0)
    batch = synthetic_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(60):
        torch.manual_seed(1)  # the same posterior samples every step: a fixed objective
        terms, _ = model.losses(batch)
        optimizer.zero_grad()
        terms[term].backward()
        optimizer.step()
        model.on_train_batch_end(None, batch, 0)
        history.append(terms[term].item())
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.8 * first, f"{term}: {first:.4f} -> {last:.4f}"


def test_meta_value_regulariser_trains_the_world_model_not_the_meta_value():
    model = make_model()
    terms, _ = model.losses(synthetic_batch())
    model.zero_grad()
    terms["mv"].backward()
    wm = model.world_model
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in wm.meta_value.parameters())
    reached = [p.grad is not None and p.grad.abs().sum() > 0 for p in wm.cell.prior_net.parameters()]
    assert all(reached)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in wm.cell.gru.parameters())


def _reached(module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_meta_state_term_pulls_q_with_weight_w_ms_and_its_prior_fits_apart():
    """L_ms (Eq. 11–12): `ms` pulls q toward r and is what w_ms weighs; `ms_prior` fits r to q
    and reaches r only, so r learns whatever w_ms is."""
    cell = make_model().world_model.cell
    for term, q_reached, r_reached in (("ms", True, False), ("ms_prior", False, True)):
        model = make_model(free_nats=0.0)
        cell = model.world_model.cell
        terms, _ = model.losses(synthetic_batch())
        model.zero_grad()
        terms[term].backward()
        assert _reached(cell.posterior_net) == q_reached, term
        assert _reached(cell.meta_prior_net) == r_reached, term
    # The total carries the pull with weight w_ms exactly: its gradient on q is w_ms times ms's.
    grads = []
    for w_ms in (0.1, 0.3):
        model = make_model(free_nats=0.0, w_ms=w_ms)
        torch.manual_seed(0)
        terms, _ = model.losses(synthetic_batch())
        model.zero_grad()
        (terms["total"] - w_ms * terms["ms"]).backward(retain_graph=True)
        without = model.world_model.cell.posterior_net.net[0].weight.grad.clone()
        model.zero_grad()
        terms["total"].backward()
        grads.append(model.world_model.cell.posterior_net.net[0].weight.grad - without)
    assert torch.allclose(grads[1], 3 * grads[0], rtol=1e-3, atol=1e-7)


def test_value_losses_train_only_the_value_heads():
    model = make_model()
    terms, _ = model.losses(synthetic_batch())
    model.zero_grad()
    (terms["scenario_value"] + terms["meta_value"]).backward()
    wm = model.world_model
    heads = set(map(id, wm.scenario_values.parameters())) | set(map(id, wm.meta_value.parameters()))
    for name, p in model.named_parameters():
        if id(p) not in heads:
            assert p.grad is None or p.grad.abs().sum() == 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in wm.meta_value.parameters())


def test_scenario_value_target_network_follows_slowly():
    model = make_model()
    values = model.world_model.scenario_values
    with torch.no_grad():
        for p in values.net.parameters():
            p.add_(1.0)
    before = [t.clone() for t in values.target_net.parameters()]
    values.update_target(0.1)
    for b, t, o in zip(before, values.target_net.parameters(), values.net.parameters()):
        assert torch.allclose(t, b + 0.1 * (o - b), atol=1e-6)


@pytest.mark.parametrize(
    "change, removed_parameters, removed_terms",
    [
        (dict(world_model=dataclasses.replace(TINY, deterministic_dim=0)), "world_model.cell.gru.", ()),
        (dict(world_model=dataclasses.replace(TINY, context="none", auxiliary_dim=0)), "world_model.context_net.", ("kl_u",)),
        (dict(w_ms=0.0), "world_model.cell.meta_prior_net.", ("ms", "ms_prior")),
        (dict(w_mv=0.0), "world_model.meta_value.", ("mv", "scenario_value", "meta_value")),
        (dict(w_mv=0.0), "world_model.scenario_values.", ()),
        (dict(world_model=dataclasses.replace(TINY, auxiliary_dim=0)), "world_model.cell.auxiliary_", ("kl_u",)),
    ],
)
def test_ablation_switch_removes_its_parameters_and_terms(change, removed_parameters, removed_terms):
    full = parameter_names(make_model())
    assert any(name.startswith(removed_parameters) for name in full)
    model = make_model(**change)
    assert not any(name.startswith(removed_parameters) for name in parameter_names(model))
    terms, _ = model.losses(synthetic_batch())
    for name in removed_terms:
        assert name not in terms
    assert torch.isfinite(terms["total"])


def test_without_deterministic_state_the_latent_has_no_h():
    model = make_model(world_model=dataclasses.replace(TINY, deterministic_dim=0))
    _, predictions = model.losses(synthetic_batch())
    assert predictions.latents.deterministic.shape[-1] == 0
    assert predictions.latents.features.shape[-1] == 8 + 4


def test_history_context_ignores_the_prompt():
    model = make_model(world_model=dataclasses.replace(TINY, context="history"))
    batch = synthetic_batch()
    base = model.world_model.predict(batch).context
    other_prompt = dict(batch, prompt_obs=batch["prompt_obs"] + 1.0)
    assert torch.allclose(model.world_model.predict(other_prompt).context, base)


def test_padded_dims_do_not_reach_the_model():
    model = make_model()
    batch = synthetic_batch()
    padding = 1 - model.world_model.obs_mask[batch["domain"]]
    noisy = dict(batch, obs=batch["obs"] + padding[:, None] * 5.0)
    torch.manual_seed(0)
    a, _ = model.losses(batch)
    torch.manual_seed(0)
    b, _ = model.losses(noisy)
    assert torch.allclose(a["obs"], b["obs"]) and torch.allclose(a["kl_z"], b["kl_z"])


def test_nan_loss_stops_with_the_term_named(monkeypatch):
    model = make_model()
    batch = synthetic_batch()
    original = model.wm_loss.forward

    def poisoned(*args, **kwargs):
        terms = original(*args, **kwargs)
        terms["reward"] = terms["reward"] * float("nan")
        return terms

    monkeypatch.setattr(model.wm_loss, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="train/loss/reward"):
        model.training_step(batch, 0)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(w_ms=-1.0), "model.w_ms"),
        (dict(reward_weight=-1.0), "model.reward_weight"),
        (dict(lr=0.0), "model.lr"),
        (dict(domain_dims={}), "model.domain_dims"),
    ],
)
def test_bad_settings_name_their_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        MrCoM(**{"world_model": TINY, "domain_dims": TINY_DIMS, "num_scenarios": 3, **kwargs})


def test_bad_world_model_settings_name_their_key():
    with pytest.raises(ValueError, match="heads"):
        WorldModelConfig(embed_dim=128, heads=3)
    with pytest.raises(ValueError, match="deterministic_dim"):
        WorldModelConfig(deterministic_dim=-1)


def test_standardized_observations_use_the_datamodule_statistics():
    model = make_model(world_model=dataclasses.replace(TINY, obs_normalization="standardize"))
    wm = model.world_model
    batch = synthetic_batch()
    mean = torch.randn(2, 17)
    std = torch.rand(2, 17) + 0.5
    wm.set_observation_statistics(mean, std)
    normalized = wm.normalize_obs(batch["obs"], batch["domain"])
    row = 1  # domain 1
    assert torch.allclose(normalized[row], (batch["obs"][row] - mean[1]) / std[1], atol=1e-6)
    assert torch.allclose(wm.denormalize_obs(normalized, batch["domain"]), batch["obs"], atol=1e-5)
    assert bool(wm.obs_statistics_set)
    restored = make_model(world_model=dataclasses.replace(TINY, obs_normalization="standardize"))
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.world_model.obs_std, wm.obs_std)  # carried by checkpoints


def test_symlog_observations_need_no_statistics():
    wm = make_model().world_model
    batch = synthetic_batch()
    normalized = wm.normalize_obs(batch["obs"], batch["domain"])
    assert torch.allclose(normalized, torch.sign(batch["obs"]) * torch.log1p(batch["obs"].abs()))
    assert torch.allclose(wm.denormalize_obs(normalized, batch["domain"]), batch["obs"], atol=1e-5)


@pytest.mark.parametrize("scale, low, high", [("symlog", -20.0, 20.0), ("linear", 0.0, 1.0)])
def test_two_hot_bins_encode_and_decode_rewards(scale, low, high):
    from mrcom_lightning.models.layers import TwoHot

    twohot = TwoHot(11, low, high, symlog=scale == "symlog")
    rewards = torch.tensor([0.0, 0.05, 0.37, 0.999, 1.0])
    target = twohot.encode(rewards)
    assert torch.allclose(target.sum(-1), torch.ones(5)) and (target > 0).sum(-1).max() <= 2
    # The target's expectation is the reward itself when the bins are linear in its units.
    decoded = (target * twohot.bins).sum(-1)
    expected = rewards if scale == "linear" else torch.sign(rewards) * torch.log1p(rewards.abs())
    assert torch.allclose(decoded, expected, atol=1e-6)
    assert torch.allclose(twohot.mean(torch.log(target + 1e-30)), rewards, atol=1e-5)
    # Linear bins on [0, 1] clamp what lies outside; symlog bins of ±20 cover it.
    if scale == "linear":
        assert torch.allclose(twohot.mean(torch.log(twohot.encode(torch.tensor([1.5, -0.5])) + 1e-30)), torch.tensor([1.0, 0.0]))


def test_reward_bin_settings_reach_the_head_and_bad_ranges_are_refused():
    config = WorldModelConfig(embed_dim=16, hidden_dim=16, stochastic_dim=4, deterministic_dim=8, auxiliary_dim=4,
                              context_length=4, reward_bins=21, reward_bin_range=(0.0, 1.0), reward_bin_scale="linear")  # fmt: skip
    module = MrCoM(world_model=config, domain_dims=TINY_DIMS, num_scenarios=3)
    twohot = module.world_model.twohot
    assert not twohot.symlog and twohot.bins[0] == 0 and twohot.bins[-1] == 1 and len(twohot.bins) == 21
    terms, _ = module.losses(synthetic_batch(TINY_DIMS, batch=2, steps=6, prompt=4))
    assert torch.isfinite(terms["total"])
    with pytest.raises(ValueError, match="reward_bin_range.*low < high"):
        WorldModelConfig(reward_bin_range=(1.0, 0.0))


def test_an_unknown_reward_head_is_refused_by_name():
    with pytest.raises(ValueError, match=r"model\.world_model\.reward_head must be absolute or residual, got 'relative'"):
        WorldModelConfig(reward_head="relative")
    assert WorldModelConfig(reward_head="residual").reward_head == "residual"

"""The latent cell's time loop: hoisting the input projections out of it changes no number."""

from __future__ import annotations

import shutil

import pytest
import torch

from mrcom_lightning.models.latent import LatentCell

BATCH, STEPS, EMBED = 5, 9, 12


def reference_unroll(cell: LatentCell, obs_embed, prev_action_embed, context):
    """The loop before the hoisting: the transition and q read the concatenated inputs each step."""
    batch, steps, _ = obs_embed.shape
    recurrent, stochastic = cell.initial(batch, obs_embed.device)
    recurrents, stochastics, means, stds = [], [], [], []
    for t in range(steps):
        x = cell.transition_in(torch.cat([stochastic, prev_action_embed[:, t]], dim=-1))
        recurrent = cell.gru(x, recurrent) if cell.deterministic_dim else cell.feedforward(x)
        posterior = cell.posterior_net(torch.cat([recurrent, context[:, t], obs_embed[:, t]], dim=-1))
        stochastic = posterior.rsample()
        recurrents.append(recurrent)
        stochastics.append(stochastic)
        means.append(posterior.base_dist.loc)
        stds.append(posterior.base_dist.scale)
    return tuple(torch.stack(x, 1) for x in (recurrents, stochastics, means, stds))


def make_cell(deterministic_dim: int = 16, auxiliary_dim: int = 4) -> LatentCell:
    torch.manual_seed(0)
    return LatentCell(
        EMBED, stochastic_dim=8, deterministic_dim=deterministic_dim, auxiliary_dim=auxiliary_dim, hidden_dim=20
    )


def inputs(seed: int = 1) -> tuple[torch.Tensor, ...]:
    """e_0..e_N, a_{-1}..a_{N-1} and c_0..c_N, [B, N+1, D] each, as leaves that take gradients."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(BATCH, STEPS, EMBED, generator=generator).requires_grad_() for _ in range(3))


def outputs_and_gradients(cell: LatentCell, unroll, seed: int = 2):
    """The loop's outputs and the gradients of a fixed random weighting of them with respect to
    the cell's parameters and the loop's inputs."""
    cell.zero_grad(set_to_none=True)
    leaves = inputs()
    torch.manual_seed(seed)
    outputs = unroll(cell, *leaves)
    weights = torch.Generator().manual_seed(3)
    loss = sum((out * torch.randn(out.shape, generator=weights)).sum() for out in outputs)
    loss.backward()
    grads = {name: p.grad for name, p in cell.named_parameters() if p.grad is not None}
    grads.update({f"input {i}": leaf.grad for i, leaf in enumerate(leaves)})
    return [out.detach() for out in outputs], grads


@pytest.mark.parametrize(
    "deterministic_dim, auxiliary_dim", [(16, 4), (0, 4), (16, 0)], ids=["mrcom", "without_h", "rssm"]
)
def test_hoisted_loop_equals_the_reference_step_for_step(deterministic_dim, auxiliary_dim):
    cell = make_cell(deterministic_dim, auxiliary_dim)
    hoisted, hoisted_grads = outputs_and_gradients(cell, LatentCell._unroll)
    reference, reference_grads = outputs_and_gradients(cell, reference_unroll)
    names = ("recurrent", "stochastic", "mean", "std")
    for name, a, b in zip(names, hoisted, reference):
        for t in range(STEPS):
            assert torch.allclose(a[:, t], b[:, t], rtol=1e-5, atol=1e-6), f"{name} differs at step {t}"
    assert hoisted_grads.keys() == reference_grads.keys()
    for name in reference_grads:
        assert torch.allclose(hoisted_grads[name], reference_grads[name], rtol=1e-4, atol=1e-5), name


def test_hoisting_keeps_the_parameters_that_checkpoints_hold():
    """Nothing new to load: the loop splits the first layers' weights at call time."""
    shapes = {name: tuple(p.shape) for name, p in make_cell().state_dict().items()}
    assert shapes["transition_in.0.weight"] == (20, 8 + EMBED)
    assert shapes["posterior_net.net.0.weight"] == (20, 16 + 2 * EMBED)
    assert not any("hoist" in name or "split" in name for name in shapes)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler on CPU"
)
def test_compiled_loop_and_imagination_step_give_the_eager_results_on_cpu():
    """`LatentCell.compile` (the `model.compile` path) on CPU: the compiled loop and imagination
    step give the eager outputs and gradients for the same noise."""
    eager, compiled = make_cell(), make_cell()
    compiled.compile()
    results = []
    for cell in (eager, compiled):
        outputs, grads = outputs_and_gradients(cell, lambda cell, *x: cell._call("_unroll", *x))
        recurrent, stochastic = outputs[0][:, -1], outputs[1][:, -1]
        torch.manual_seed(4)
        imagined = cell.imagine(recurrent, stochastic, torch.ones(BATCH, EMBED), torch.zeros(BATCH, EMBED))
        results.append((outputs + list(imagined), grads))
    (out_a, grads_a), (out_b, grads_b) = results
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(out_a, out_b))
    assert grads_a.keys() == grads_b.keys()
    assert all(torch.allclose(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-5) for name in grads_a)

"""CaDM (Lee et al. 2020, "Context-aware Dynamics Model for Generalization in Model-Based RL") in
the shared latent model: a context from the last K transitions, forward and backward dynamics
conditioned on it, and their prediction loss over M steps, which trains the context
(DESIGN.md §4, Baselines; docs/baselines.md says what is kept and what is mapped).

CaDM's state is the environment's observation, so its heads work on observations (in the
normalised space the world model reads them in) and, like CaDM's, predict the change of the
observation. The context also enters the latent dynamics: it is the c of the RSSM's prior and
posterior (`WorldModel`), and imagination holds it fixed at its value from the K real transitions
before the start, as CaDM's planner does.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from mrcom_lightning.models.layers import mlp
from mrcom_lightning.models.tokenizers import DomainDecoder


class TransitionContext(nn.Module):
    """CaDM's context encoder g: c from the K most recent transitions (e_i, ψ(a_i), e_{i+1} − e_i).

    `forward` gives, for every position t = 0..N of a sequence, the context of the K transitions
    i = t − K .. t − 1, the last of which ends at o_t; a missing transition (t < K) is a learned
    "no transition" token. Each transition becomes a token (a 2-layer MLP), and the K tokens,
    oldest first, go through a 3-layer MLP to the `context_dim`-d context (CaDM: 10).
    """

    def __init__(self, embed_dim: int, context_dim: int, transitions: int, hidden_dim: int):
        super().__init__()
        self.transitions = transitions
        self.token = mlp(3 * embed_dim, embed_dim, hidden_dim, 2)
        self.no_transition = nn.Parameter(torch.randn(embed_dim) / embed_dim**0.5)
        self.encoder = mlp(transitions * embed_dim, context_dim, hidden_dim, 3)

    def forward(self, obs_embed: torch.Tensor, action_embed: torch.Tensor) -> torch.Tensor:
        """Contexts [B, N+1, C] from e_0..e_N [B, N+1, D] and ψ(a_0)..ψ(a_{N−1}) [B, N, D]."""
        before, after = obs_embed[:, :-1], obs_embed[:, 1:]
        tokens = self.token(torch.cat([before, action_embed, after - before], dim=-1))
        batch, steps, dim = tokens.shape
        k = self.transitions
        padded = torch.cat([self.no_transition.expand(batch, k, dim), tokens], dim=1)
        windows = padded.unfold(1, k, 1).transpose(-1, -2)  # [B, N+1, K, D]: window t = tokens t−K..t−1
        return self.encoder(windows.reshape(batch, steps + 1, k * dim))


@dataclasses.dataclass
class DynamicsPredictions:
    """The forward and backward models' M-step predictions from every start of a window and their
    targets, normalised observations [B, S, M, O_max] (S = N − M + 1 starts), and the rows' real
    dims [B, O_max]."""

    forward: torch.Tensor
    forward_target: torch.Tensor
    backward: torch.Tensor
    backward_target: torch.Tensor
    obs_mask: torch.Tensor


class ContextDynamics(nn.Module):
    """CaDM's forward model f(o_{t+1} | o_t, a_t, c) and backward model b(o_t | o_{t+1}, a_t, c).

    Each is a per-domain 3-layer MLP over [φ(o), ψ(a), c] that predicts the change of the
    observation; rolled out over M steps, each step reads its own previous prediction.
    From start t the forward model predicts o_{t+1}..o_{t+M} from o_t with c_t⁺, the context of the
    K transitions ending at o_t (CaDM's "past K transitions"); the backward model predicts
    o_{t+M−1}..o_t from o_{t+M} with c_t, the context of the transitions ending at o_{t−1}, which
    holds nothing that it is asked to predict (the rule of DESIGN.md §4).
    """

    def __init__(self, obs_dims: list[int], embed_dim: int, context_dim: int, hidden_dim: int, steps: int):
        super().__init__()
        self.steps = steps
        self.forward_model = DomainDecoder(obs_dims, 2 * embed_dim + context_dim, hidden_dim)
        self.backward_model = DomainDecoder(obs_dims, 2 * embed_dim + context_dim, hidden_dim)

    def forward(
        self,
        obs: torch.Tensor,
        action_embed: torch.Tensor,
        context_after: torch.Tensor,
        context_before: torch.Tensor,
        domain: torch.Tensor,
        obs_mask: torch.Tensor,
        tokenizer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> DynamicsPredictions | None:
        """M-step predictions from every start of a window: `obs` o_0..o_N (normalised) [B, N+1, O],
        `action_embed` [B, N, D], `context_after` c⁺_0..c⁺_N and `context_before` c_0..c_N [B, N+1, C],
        `tokenizer` the observation tokenizer φ(o, domain). M is min(steps, N)."""
        batch, n = action_embed.shape[:2]
        m = min(self.steps, n)
        if m < 1:
            return None
        s = n - m + 1

        def windows(x: torch.Tensor, offset: int) -> torch.Tensor:  # [B, S, M, ·]: x[t + offset + k]
            return x[:, offset : offset + s + m - 1].unfold(1, m, 1).transpose(-1, -2)

        def rows(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch * s, *x.shape[2:])

        dom = domain.repeat_interleave(s)
        actions = rows(windows(action_embed, 0))  # [B·S, M, D]: a_t .. a_{t+M−1}

        def roll(model, start, context, order):
            current, out = start, []
            for k in order:
                change = model(torch.cat([tokenizer(current, dom), actions[:, k], context], dim=-1), dom)
                current = current + change
                out.append(current)
            return torch.stack(out, 1).view(batch, s, m, -1)

        forward = roll(self.forward_model, rows(obs[:, :s]), rows(context_after[:, :s]), range(m))
        backward = roll(self.backward_model, rows(obs[:, m : m + s]), rows(context_before[:, :s]), range(m - 1, -1, -1))
        return DynamicsPredictions(
            forward=forward,
            forward_target=windows(obs, 1),
            backward=backward,
            backward_target=windows(obs, 0).flip(2),  # o_{t+M−1} .. o_t, the order the backward model predicts in
            obs_mask=obs_mask,
        )


class PredictionLoss(nn.Module):
    """CaDM's prediction loss: L_pred = L_forward + β·L_backward over M steps (Lee et al. 2020, Eq. 3–5;
    β = 0.5), each a squared error summed over the row's real dims and averaged over rows, starts
    and steps (the Gaussian NLL of `WorldModelLoss`'s observation term). It trains the context
    encoder, the two dynamics models and the tokenizers."""

    def __init__(self, *, backward_weight: float = 0.5):
        super().__init__()
        self.backward_weight = backward_weight

    def forward(self, dynamics: DynamicsPredictions | None, like: torch.Tensor) -> dict[str, torch.Tensor]:
        if dynamics is None:  # a window shorter than one step
            zero = like.new_zeros(())
            return {"forward": zero, "backward": zero, "prediction": zero}
        mask = dynamics.obs_mask[:, None, None, :]

        def error(prediction, target):
            return 0.5 * ((prediction - target) ** 2 * mask).sum(-1).mean()

        terms = {
            "forward": error(dynamics.forward, dynamics.forward_target),
            "backward": error(dynamics.backward, dynamics.backward_target),
        }
        terms["prediction"] = terms["forward"] + self.backward_weight * terms["backward"]
        return terms

"""Per-scenario values and the meta-value (Eq. 13–15)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mrcom_lightning.models.layers import mlp


class ScenarioValues(nn.Module):
    """Eq. 14: V_k(s) for each training scenario k, learned by the Bellman equation on real rewards.

    One network with a head per scenario; a Polyak-averaged copy gives the bootstrap targets.
    The heads predict (1 − γ) × V, which lies in the rewards' range; L_mv divides by (1 − γ) to
    compare values in units of return, as Eq. 15 does (`losses.MetaValueLoss`).
    """

    def __init__(self, feature_dim: int, num_scenarios: int, hidden_dim: int):
        super().__init__()
        self.net = mlp(feature_dim, num_scenarios, hidden_dim, 3)
        self.target_net = copy.deepcopy(self.net).requires_grad_(False)

    @staticmethod
    def _pick(values: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        index = scenario.view(-1, *([1] * (values.dim() - 2)), 1).expand(*values.shape[:-1], 1)
        return values.gather(-1, index).squeeze(-1)

    def forward(self, features: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """V_k(s) for each row's scenario k: features [B, N, F], scenario [B] -> [B, N]."""
        return self._pick(self.net(features), scenario)

    @torch.no_grad()
    def target(self, features: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """V̄_k(s) of the Polyak-averaged target network, which gives the bootstrap targets."""
        return self._pick(self.target_net(features), scenario)

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        for target, online in zip(self.target_net.parameters(), self.net.parameters()):
            target.lerp_(online, tau)


class MetaValue(nn.Module):
    """V_meta(s): one value shared by all scenarios, regressed onto sg V_k(s) (Eq. 13)."""

    def __init__(self, feature_dim: int, hidden_dim: int):
        super().__init__()
        self.net = mlp(feature_dim, 1, hidden_dim, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)

    def frozen(self, features: torch.Tensor) -> torch.Tensor:
        """V_meta(s) with the head's parameters held out of the graph: gradients reach `s` only (Eq. 15)."""
        params = {name: p.detach() for name, p in self.named_parameters()}
        return torch.func.functional_call(self, params, (features,))

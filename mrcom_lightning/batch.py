"""The batch: the one contract between the data and the world model (DESIGN.md §3, §4).

Domains are mixed in one batch: observations and actions are zero-padded to the largest
sizes of the configured domains, and each row carries its domain id, from which the model
knows which dims are real (TD-MPC2's mechanism; the masks live in the model, built from the
domain sizes). With B rows, T transitions per window, L per prompt, O_max and A_max the
largest observation and action sizes:

    obs            [B, T+1, O_max] float32  o_s .. o_{s+T} of one episode window
    action         [B, T, A_max]   float32  a_s .. a_{s+T-1}
    reward         [B, T]          float32  r_s .. r_{s+T-1}, r_t the reward of (o_t, a_t)
    terminal       [B, T]          bool
    domain         [B]             int64    the row's domain id (position in the sorted domain names)
    scenario       [B]             int64    the row's training-scenario id (its value head); -1 outside training
    prompt_obs     [B, L, O_max]   float32  L consecutive transitions (o, a, r) of another
    prompt_action  [B, L, A_max]   float32  episode of the row's own scenario, by the best
    prompt_reward  [B, L]          float32  policy the data has for it

Padded dims are exactly zero. `pad_batch` is the one function that builds a batch; the
datamodule, the adaptation history, the synthetic batch of tests and benchmarks all call it.
"""

from __future__ import annotations

from typing import Sequence, TypedDict, Union

import numpy as np
import torch

Rows = Union[np.ndarray, Sequence[np.ndarray]]


class Batch(TypedDict):
    """The world model's input; shapes and meanings in the module docstring."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    terminal: torch.Tensor
    domain: torch.Tensor
    scenario: torch.Tensor
    prompt_obs: torch.Tensor
    prompt_action: torch.Tensor
    prompt_reward: torch.Tensor


def _padded(rows: Rows, width: int) -> np.ndarray:
    """Rows `[steps, d_b]` (their own sizes, or one array [B, steps, d]) zero-padded to `[B, steps, width]`."""
    if isinstance(rows, np.ndarray):
        out = np.zeros((*rows.shape[:-1], width), np.float32)
        out[..., : rows.shape[-1]] = rows
        return out
    out = np.zeros((len(rows), *rows[0].shape[:-1], width), np.float32)
    for b, row in enumerate(rows):
        out[b, ..., : row.shape[-1]] = row
    return out


def pad_batch(
    *,
    obs: Rows,
    action: Rows,
    reward: np.ndarray,
    domain: np.ndarray,
    prompt_obs: Rows,
    prompt_action: Rows,
    prompt_reward: np.ndarray,
    obs_max: int,
    act_max: int,
    terminal: np.ndarray | None = None,
    scenario: np.ndarray | None = None,
    device: str | torch.device | None = None,
) -> Batch:
    """The batch of B windows given at their domains' own sizes (a sequence of arrays, or one array
    when every row has the same sizes). `terminal` defaults to all False, `scenario` to -1."""
    reward = np.asarray(reward, np.float32)
    rows = len(reward)
    arrays = dict(
        obs=_padded(obs, obs_max),
        action=_padded(action, act_max),
        reward=reward,
        terminal=np.zeros(reward.shape, bool) if terminal is None else np.asarray(terminal, bool),
        domain=np.broadcast_to(np.asarray(domain, np.int64), (rows,)).copy(),
        scenario=np.full(rows, -1, np.int64) if scenario is None else np.asarray(scenario, np.int64),
        prompt_obs=_padded(prompt_obs, obs_max),
        prompt_action=_padded(prompt_action, act_max),
        prompt_reward=np.asarray(prompt_reward, np.float32),
    )
    return {key: torch.as_tensor(value, device=device) for key, value in arrays.items()}  # type: ignore[return-value]


def dim_masks(dims: Sequence[int]) -> torch.Tensor:
    """`[domains, max(dims)]`: 1 on each domain's real dims, 0 on padding."""
    mask = torch.zeros(len(dims), max(dims))
    for k, dim in enumerate(dims):
        mask[k, :dim] = 1.0
    return mask

"""Meta-episodes: several consecutive episodes of one scenario as one sequence (MAMBA, Rimon et al.
2024), the recurrent state carried across episode boundaries, each episode's first observation
flagged (`reset`). Used by the training stream (`SplitEpisodes.meta_batch`) and by MAMBA's
imagination start over a target's whole real history (`meta_episode_batch`,
`WorldModel.start_from_history`).

Layout of a joined sequence of episodes 1..n, each with obs [T_i+1], action [T_i], reward [T_i]:
every episode keeps all its observations (its last one included, DMC episodes end by time
limit), and between two episodes sits one *reset transition* from the last observation of
episode i to the first of episode i+1, with a zero action, zero reward and terminal False (as
DreamerV3 records an episode start: no action led to it, no reward came with it). `reset` is True
at each episode's first observation.

    obs    [P, O]   P = Σ (T_i + 1)
    action [P−1, A], reward [P−1], terminal [P−1]
    reset  [P]      True at positions 0, T_1 + 1, T_1 + T_2 + 2, ...
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from mrcom_lightning.batch import Batch, pad_batch


def join_episodes(
    obs: Sequence[np.ndarray],
    action: Sequence[np.ndarray],
    reward: Sequence[np.ndarray],
    terminal: Sequence[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The meta-episode of the given episodes (the module docstring's layout): obs, action, reward,
    terminal, reset."""
    if not obs:
        raise ValueError("a meta-episode needs at least one episode, got none")
    if terminal is None:
        terminal = [np.zeros(len(r), bool) for r in reward]
    parts: dict[str, list[np.ndarray]] = {"obs": [], "action": [], "reward": [], "terminal": [], "reset": []}
    for i, (o, a, r, d) in enumerate(zip(obs, action, reward, terminal)):
        if i:  # the reset transition from the previous episode's last observation
            parts["action"].append(np.zeros((1, a.shape[-1]), np.float32))
            parts["reward"].append(np.zeros(1, np.float32))
            parts["terminal"].append(np.zeros(1, bool))
        parts["obs"].append(np.asarray(o, np.float32))
        parts["action"].append(np.asarray(a, np.float32))
        parts["reward"].append(np.asarray(r, np.float32))
        parts["terminal"].append(np.asarray(d, bool))
        reset = np.zeros(len(o), bool)
        reset[0] = True
        parts["reset"].append(reset)
    return {key: np.concatenate(values) for key, values in parts.items()}


def episode_starts(steps: Sequence[int]) -> np.ndarray:
    """Positions of each episode's first observation in the meta-episode of episodes of `steps` transitions."""
    return np.concatenate([[0], np.cumsum(np.asarray(steps) + 1)[:-1]]).astype(np.int64)


def meta_episode_batch(
    episodes: Sequence[dict[str, np.ndarray]],
    domain: int,
    obs_max: int,
    act_max: int,
    prompt_length: int = 0,
    device: str | torch.device | None = None,
) -> Batch:
    """One row: every episode of a history (dicts of obs [T+1], action [T], reward [T], at the domain's
    own sizes; the running one may lack its last observation's successor) joined into a meta-episode,
    with `reset`. The prompt is zeros of `prompt_length` transitions (MAMBA reads none; give the
    model's context length for a model with a context)."""
    joined = join_episodes(
        [e["obs"] for e in episodes], [e["action"] for e in episodes], [e["reward"] for e in episodes]
    )
    obs_dim, act_dim = joined["obs"].shape[-1], joined["action"].shape[-1]
    batch = pad_batch(
        obs=joined["obs"][None],
        action=joined["action"][None],
        reward=joined["reward"][None],
        terminal=joined["terminal"][None],
        domain=np.array([domain]),
        prompt_obs=np.zeros((1, prompt_length, obs_dim), np.float32),
        prompt_action=np.zeros((1, prompt_length, act_dim), np.float32),
        prompt_reward=np.zeros((1, prompt_length), np.float32),
        obs_max=obs_max,
        act_max=act_max,
        device=device,
    )
    batch["reset"] = torch.as_tensor(joined["reset"][None], device=device)
    return batch

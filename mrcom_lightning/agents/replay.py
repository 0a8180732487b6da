"""The replay buffer of SAC (Haarnoja et al. 2018): numpy ring buffers of transitions.

Besides what SAC samples (obs, action, reward, next_obs, done), each transition records the
episode it came from and whether it ended that episode, so that the buffer of a training run
can be written out as whole episodes (the `mix` behaviour dataset, DESIGN.md §3).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

SAMPLED = ("obs", "action", "reward", "next_obs", "done")


class ReplayBuffer:
    """A fixed-capacity ring of transitions; when full, the oldest are overwritten.

    `done` marks a true terminal (it cuts bootstrapping); `episode_end` marks the last
    transition of an episode, terminal or cut by a time limit; `episode` is an integer id
    per transition (in `train_sac`, the index passed to the environment factory).
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity!r}")
        self.obs_dim, self.act_dim, self.capacity = int(obs_dim), int(act_dim), int(capacity)
        self.arrays = {
            "obs": np.zeros((capacity, obs_dim), np.float32),
            "action": np.zeros((capacity, act_dim), np.float32),
            "reward": np.zeros(capacity, np.float32),
            "next_obs": np.zeros((capacity, obs_dim), np.float32),
            "done": np.zeros(capacity, np.float32),
            "episode_end": np.zeros(capacity, bool),
            "episode": np.full(capacity, -1, np.int64),
        }
        self.ptr = 0  # where the next transition goes
        self.size = 0
        self.added = 0  # transitions ever added; more than `capacity` means the ring wrapped

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float | np.ndarray,
        next_obs: np.ndarray,
        done: bool | np.ndarray,
        *,
        episode_end: bool | np.ndarray | None = None,
        episode: int | np.ndarray = -1,
    ) -> None:
        """Adds one transition (`obs [obs_dim]`) or a batch (`obs [N, obs_dim]`).

        `episode_end` defaults to `done`: a terminal always ends its episode.
        """
        obs = np.asarray(obs, np.float32)
        single = obs.ndim == 1
        n = 1 if single else len(obs)
        values = {
            "obs": obs.reshape(n, self.obs_dim),
            "action": np.asarray(action, np.float32).reshape(n, self.act_dim),
            "reward": np.asarray(reward, np.float32).reshape(n),
            "next_obs": np.asarray(next_obs, np.float32).reshape(n, self.obs_dim),
            "done": np.asarray(done, np.float32).reshape(n),
            "episode_end": np.broadcast_to(done if episode_end is None else episode_end, n),
            "episode": np.broadcast_to(episode, n),
        }
        if n > self.capacity:  # only the newest `capacity` survive anyway
            values = {k: v[-self.capacity :] for k, v in values.items()}
        m = min(n, self.capacity)
        index = (self.ptr + np.arange(m)) % self.capacity
        for key, value in values.items():
            self.arrays[key][index] = value
        self.ptr = int((self.ptr + m) % self.capacity)
        self.size = min(self.size + m, self.capacity)
        self.added += n

    def sample(
        self,
        batch_size: int,
        rng: np.random.Generator,
        device: str | torch.device = "cpu",
    ) -> dict[str, torch.Tensor]:
        """A uniform batch (with replacement) of `obs, action, reward, next_obs, done` tensors."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer: add transitions first")
        index = rng.integers(0, self.size, batch_size)
        return {key: torch.as_tensor(self.arrays[key][index], device=device) for key in SAMPLED}

    def chronological(self) -> np.ndarray:
        """Indices of the stored transitions from oldest to newest."""
        if self.size < self.capacity:
            return np.arange(self.size)
        return (self.ptr + np.arange(self.capacity)) % self.capacity

    def episodes(self) -> Iterator[dict[str, np.ndarray | int]]:
        """The complete episodes stored, oldest first, as DESIGN.md §3 episode arrays.

        Yields `episode` (the id), `obs [T+1, obs_dim]`, `action [T, act_dim]`, `reward [T]`,
        `terminal [T]`. Skipped: an episode still running at the end, and, once the ring has
        wrapped, the oldest one (its beginning may have been overwritten).
        """
        order = self.chronological()
        if len(order) == 0:
            return
        ids = self.arrays["episode"][order]
        ends = self.arrays["episode_end"][order]
        # A new segment starts where the id changes or after an episode end (ids may repeat).
        starts = np.flatnonzero(np.r_[True, (ids[1:] != ids[:-1]) | ends[:-1]])
        stops = np.r_[starts[1:], len(order)]
        for k, (start, stop) in enumerate(zip(starts, stops)):
            rows = order[start:stop]
            if not ends[stop - 1] or (k == 0 and self.added > self.capacity):
                continue
            a = self.arrays
            yield {
                "episode": int(ids[start]),
                "obs": np.concatenate([a["obs"][rows], a["next_obs"][rows[-1:]]]),
                "action": a["action"][rows],
                "reward": a["reward"][rows],
                "terminal": a["done"][rows].astype(bool),
            }

    def state_dict(self) -> dict:
        """The filled part of the ring and its position; `load_state_dict` restores it exactly."""
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "capacity": self.capacity,
            "ptr": self.ptr,
            "size": self.size,
            "added": self.added,
            "arrays": {key: value[: self.size].copy() for key, value in self.arrays.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        shape = (state["obs_dim"], state["act_dim"], state["capacity"])
        if shape != (self.obs_dim, self.act_dim, self.capacity):
            raise ValueError(
                f"replay state has (obs_dim, act_dim, capacity) = {shape}, this buffer "
                f"{(self.obs_dim, self.act_dim, self.capacity)}: build a buffer with the same sizes"
            )
        size = int(state["size"])
        for key, value in self.arrays.items():
            value[:size] = state["arrays"][key]
            value[size:] = -1 if key == "episode" else 0
        self.ptr, self.size, self.added = int(state["ptr"]), size, int(state["added"])

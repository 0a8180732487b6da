"""The real history of the target scenario: episodes, the windows that latent states are inferred
from, and the prompt that tells the world model which scenario it is in."""

from __future__ import annotations

import numpy as np
import torch


class RealHistory:
    """Every real transition of the target, kept as episodes (obs [T+1], action [T], reward [T])."""

    def __init__(self, obs_dim: int, act_dim: int):
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.episodes: list[dict[str, np.ndarray]] = []
        self._obs: list[np.ndarray] = []
        self._action: list[np.ndarray] = []
        self._reward: list[float] = []

    def start(self, obs: np.ndarray) -> None:
        self._obs, self._action, self._reward = [obs], [], []

    def add(self, action: np.ndarray, reward: float, next_obs: np.ndarray, done: bool) -> None:
        self._action.append(action)
        self._reward.append(reward)
        self._obs.append(next_obs)
        if done:
            self.episodes.append(self._current())
            self._obs, self._action, self._reward = [], [], []

    def _current(self) -> dict[str, np.ndarray]:
        return {
            "obs": np.asarray(self._obs, dtype=np.float32),
            "action": np.asarray(self._action, dtype=np.float32).reshape(-1, self.act_dim),
            "reward": np.asarray(self._reward, dtype=np.float32),
        }

    def all_episodes(self) -> list[dict[str, np.ndarray]]:
        """Completed episodes plus the running one (if it has a transition)."""
        return self.episodes + ([self._current()] if self._action else [])

    def prompt(self, length: int) -> dict[str, np.ndarray] | None:
        """The first `length` transitions of the best real episode so far (the target has no expert):
        None while no episode is that long."""
        candidates = [e for e in self.all_episodes() if len(e["action"]) >= length]
        if not candidates:
            return None
        best = max(candidates, key=lambda e: float(e["reward"].sum()))
        return {"obs": best["obs"][:length], "action": best["action"][:length], "reward": best["reward"][:length]}

    def windows(self, count: int, length: int, prompt_length: int, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
        """`count` windows of `length` transitions (obs [N, length+1]) ending at uniformly drawn real steps,
        with the prompt, in the datamodule's batch layout (unpadded). None when no episode is long enough."""
        prompt = self.prompt(prompt_length)
        episodes = [e for e in self.all_episodes() if len(e["action"]) >= length]
        if prompt is None or not episodes:
            return None
        sizes = np.array([len(e["action"]) - length + 1 for e in episodes])
        picks = rng.choice(len(episodes), size=count, p=sizes / sizes.sum())
        obs, action, reward = [], [], []
        for i in picks:
            start = int(rng.integers(sizes[i]))
            episode = episodes[i]
            obs.append(episode["obs"][start : start + length + 1])
            action.append(episode["action"][start : start + length])
            reward.append(episode["reward"][start : start + length])
        return {
            "obs": np.stack(obs),
            "action": np.stack(action),
            "reward": np.stack(reward),
            "prompt_obs": np.repeat(prompt["obs"][None], count, 0),
            "prompt_action": np.repeat(prompt["action"][None], count, 0),
            "prompt_reward": np.repeat(prompt["reward"][None], count, 0),
        }


def model_batch(windows: dict[str, np.ndarray], domain: int, obs_max: int, act_max: int, device) -> dict[str, torch.Tensor]:
    """Windows of one domain as the world model's batch: zero-padded, with masks and ids."""
    count, steps = windows["action"].shape[:2]

    def pad(x: np.ndarray, size: int) -> torch.Tensor:
        out = np.zeros((*x.shape[:-1], size), dtype=np.float32)
        out[..., : x.shape[-1]] = x
        return torch.as_tensor(out, device=device)

    obs_dim, act_dim = windows["obs"].shape[-1], windows["action"].shape[-1]
    obs_mask = torch.zeros(count, obs_max, device=device)
    obs_mask[:, :obs_dim] = 1
    action_mask = torch.zeros(count, act_max, device=device)
    action_mask[:, :act_dim] = 1
    return {
        "obs": pad(windows["obs"], obs_max),
        "action": pad(windows["action"], act_max),
        "reward": torch.as_tensor(windows["reward"], device=device),
        "terminal": torch.zeros(count, steps, dtype=torch.bool, device=device),
        "obs_mask": obs_mask,
        "action_mask": action_mask,
        "domain": torch.full((count,), domain, dtype=torch.long, device=device),
        "scenario": torch.full((count,), -1, dtype=torch.long, device=device),
        "prompt_obs": pad(windows["prompt_obs"], obs_max),
        "prompt_action": pad(windows["prompt_action"], act_max),
        "prompt_reward": torch.as_tensor(windows["prompt_reward"], device=device),
    }

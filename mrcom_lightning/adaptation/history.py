"""The real history of the target scenario: episodes, the windows that latent states are inferred
from, and the prompt that tells the world model which scenario it is in."""

from __future__ import annotations

import numpy as np
import torch

from mrcom_lightning.batch import Batch, pad_batch


class RealHistory:
    """Every real transition of the target, kept as episodes (obs [T+1], action [T], reward [T])."""

    def __init__(self, obs_dim: int, act_dim: int):
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.episodes: list[dict[str, np.ndarray]] = []
        self._obs: list[np.ndarray] = []
        self._action: list[np.ndarray] = []
        self._reward: list[float] = []

    @classmethod
    def from_episodes(cls, episodes, obs_dim: int, act_dim: int) -> "RealHistory":
        """A history of stored episodes (`data.episodes.Episode`: obs [T+1], action [T], reward [T])."""
        history = cls(obs_dim, act_dim)
        for episode in episodes:
            history.start(episode.obs[0])
            for t in range(episode.steps):
                history.add(episode.action[t], float(episode.reward[t]), episode.obs[t + 1], t == episode.steps - 1)
        return history

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

    def _prompt_for(self, window_episode: int, episodes: list[dict[str, np.ndarray]], length: int):
        """The prompt of a window: the first `length` transitions of the best real episode other than
        the window's own (the target has no expert); while there is none, of the window's own
        episode, whose windows then start after the prompt ends (the prompt is their past)."""
        others = [i for i, e in enumerate(episodes) if i != window_episode and len(e["action"]) >= length]
        source = max(others, key=lambda i: float(episodes[i]["reward"].sum())) if others else window_episode
        episode = episodes[source]
        if len(episode["action"]) < length:
            return None, 0
        prompt = {key: episode[key][:length] for key in ("obs", "action", "reward")}
        return prompt, (0 if others else length)

    def __len__(self) -> int:
        """Real transitions so far."""
        return sum(len(e["action"]) for e in self.episodes) + len(self._action)

    def windows(
        self, count: int, length: int, prompt_length: int, rng: np.random.Generator, newest: int | None = None
    ) -> dict[str, list] | None:
        """`count` windows of `length` transitions (obs [length+1]) ending at uniformly drawn real steps,
        each with its prompt, at the target's own sizes; with `newest`, only windows whose last
        transition is one of the newest `newest` real transitions. None while no episode has room."""
        episodes = self.all_episodes()
        total, offset = sum(len(e["action"]) for e in episodes), 0
        choices = []
        for i, episode in enumerate(episodes):
            prompt, earliest = self._prompt_for(i, episodes, prompt_length)
            if newest is not None:  # the window's last transition, offset + start + length − 1, is recent
                earliest = max(earliest, total - newest - offset - length + 1)
            offset += len(episode["action"])
            room = len(episode["action"]) - length + 1 - earliest
            if prompt is not None and room > 0:
                choices.append((i, prompt, earliest, room))
        if not choices:
            return None
        sizes = np.array([room for *_, room in choices])
        out: dict[str, list] = {key: [] for key in ("obs", "action", "reward", "prompt_obs", "prompt_action", "prompt_reward")}
        for pick in rng.choice(len(choices), size=count, p=sizes / sizes.sum()):
            i, prompt, earliest, room = choices[pick]
            start = earliest + int(rng.integers(room))
            episode = episodes[i]
            out["obs"].append(episode["obs"][start : start + length + 1])
            out["action"].append(episode["action"][start : start + length])
            out["reward"].append(episode["reward"][start : start + length])
            for key in ("obs", "action", "reward"):
                out[f"prompt_{key}"].append(prompt[key])
        return out

    def model_batch(
        self, module, domain: int, count: int, length: int, rng: np.random.Generator, device: str | torch.device = "cpu",
        newest: int | None = None,
    ) -> Batch | None:
        """`batch(...)` sized for `module` (an `MrCoM`): its prompt length and padded sizes, domain id `domain`."""
        return self.batch(count, length, module.world_model.config.context_length, rng, domain=domain,
                          obs_max=max(module.obs_dims), act_max=max(module.act_dims), device=device, newest=newest)

    def batch(
        self, count: int, length: int, prompt_length: int, rng: np.random.Generator, *, domain: int, obs_max: int,
        act_max: int, device: str | torch.device = "cpu", newest: int | None = None,
    ) -> Batch | None:
        """`windows(...)` as the world model's batch of domain id `domain`."""
        windows = self.windows(count, length, prompt_length, rng, newest)
        if windows is None:
            return None
        return pad_batch(
            obs=np.stack(windows["obs"]),
            action=np.stack(windows["action"]),
            reward=np.stack(windows["reward"]),
            domain=np.full(count, domain),
            prompt_obs=np.stack(windows["prompt_obs"]),
            prompt_action=np.stack(windows["prompt_action"]),
            prompt_reward=np.stack(windows["prompt_reward"]).reshape(count, prompt_length),
            obs_max=obs_max,
            act_max=act_max,
            device=device,
        )

"""Episodes in memory and the streams of windows drawn from them (DESIGN.md §3).

`SplitEpisodes` holds one split's episodes and turns rows `(scenario, episode, start, prompt
episode, prompt start)` into batches (`mrcom_lightning.batch.pad_batch`), or, for MAMBA's
meta-episodes, rows `(scenario, start, prompt episode, prompt start, episode 1, ..., episode n)`
into sequences of n joined episodes (`meta_episodes.join_episodes`). `TrainStream` draws
such rows forever, domain-balanced and seeded per (rank, worker, batch); `ResumableDataLoader` counts what it
hands out so a resumed run continues the stream. `WindowSet` is the finite, fixed set of
windows that validation and test iterate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from mrcom_lightning.batch import Batch, pad_batch
from mrcom_lightning.datamodules.meta_episodes import episode_starts, join_episodes
from mrcom_lightning.data import POLICIES, EpisodeInfo, EpisodeStore
from mrcom_lightning.scenarios import ScenarioSpec
from mrcom_lightning.seeding import generator


def init_worker(worker_id: int) -> None:
    """DataLoader worker init: one thread per worker, so workers do not fight over cores."""
    torch.set_num_threads(1)


@dataclasses.dataclass
class SplitEpisodes:
    """The episodes of one split in memory, each at its domain's own sizes.

    Attributes:
        domain_dims: (observed obs dim, act dim) per domain id.
        obs, action, reward, terminal: per episode, `[steps+1, O]`, `[steps, A]`, `[steps]`, `[steps]`.
        scenario_domain: domain id of every scenario of the split `[S]`.
        scenario_label: the id written to `batch["scenario"]` (train index, or -1) `[S]`.
        windows: per scenario, the episodes that windows are cut from (at least T steps).
        prompts: per scenario, the episodes that prompts are cut from, best policy first: the
            best policy's episodes, then the next policy's (at least L steps each).
        prompt_ranks: per scenario, the policy rank (0 = best available) of each `prompts` entry.
        domain_scenarios: per domain id, the scenarios of that domain.
    """

    domain_dims: list[tuple[int, int]]
    obs: list[np.ndarray]
    action: list[np.ndarray]
    reward: list[np.ndarray]
    terminal: list[np.ndarray]
    scenario_domain: np.ndarray
    scenario_label: np.ndarray
    windows: list[np.ndarray]
    prompts: list[np.ndarray]
    prompt_ranks: list[np.ndarray]
    domain_scenarios: list[np.ndarray]

    def __post_init__(self) -> None:
        self.obs_max = max(o for o, _ in self.domain_dims)
        self.act_max = max(a for _, a in self.domain_dims)
        self.steps = np.array([len(r) for r in self.reward], np.int64)
        self._prompt_pools: dict[tuple[int, int], np.ndarray] = {}

    def prompt_pool(self, scenario: int, episode: int) -> np.ndarray:
        """The episodes a prompt of a window of `episode` may come from: the scenario's best
        policy's episodes other than `episode` itself (a prompt never holds the window's own
        past or future), or, when that leaves none, the next policy's."""
        key = (scenario, episode)
        if key not in self._prompt_pools:
            candidates, ranks = self.prompts[scenario], self.prompt_ranks[scenario]
            others = candidates != episode
            best = ranks[others].min() if others.any() else None
            self._prompt_pools[key] = candidates[others & (ranks == best)] if best is not None else candidates[:0]
        return self._prompt_pools[key]

    @classmethod
    def load(
        cls,
        root: str | Path,
        split: str,
        specs: Sequence[ScenarioSpec],
        labels: Sequence[int],
        domains: Sequence[str],
        domain_dims: Sequence[tuple[int, int]],
        window_policy: Optional[str],
        sequence_length: int,
        prompt_length: int,
    ) -> "SplitEpisodes":
        """Reads the episodes of `specs` from `root`; raises ValueError on missing or too-short data."""
        root = Path(root)
        store = EpisodeStore(root)
        indexed = [store.index(spec.id) for spec in specs]
        window_infos = [[i for i in infos if window_policy in (None, i.policy)] for infos in indexed]
        what = "episodes" if window_policy is None else f"{window_policy!r} episodes"

        for domain in domains:
            ks = [k for k, spec in enumerate(specs) if spec.domain == domain]
            if not ks:
                continue
            found = [i for k in ks for i in window_infos[k]]
            if not found:
                raise ValueError(
                    f"no {what} of domain {domain!r} ({split} split, {len(ks)} scenarios) in {root}; "
                    "collect them with `mrcom collect` or point data.dataset.root at a dataset that has them"
                )
            longest = max(i.steps for i in found)
            if longest < sequence_length:
                raise ValueError(
                    f"data.sequence_length={sequence_length} is longer than every episode of domain {domain!r} "
                    f"({split} split, longest: {longest} steps, in {root}); lower data.sequence_length"
                )

        needed: dict[Path, int] = {}
        windows, prompts, prompt_ranks = [], [], []
        for spec, infos, candidates in zip(specs, indexed, window_infos):
            if not candidates:
                raise ValueError(
                    f"scenario {spec} has no {what} in {root / spec.id}; the dataset was collected for "
                    "other scenarios or is incomplete: re-run `mrcom collect` or choose another data.dataset.root"
                )
            usable = [i for i in candidates if i.steps >= sequence_length]
            if not usable:
                raise ValueError(
                    f"data.sequence_length={sequence_length} is longer than every episode of scenario {spec} "
                    f"(longest: {max(i.steps for i in candidates)} steps, in {root / spec.id})"
                )
            ranked = [p for p in POLICIES if any(i.policy == p and i.steps >= prompt_length for i in infos)]
            if not ranked:
                raise ValueError(
                    f"data.prompt_length={prompt_length} is longer than every episode of scenario {spec} "
                    f"(longest: {max(i.steps for i in infos)} steps, in {root / spec.id})"
                )
            prompt_infos = [i for p in ranked[:2] for i in infos if i.policy == p and i.steps >= prompt_length]
            window_ids, prompt_ids = _ids(usable, needed), _ids(prompt_infos, needed)
            if len(prompt_ids) == 1 and prompt_ids[0] in window_ids:
                raise ValueError(
                    f"scenario {spec} has one episode to cut prompts from ({root / spec.id}), and windows come "
                    "from it too: a prompt must come from another episode of the scenario; collect at least two "
                    "episodes per scenario (data.dataset.episodes_per_scenario / test_episodes_per_scenario)"
                )
            windows.append(window_ids)
            prompts.append(prompt_ids)
            prompt_ranks.append(np.array([ranked.index(i.policy) for i in prompt_infos], np.int64))

        arrays: dict[str, list[np.ndarray]] = {"obs": [], "action": [], "reward": [], "terminal": []}
        for path in needed:  # insertion order = episode id
            episode = store.read(path)
            o, a = domain_dims[list(domains).index(episode.spec.domain)]
            if episode.obs.shape[1] != o or episode.action.shape[1] != a:
                raise ValueError(
                    f"episode {path} has obs dim {episode.obs.shape[1]} and act dim {episode.action.shape[1]}, "
                    f"but domain {episode.spec.domain!r} with obs_fn {episode.spec.obs_fn!r} has ({o}, {a})"
                )
            arrays["obs"].append(np.ascontiguousarray(episode.obs, np.float32))
            arrays["action"].append(np.ascontiguousarray(episode.action, np.float32))
            arrays["reward"].append(np.ascontiguousarray(episode.reward, np.float32))
            arrays["terminal"].append(np.ascontiguousarray(episode.terminal, bool))

        scenario_domain = np.array([list(domains).index(s.domain) for s in specs], np.int64)
        return cls(
            domain_dims=list(domain_dims),
            scenario_domain=scenario_domain,
            scenario_label=np.asarray(labels, np.int64),
            windows=windows,
            prompts=prompts,
            prompt_ranks=prompt_ranks,
            domain_scenarios=[np.flatnonzero(scenario_domain == d) for d in range(len(domains))],
            **arrays,
        )

    def batch(self, rows: np.ndarray, sequence_length: int, prompt_length: int) -> Batch:
        """The batch of `rows [B, 5]`: scenario, episode, start, prompt episode, prompt start."""
        T, L = sequence_length, prompt_length
        k, e, s, p, q = (rows[:, i] for i in range(5))
        return pad_batch(
            obs=[self.obs[i][j : j + T + 1] for i, j in zip(e, s)],
            action=[self.action[i][j : j + T] for i, j in zip(e, s)],
            reward=np.stack([self.reward[i][j : j + T] for i, j in zip(e, s)]),
            terminal=np.stack([self.terminal[i][j : j + T] for i, j in zip(e, s)]),
            domain=self.scenario_domain[k],
            scenario=self.scenario_label[k],
            prompt_obs=[self.obs[i][j : j + L] for i, j in zip(p, q)],
            prompt_action=[self.action[i][j : j + L] for i, j in zip(p, q)],
            prompt_reward=np.stack([self.reward[i][j : j + L] for i, j in zip(p, q)]).reshape(len(rows), L),
            obs_max=self.obs_max,
            act_max=self.act_max,
        )

    def _prompts(self, rng: np.random.Generator, scenario: np.ndarray, episode: np.ndarray, prompt_length: int):
        prompt = _pick(rng, [self.prompt_pool(k, e) for k, e in zip(scenario.tolist(), episode.tolist())])
        return prompt, rng.integers(0, self.steps[prompt] - prompt_length + 1)

    def draw_rows(
        self, rng: np.random.Generator, row_domains: np.ndarray, sequence_length: int, prompt_length: int
    ) -> np.ndarray:
        """Rows for the given domains: scenario uniform within the domain, then episode, then start."""
        scenario = np.empty(len(row_domains), np.int64)
        for d in np.unique(row_domains):
            at = row_domains == d
            pool = self.domain_scenarios[d]
            scenario[at] = pool[rng.integers(0, len(pool), at.sum())]
        episode = _pick(rng, [self.windows[k] for k in scenario])
        start = rng.integers(0, self.steps[episode] - sequence_length + 1)
        prompt, prompt_start = self._prompts(rng, scenario, episode, prompt_length)
        return np.stack([scenario, episode, start, prompt, prompt_start], 1)

    def check_meta_episodes(self, episodes: int) -> None:
        """Raises ValueError unless every scenario has `episodes` distinct episodes to join."""
        for k, pool in enumerate(self.windows):
            if len(pool) < episodes:
                raise ValueError(
                    f"data.meta_episodes={episodes} joins that many episodes of one scenario, but training scenario "
                    f"{k} has {len(pool)} of at least data.sequence_length steps; raise "
                    "data.dataset.episodes_per_scenario or lower data.meta_episodes"
                )

    def draw_meta_rows(
        self, rng: np.random.Generator, row_domains: np.ndarray, sequence_length: int, prompt_length: int, episodes: int
    ) -> np.ndarray:
        """Meta-episode rows `[B, 4 + n]`: scenario (uniform within the domain), start, prompt episode,
        prompt start, then n distinct episodes of the scenario in random order. The sequence of T
        transitions starts so that it spans the boundary between two of them (one drawn uniformly),
        with at least one observation of each: every episode is at least T steps long, so a sequence
        from the meta-episode's start, as MAMBA takes them, would never leave its first episode."""
        rows = self.draw_rows(rng, row_domains, sequence_length, prompt_length)
        scenario, prompt, prompt_start = rows[:, 0], rows[:, 3], rows[:, 4]
        chosen = np.stack([rng.permutation(self.windows[k])[:episodes] for k in scenario])
        boundary = rng.integers(1, episodes, len(rows))  # the first observation of episode `boundary`
        at = np.array([episode_starts(self.steps[e])[j] for e, j in zip(chosen, boundary)], np.int64)
        start = at - sequence_length + 1 + rng.integers(0, sequence_length - 1, len(rows))
        return np.concatenate([np.stack([scenario, start, prompt, prompt_start], 1), chosen], 1)

    def meta_batch(self, rows: np.ndarray, sequence_length: int, prompt_length: int) -> Batch:
        """The batch of meta-episode rows (`draw_meta_rows`), with `reset` [B, T+1]."""
        T, L = sequence_length, prompt_length
        joined = [
            join_episodes(*([getattr(self, key)[e] for e in row[4:]] for key in ("obs", "action", "reward", "terminal")))
            for row in rows
        ]
        starts = rows[:, 1]
        batch = pad_batch(
            obs=[j["obs"][s : s + T + 1] for j, s in zip(joined, starts)],
            action=[j["action"][s : s + T] for j, s in zip(joined, starts)],
            reward=np.stack([j["reward"][s : s + T] for j, s in zip(joined, starts)]),
            terminal=np.stack([j["terminal"][s : s + T] for j, s in zip(joined, starts)]),
            domain=self.scenario_domain[rows[:, 0]],
            scenario=self.scenario_label[rows[:, 0]],
            prompt_obs=[self.obs[i][j : j + L] for i, j in zip(rows[:, 2], rows[:, 3])],
            prompt_action=[self.action[i][j : j + L] for i, j in zip(rows[:, 2], rows[:, 3])],
            prompt_reward=np.stack([self.reward[i][j : j + L] for i, j in zip(rows[:, 2], rows[:, 3])]).reshape(len(rows), L),
            obs_max=self.obs_max,
            act_max=self.act_max,
        )
        batch["reset"] = torch.as_tensor(np.stack([j["reset"][s : s + T + 1] for j, s in zip(joined, starts)]))
        return batch

    def fixed_rows(self, rng: np.random.Generator, sequence_length: int, prompt_length: int) -> np.ndarray:
        """Non-overlapping windows of every episode of every scenario, each with a seeded prompt."""
        rows = [
            (k, e, s)
            for k, episodes in enumerate(self.windows)
            for e in episodes.tolist()
            for s in range(0, int(self.steps[e]) - sequence_length + 1, sequence_length)
        ]
        if not rows:
            return np.zeros((0, 5), np.int64)
        scenario, episode, start = np.array(rows, np.int64).T
        prompt, prompt_start = self._prompts(rng, scenario, episode, prompt_length)
        return np.stack([scenario, episode, start, prompt, prompt_start], 1)


def _ids(infos: list[EpisodeInfo], needed: dict[Path, int]) -> np.ndarray:
    return np.array([needed.setdefault(i.path, len(needed)) for i in infos], np.int64)


def _pick(rng: np.random.Generator, pools: list[np.ndarray]) -> np.ndarray:
    index = rng.integers(0, [len(pool) for pool in pools])
    return np.array([pool[i] for pool, i in zip(pools, index.tolist())], np.int64)


class TrainStream(IterableDataset):
    """The infinite, domain-balanced training stream of one rank.

    Batch `i` of worker `w` on rank `r` is drawn from `np.random.default_rng([seed, r, w, i])`,
    so the streams of all (rank, worker) pairs differ and any position is reached in O(1).
    Every batch has `B // n_domains` rows of each domain; the `B % n_domains` remaining rows
    rotate through the domains with the batch's position in the rank's stream. `start` is the
    number of batches of this rank's stream already handed out; iteration continues from it.
    With `meta_episodes` = n >= 2 the rows are sequences of n joined episodes of one scenario that
    span an episode boundary, with the `reset` flag (MAMBA's meta-episodes, `SplitEpisodes.draw_meta_rows`).
    """

    def __init__(
        self,
        episodes: SplitEpisodes,
        batch_size: int,
        sequence_length: int,
        prompt_length: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        meta_episodes: int = 0,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if meta_episodes >= 2:
            episodes.check_meta_episodes(meta_episodes)
        self.meta_episodes = meta_episodes
        self.episodes = episodes
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        self.prompt_length = prompt_length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = 0

    def row_domains(self, position: int) -> np.ndarray:
        """The domain of every row of the rank's batch number `position`."""
        n = len(self.episodes.domain_scenarios)
        base, extra = divmod(self.batch_size, n)
        counts = np.full(n, base)
        for k in range(extra):
            counts[(position * extra + k) % n] += 1
        return np.repeat(np.arange(n), counts)

    def batch(self, worker: int, index: int, num_workers: int = 1) -> Batch:
        """Batch number `index` of worker `worker` (of `num_workers`) on this rank."""
        rng = generator(self.seed, self.rank, worker, index)
        domains = self.row_domains(index * num_workers + worker)
        if self.meta_episodes >= 2:
            rows = self.episodes.draw_meta_rows(rng, domains, self.sequence_length, self.prompt_length, self.meta_episodes)
            return self.episodes.meta_batch(rows, self.sequence_length, self.prompt_length)
        rows = self.episodes.draw_rows(rng, domains, self.sequence_length, self.prompt_length)
        return self.episodes.batch(rows, self.sequence_length, self.prompt_length)

    def __iter__(self):
        info = get_worker_info()
        num_workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        # DataLoader asks workers round-robin from worker 0: this worker serves global batches
        # start + worker_id, start + worker_id + W, ..., which belong to worker (start + id) % W.
        position = self.start + worker_id
        worker, index = position % num_workers, position // num_workers
        while True:
            yield self.batch(worker, index, num_workers)
            index += 1


class ResumableDataLoader(DataLoader):
    """The training loader: whole batches from a `TrainStream`, with a resumable position.

    `state_dict()` is `{"batches": n}`, the batches the main process has taken from this loader;
    after `load_state_dict`, the next iteration continues the stream at batch `n` (each worker
    jumps to its own continuation), so a resumed run sees no batch twice. Resume with the same
    `num_workers`, world size and seed, or the stream is a different one.

    Lightning 2.6 saves this state in checkpoints and restores it, but only when resuming a fit
    (`ckpt_path=...`), and not when `configure_optimizers` reads
    `trainer.estimated_stepping_batches`, which builds the loader before the restore (Lightning
    issue 20550): the stream then restarts from batch 0. Lightning also fetches one batch ahead
    of the training step, so the saved count includes that batch and the resumed run skips it.
    """

    def __init__(self, dataset: TrainStream, **kwargs):
        super().__init__(dataset, batch_size=None, **kwargs)
        self.batches_taken = 0
        self._iterator_start: Optional[int] = None

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches_taken}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.batches_taken = int(state_dict["batches"])

    def __iter__(self):
        if self._iterator is not None and self._iterator_start != self.batches_taken:
            # Persistent workers hold a copy of the stream at its old start: start fresh ones.
            self._iterator._shutdown_workers()
            self._iterator = None
        self.dataset.start = self._iterator_start = self.batches_taken
        return self._count(super().__iter__())

    def _count(self, iterator):
        for batch in iterator:
            self.batches_taken += 1
            yield batch


class WindowSet(Dataset):
    """A fixed, finite set of windows (validation and test): item i is row i, `collate` builds the batch."""

    def __init__(self, episodes: SplitEpisodes, sequence_length: int, prompt_length: int, seed: int | Sequence[int]):
        self.episodes = episodes
        self.sequence_length = sequence_length
        self.prompt_length = prompt_length
        self.rows = episodes.fixed_rows(np.random.default_rng(seed), sequence_length, prompt_length)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.rows[index]

    def collate(self, rows: list[np.ndarray]) -> Batch:
        return self.episodes.batch(np.stack(rows), self.sequence_length, self.prompt_length)

"""`mrcom collect`: behaviour episodes for a meta-scenario set, in parallel and resumable (DESIGN.md §3).

Every episode has a fixed place (scenario, policy, index) and a seed derived from the
dataset seed and that place, so a re-run after a kill writes exactly the missing episodes,
and one worker or many give the same files. With the `sac` behaviour, one SAC agent per
domain is trained across that domain's training scenarios: its replay becomes the `mix`
data, its final policy the `expert` and the snapshot whose evaluation return is closest to
half of the expert's the `medium` one (Table 5 of the paper).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from mrcom_lightning.agents import SAC
from mrcom_lightning.checkpoints import load_checkpoint
from mrcom_lightning.data.behaviour import train_behaviour_agents
from mrcom_lightning.data.dataset import DatasetConfig
from mrcom_lightning.data.episodes import POLICIES, Episode, EpisodeStore, atomic_write
from mrcom_lightning.scenarios import SPLITS, ScenarioEnv, ScenarioSpec, make_env
from mrcom_lightning.seeding import derive_seed

__all__ = ["DatasetConfig", "collect", "is_complete", "episode_seed", "run_episode"]

MANIFEST = "dataset.json"


@dataclasses.dataclass(frozen=True)
class _Job:
    spec: ScenarioSpec
    policy: str
    index: int
    episode_steps: int
    seed: int
    agent_path: Optional[str]


def episode_seed(dataset_seed: int, spec: ScenarioSpec, policy: str, index: int) -> int:
    """The seed of one episode, from its place in the dataset only."""
    return derive_seed(dataset_seed, spec.id, POLICIES.index(policy), index)


_AGENTS: dict[str, SAC] = {}  # per worker process: each behaviour agent is loaded once


def _load_agent(path: str) -> SAC:
    if path not in _AGENTS:
        _AGENTS[path] = SAC.from_checkpoint(load_checkpoint(path))  # weights only: never runs code from the file
    return _AGENTS[path]


_ENV: dict[tuple[ScenarioSpec, int], ScenarioEnv] = {}  # per worker process: the last scenario's environment


def _scenario_env(spec: ScenarioSpec, episode_steps: int, seed: int) -> ScenarioEnv:
    """The environment of `spec`, seeded for one episode; reused while jobs stay on one scenario.

    Compiling a scenario's MJCF costs about as much as stepping a few hundred steps; a
    reseeded environment gives the same episodes as a fresh `make_env(spec, seed=seed)`.
    """
    key = (spec, episode_steps)
    if key in _ENV:
        _ENV[key].reseed(seed)
    else:
        _ENV.clear()
        _ENV[key] = make_env(spec, seed=seed, episode_steps=episode_steps)
    return _ENV[key]


def run_episode(env, policy, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rolls one episode with `policy(obs) -> action` (None: uniform random actions)."""
    observations, actions, rewards = [env.reset()], [], []
    done = False
    while not done:
        action = env.random_action(rng) if policy is None else policy(observations[-1])
        obs, reward, done = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
    return np.stack(observations), np.stack(actions), np.asarray(rewards, dtype=np.float32)


def _collect_one(item: tuple[str, _Job]) -> str:
    store_root, job = item
    env = _scenario_env(job.spec, job.episode_steps, job.seed)
    rng = np.random.default_rng(job.seed)
    policy = None
    if job.agent_path is not None:
        agent = _load_agent(job.agent_path)
        agent.generator.manual_seed(job.seed)
        policy = lambda obs: agent.act(obs, deterministic=False)  # noqa: E731
    obs, action, reward = run_episode(env, policy, rng)
    episode = Episode(obs, action, reward, np.zeros(len(reward), bool), job.spec, job.policy, job.seed)
    return str(EpisodeStore(store_root).write(episode, job.index))


def _init_worker() -> None:
    torch.set_num_threads(1)


def _check_manifest(config: DatasetConfig) -> None:
    path = Path(config.root) / MANIFEST
    wanted = config.to_dict()
    if path.exists():
        found = json.loads(path.read_text()).get("config")
        if found != wanted:
            changed = sorted(k for k in wanted if found is None or found.get(k) != wanted[k])
            raise ValueError(
                f"dataset at {config.root} was collected with other settings ({', '.join(changed)} differ); "
                "choose another data.root or delete the directory"
            )
        return
    _write_manifest(config, complete=False)


def _write_manifest(config: DatasetConfig, complete: bool) -> None:
    payload = json.dumps({"config": config.to_dict(), "complete": complete}, indent=1).encode()
    atomic_write(Path(config.root) / MANIFEST, lambda f: f.write(payload))


def is_complete(root: str | Path) -> bool:
    path = Path(root) / MANIFEST
    return path.exists() and json.loads(path.read_text()).get("complete", False)


def _jobs(config: DatasetConfig, agents: dict[tuple[str, str], str]) -> list[_Job]:
    store = EpisodeStore(config.root)
    jobs = []
    for split in SPLITS:
        count = config.episodes_per_scenario if split == "train" else config.test_episodes_per_scenario
        for spec in config.scenarios.draw(split):
            store.write_spec(spec)
            for policy in config.policies:
                if policy == "mix":  # SAC's own replay, written when the agent trains
                    continue
                done = store.existing_indices(spec, policy)
                for index in range(count):
                    if index not in done:
                        seed = episode_seed(config.seed, spec, policy, index)
                        jobs.append(_Job(spec, policy, index, config.episode_steps, seed, agents.get((spec.domain, policy))))
    return jobs


def collect(config: DatasetConfig, workers: int = 1, progress: bool = True) -> Path:
    """Collects whatever of the dataset is missing; returns its root."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _check_manifest(config)
    store = EpisodeStore(config.root)
    store.clean()
    agents = {}
    if config.behaviour == "sac":
        agents = train_behaviour_agents(config, store, progress=progress)
    jobs = _jobs(config, agents)
    bar = tqdm(total=len(jobs), desc="collect episodes", unit="ep", disable=not progress or not jobs)
    if workers == 1:
        _init_worker()
        for job in jobs:
            _collect_one((config.root, job))
            bar.update()
        _ENV.clear()  # this process goes on (e.g. training): keep no environment alive
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            for _ in pool.map(_collect_one, [(config.root, job) for job in jobs], chunksize=1):
                bar.update()
    bar.close()
    _write_manifest(config, complete=True)
    return Path(config.root)

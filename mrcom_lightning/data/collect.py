"""`mrcom collect`: behaviour episodes for a meta-scenario set, in parallel and resumable (DESIGN.md §3).

Every episode has a fixed place (scenario, policy, index) and a seed derived from the
dataset seed and that place, so a re-run after a kill writes exactly the missing episodes,
and one worker or many give the same files. With the `sac` behaviour, one scenario-conditioned
SAC agent per domain (shipped with the package, or trained with `train_agents`) gives each
scenario its `expert` and `medium` policies and the `mix` data (Table 5 of the paper; see
`mrcom_lightning.data.behaviour`). When the dataset is complete, each policy's mean score per
domain (100 × return / episode_steps, the percentage of the episode's maximum) is printed and
written to `dataset.json`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import pickle
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from mrcom_lightning.agents import SAC
from mrcom_lightning.data.behaviour import agent_folder, train_domain
from mrcom_lightning.data.conditioning import SCENARIO_PARAMETERS, condition
from mrcom_lightning.data.dataset import DatasetConfig
from mrcom_lightning.data.episodes import POLICIES, Episode, EpisodeStore, atomic_write
from mrcom_lightning.data.shipped import install_shipped, shipped_summary
from mrcom_lightning.scenarios import DOMAINS, SPLITS, Domain, ScenarioEnv, ScenarioSpec, get_domain, make_env
from mrcom_lightning.scenarios.domains import PAPER_DRAW_KEYS
from mrcom_lightning.scenarios.mjcf import scaled_model_xml
from mrcom_lightning.seeding import derive_seed

__all__ = ["DatasetConfig", "collect", "dataset_scores", "format_scores", "is_complete", "episode_seed", "run_episode"]

MANIFEST = "dataset.json"
MODELS_KEY = "scenario_models"  # the manifest's digest of the scenarios' MuJoCo models


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
    """The behaviour agent saved at `path` by `SAC.checkpoint()`, loaded weights-only.

    Agent files are read like model checkpoints (`mrcom_lightning.checkpoints`): anything but
    tensors, plain data and the project's config classes is refused, never run.
    """
    from mrcom_lightning.checkpoints import load_checkpoint

    if path not in _AGENTS:
        _AGENTS[path] = SAC.from_checkpoint(load_checkpoint(path))
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
        if agent.obs_dim != env.obs_dim + SCENARIO_PARAMETERS:
            raise ValueError(
                f"behaviour agent {job.agent_path} takes {agent.obs_dim} inputs, scenario {job.spec} needs "
                f"{env.obs_dim} + {SCENARIO_PARAMETERS} (observation and scenario parameters): "
                "it belongs to another domain or obs_fn"
            )
        agent.generator.manual_seed(job.seed)
        policy = lambda obs: agent.act(condition(obs, job.spec), deterministic=False)  # noqa: E731
    obs, action, reward = run_episode(env, policy, rng)
    episode = Episode(obs, action, reward, np.zeros(len(reward), bool), job.spec, job.policy, job.seed)
    return str(EpisodeStore(store_root).write(episode, job.index))


def _init_worker(domains: tuple[Domain, ...] = ()) -> None:
    torch.set_num_threads(1)
    for entry in domains:  # registered in the parent only (a script, a test): unknown to a spawned process
        DOMAINS.setdefault(entry.name, entry)


def _worker_domains(config: DatasetConfig) -> tuple[Domain, ...]:
    """The registry entries of the dataset's domains other than the paper's, checked to pickle.

    Plugins reach spawned workers by themselves (`scenarios.plugins`); a domain registered by a
    script or a test does not, so its entry is sent along, by reference to its task and model.
    """
    entries = tuple(DOMAINS[d] for d in config.scenarios.domains if d not in PAPER_DRAW_KEYS)
    main_has_file = hasattr(sys.modules["__main__"], "__file__")  # else spawn cannot re-import it
    for entry in entries:
        try:
            pickle.dumps(entry)
            parts = (entry.task, entry.model, entry.physics)
            if not main_has_file and any(getattr(p, "__module__", None) == "__main__" for p in parts):
                raise pickle.PicklingError("its task or model is defined in an interactive __main__")
        except Exception as err:
            raise ValueError(
                f"domain {entry.name!r} cannot be sent to the collection workers ({err}); define its task "
                "and model at module level, register it in a module named with --domains_module, or use workers=1"
            ) from err
    return entries


def check_manifest(config: DatasetConfig) -> None:
    """Refuses a dataset at `config.root` collected with other settings (naming them) or from
    scenarios whose MuJoCo models the current code builds otherwise; starts the manifest of a new
    one. Where the dataset lies (`root`) is not a setting: a moved one is fine."""
    path = Path(config.root) / MANIFEST
    wanted = config.to_dict() | {"root": None}
    if path.exists():
        manifest = json.loads(path.read_text())
        found = manifest.get("config")
        if found is not None:  # settings added since the dataset was written count as their defaults
            found = _with_defaults(found, DatasetConfig().to_dict()) | {"root": None}
        if found != wanted:
            changed = sorted(k for k in wanted if found is None or found.get(k) != wanted[k])
            raise ValueError(
                f"dataset at {config.root} was collected with other settings ({', '.join(changed)} differ); "
                "choose another data.root or delete the directory"
            )
        models = manifest.get(MODELS_KEY)
        if models is None:
            print(f"warning: {path} records no digest of its scenarios' MuJoCo models (written before "
                  "2026-12-06): the data cannot be checked against the scenarios the code builds now; "
                  "delete the directory to collect it anew", file=sys.stderr)  # fmt: skip
            return
        changed = sorted(k for k, v in scenario_models_digest(config).items() if models.get(k, v) != v)
        if changed:
            raise ValueError(
                f"dataset at {config.root} was collected from scenarios whose MuJoCo models the code now "
                f"builds otherwise ({', '.join(changed)}; the digests in {path} differ: the torso scaling or a "
                "domain's model changed since); delete the directory to collect it anew"
            )
        return
    _write_manifest(config, complete=False)


def scenario_models_digest(config: DatasetConfig) -> dict[str, str]:
    """Scenario id -> the digest of the MJCF text the code builds for it (its torso scaled), for
    every scenario of the set: the same settings give other data when one of these changes."""
    digests = {}
    for split in SPLITS:
        for spec in config.scenarios.draw(split):
            xml = scaled_model_xml(get_domain(spec.domain), spec.length_scale, spec.size_scale)
            digests[spec.id] = hashlib.sha1(xml.encode()).hexdigest()[:12]
    return digests


def _with_defaults(found: dict, defaults: dict) -> dict:
    """`found` with the keys it lacks taken from `defaults`, nested dicts included."""
    merged = dict(found)
    for key, value in defaults.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = _with_defaults(merged[key], value)
    return merged


def _write_manifest(config: DatasetConfig, complete: bool, scores: dict | None = None) -> None:
    manifest = {"config": config.to_dict(), "complete": complete, MODELS_KEY: scenario_models_digest(config)}
    manifest |= {"scores": scores} if scores else {}
    payload = json.dumps(manifest, indent=1).encode()
    atomic_write(Path(config.root) / MANIFEST, lambda f: f.write(payload))


def policy_scores(config: DatasetConfig) -> dict[str, dict[str, dict[str, float]]]:
    """split -> policy -> domain -> mean score of the episodes written (100 × return / steps).

    dm_control's rewards lie in [0, 1] per step, so the score is the return in percent of the
    episode's maximum, the unit of the paper's tables.
    """
    store = EpisodeStore(config.root)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for split in SPLITS:
        per_policy: dict[str, dict[str, list[float]]] = {}
        for spec in config.scenarios.draw(split):
            for info in store.index(spec.id):
                reward = store.read(info.path).reward
                per_policy.setdefault(info.policy, {}).setdefault(spec.domain, []).append(100 * reward.sum() / len(reward))
        if per_policy:
            scores[split] = {
                policy: {domain: round(float(np.mean(v)), 2) for domain, v in sorted(domains.items())}
                for policy, domains in per_policy.items()
            }
    return scores


def format_scores(scores: dict[str, dict[str, dict[str, float]]]) -> str:
    """The scores as a table: one row per split and policy, one column per domain."""
    domains = sorted({d for split in scores.values() for policy in split.values() for d in policy})
    width = max([len("split")] + [len(split) for split in scores]) + 2
    lines = [
        "behaviour scores (100 x episode return / steps, mean per domain)",
        f"{'split':<{width}}{'policy':<8}" + "".join(f"{d:>9}" for d in domains),
    ]
    for split, policies in scores.items():
        for policy, values in policies.items():
            lines.append(f"{split:<{width}}{policy:<8}" + "".join(f"{values.get(d, float('nan')):>9.1f}" for d in domains))
    return "\n".join(lines)


def dataset_scores(root: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """The scores `collect` wrote to a complete dataset's `dataset.json` (see `policy_scores`)."""
    return json.loads((Path(root) / MANIFEST).read_text()).get("scores", {})


def is_complete(root: str | Path) -> bool:
    path = Path(root) / MANIFEST
    return path.exists() and json.loads(path.read_text()).get("complete", False)


def behaviour_agents(config: DatasetConfig, store: EpisodeStore, progress: bool = True) -> dict[tuple[str, str], list[str]]:
    """(scenario id, policy) -> the agent files whose episodes it gets (episode k: file k mod len).

    Trains each domain's agent (`train_agents`) or installs the shipped one into the dataset.
    `mix` appears only for shipped agents: trained ones wrote their replay as the mix data.
    """
    agents = {}
    for domain in config.scenarios.domains:
        if config.train_agents:
            summary = train_domain(config, domain, store, progress)
        else:
            summary = install_shipped(config, domain)
        folder = agent_folder(config.root, domain)
        train = [spec for spec in config.scenarios.train if spec.domain == domain]
        for split in SPLITS:
            for spec in config.scenarios.draw(split):
                if spec.domain != domain:
                    continue
                picks = summary["scenarios"][spec.id] if split == "train" else summary["held_out"]
                for policy in ("expert", "medium"):
                    agents[(spec.id, policy)] = [str(folder / picks[policy]["file"])]
        if summary["source"] == "shipped":
            mix = [str(folder / name) for name in summary["mix_snapshots"]]
            for i, spec in enumerate(train):  # scenario i starts at the i-th file: all of them are used
                agents[(spec.id, "mix")] = mix[i % len(mix) :] + mix[: i % len(mix)]
    return agents


def _jobs(config: DatasetConfig, agents: dict[tuple[str, str], list[str]]) -> list[_Job]:
    store = EpisodeStore(config.root)
    jobs = []
    for split in SPLITS:
        count = config.episodes_per_scenario if split == "train" else config.test_episodes_per_scenario
        for spec in config.scenarios.draw(split):
            store.write_spec(spec)
            for policy in config.policies:
                files = agents.get((spec.id, policy))
                if policy == "mix" and files is None:  # the replay of a trained agent, or not a training scenario
                    continue
                done = store.existing_indices(spec, policy)
                for index in range(count):
                    if index not in done:
                        seed = episode_seed(config.seed, spec, policy, index)
                        path = None if files is None else files[index % len(files)]
                        jobs.append(_Job(spec, policy, index, config.episode_steps, seed, path))
    return jobs


def collect(config: DatasetConfig, workers: int = 1, progress: bool = True) -> Path:
    """Collects whatever of the dataset is missing; returns its root."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if config.behaviour == "sac" and not config.train_agents:
        for domain in config.scenarios.domains:  # refuse before anything is written
            shipped_summary(config, domain)
    check_manifest(config)
    store = EpisodeStore(config.root)
    store.clean()
    agents = {}
    if config.behaviour == "sac":
        agents = behaviour_agents(config, store, progress=progress)
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
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(_worker_domains(config),)
        )
        with pool:
            for _ in pool.map(_collect_one, [(config.root, job) for job in jobs], chunksize=1):
                bar.update()
    bar.close()
    _write_manifest(config, complete=True, scores=policy_scores(config))
    return Path(config.root)

"""SAC behaviour agents for `mrcom collect --dataset.behaviour sac` (DESIGN.md §3, Table 5).

One agent per domain learns across that domain's training scenarios (episode i runs on
training scenario i mod n), conditioned on each scenario's parameters
(`mrcom_lightning.data.conditioning`), so that it can be an expert of every one of them.
At every evaluation its policy is saved as a snapshot. Afterwards every snapshot is evaluated
on every training scenario: on each scenario the best snapshot is that scenario's `expert`, the
one whose return is closest to half of the expert's its `medium` policy. Validation and test
scenarios use the snapshot best on average over the training scenarios (and for `medium` the
one closest to half of that average), conditioned on their own parameters. The agent's replay,
cut back into whole episodes, is the `mix` data (agents shipped with the package have no
replay: `mrcom_lightning.data.shipped`).

Layout of `<root>/_agents/<domain>/`: `snapshot-<step>.pt` (policy files, `SAC.policy_checkpoint()`),
`training.json` (the evaluation log, rewritten at every evaluation) and `summary.json`
(written last: the agent, its selection and its mix data are complete).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mrcom_lightning.agents import EVAL_SEED, SAC, SACConfig, TrainResult, evaluate, train_sac
from mrcom_lightning.data.conditioning import ConditionedEnv, strip
from mrcom_lightning.data.dataset import DatasetConfig
from mrcom_lightning.data.episodes import Episode, EpisodeStore, atomic_write
from mrcom_lightning.scenarios import ScenarioSpec, make_env
from mrcom_lightning.seeding import derive_seed

AGENTS_DIR = "_agents"
SUMMARY, TRAINING_LOG = "summary.json", "training.json"
EVALUATIONS = 10  # snapshots per run, among which expert and medium are chosen
SELECTION_EPISODES = 2  # deterministic episodes per snapshot and training scenario


def agent_folder(root: str | Path, domain: str) -> Path:
    return Path(root) / AGENTS_DIR / domain


def snapshot_name(step: int) -> str:
    return f"snapshot-{step:07d}.pt"


def write_json(path: Path, data: dict | list) -> None:
    payload = json.dumps(data, indent=1).encode()
    atomic_write(path, lambda f: f.write(payload))


def _save(path: Path, checkpoint: dict) -> None:
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def _domain_of(specs: Sequence[ScenarioSpec]) -> str:
    domains = {spec.domain for spec in specs}
    if len(domains) != 1:
        raise ValueError(f"a behaviour agent learns one domain, got scenarios of {sorted(domains)}")
    return domains.pop()


def train_agent(
    specs: Sequence[ScenarioSpec],
    steps: int,
    sac: SACConfig,
    seed: int,
    episode_steps: int,
    folder: Path,
    evaluations: int = EVALUATIONS,
    progress: bool = True,
    shaping: str = "none",
) -> TrainResult:
    """Trains the scenario-conditioned SAC of one domain across `specs`; writes its snapshots and log.

    Training episode i runs on `specs[i % n]`; each of the `evaluations` evaluations runs one
    deterministic episode per scenario, saves the policy as `snapshot-<step>.pt` and rewrites
    `training.json` (step, mean return, seconds), so a long run can be followed as it goes.
    `shaping` (`conditioning.SHAPINGS`) changes the training episodes' reward only: evaluations
    and the returns logged are the task's.
    """
    domain, n = _domain_of(specs), len(specs)

    def make(index: int) -> ConditionedEnv:
        if index >= EVAL_SEED:  # evaluation episode j runs on scenario j mod n
            j = index - EVAL_SEED
            spec, env_seed = specs[j % n], derive_seed(seed, "behaviour-eval", domain, j)
            return ConditionedEnv(make_env(spec, seed=env_seed, episode_steps=episode_steps))
        spec, env_seed = specs[index % n], derive_seed(seed, "behaviour", domain, index)
        return ConditionedEnv(make_env(spec, seed=env_seed, episode_steps=episode_steps), shaping)

    folder.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    start = time.perf_counter()

    def on_eval(step: int, mean_return: float, agent: SAC) -> None:
        _save(folder / snapshot_name(step), agent.policy_checkpoint())
        log.append({"step": step, "return": round(mean_return, 2), "seconds": round(time.perf_counter() - start, 1)})
        write_json(folder / TRAINING_LOG, log)
        if progress:
            tqdm.write(f"{domain}: step {step} mean return {mean_return:.1f} over {n} scenarios ({log[-1]['seconds']:.0f} s)")

    return train_sac(
        make,
        steps,
        sac,
        seed=derive_seed(seed, "behaviour-agent", domain),
        eval_every=max(1, steps // evaluations),
        eval_episodes=n,
        on_eval=on_eval,
        progress=progress,
    )


def evaluate_snapshots(
    folder: Path, specs: Sequence[ScenarioSpec], seed: int, episode_steps: int, episodes: int = SELECTION_EPISODES
) -> list[dict]:
    """Every snapshot in `folder`, with its mean deterministic return on each scenario of `specs`.

    Returns `[{"step", "file", "returns": {scenario id: return}, "mean_return"}]` in step order;
    the episodes' initial states are seeded by (seed, scenario, episode) only, so every
    snapshot meets the same ones.
    """
    from mrcom_lightning.checkpoints import load_checkpoint

    paths = sorted(folder.glob("snapshot-*.pt"))
    if not paths:
        raise FileNotFoundError(f"no snapshot-*.pt in {folder}: train the agent first")
    envs = {spec.id: ConditionedEnv(make_env(spec, seed=seed, episode_steps=episode_steps)) for spec in specs}
    rows = []
    for path in paths:
        agent = SAC.from_checkpoint(load_checkpoint(path))
        returns = {}
        for spec in specs:
            env = envs[spec.id]

            def reseeded(j: int, env=env, spec=spec) -> ConditionedEnv:
                env.env.reseed(derive_seed(seed, "behaviour-select", spec.id, j))
                return env

            returns[spec.id] = round(float(np.mean(evaluate(agent, reseeded, episodes, seed=0))), 2)
        step = int(path.stem.split("-")[1])
        rows.append({"step": step, "file": path.name, "returns": returns, "mean_return": round(float(np.mean(list(returns.values()))), 2)})
    return rows


def _pick(snapshot: dict, value: float) -> dict:
    return {"step": snapshot["step"], "file": snapshot["file"], "return": value}


def select_policies(snapshots: list[dict], specs: Sequence[ScenarioSpec], mix_snapshots: int = 4) -> dict:
    """Expert and medium snapshots per training scenario, for held-out scenarios, and the mix snapshots.

    Per training scenario: `expert` is the snapshot with the best return there, `medium` the one
    whose return there is closest to half of the expert's. Held-out scenarios (val, test ID and
    OOD), whose returns are unknown, get the snapshot best on average over the training scenarios
    and the one closest to half of that average. `mix_snapshots` snapshots evenly spaced over
    training are listed too: their sampled episodes stand in for the replay where it is not at
    hand (shipped agents).
    """
    scenarios = {}
    for spec in specs:
        expert = max(snapshots, key=lambda s: s["returns"][spec.id])
        half = expert["returns"][spec.id] / 2
        medium = min(snapshots, key=lambda s: abs(s["returns"][spec.id] - half))
        scenarios[spec.id] = {
            "expert": _pick(expert, expert["returns"][spec.id]),
            "medium": _pick(medium, medium["returns"][spec.id]),
        }
    best = max(snapshots, key=lambda s: s["mean_return"])
    medium = min(snapshots, key=lambda s: abs(s["mean_return"] - best["mean_return"] / 2))
    spaced = np.unique(np.linspace(0, len(snapshots) - 1, min(mix_snapshots, len(snapshots))).round().astype(int))
    return {
        "scenarios": scenarios,
        "held_out": {"expert": _pick(best, best["mean_return"]), "medium": _pick(medium, medium["mean_return"])},
        "mix_snapshots": [snapshots[i]["file"] for i in spaced],
    }


def agent_settings(config: DatasetConfig, domain: str) -> dict:
    """The dataset settings a domain's behaviour agent is tied to (checked before shipped agents are used)."""
    scenarios = config.scenarios
    return {
        "domain": domain,
        "episode_steps": config.episode_steps,
        "scenarios.alpha": scenarios.alpha,
        "scenarios.beta": list(scenarios.beta),
        "scenarios.obs_fn": scenarios.obs_fn,
        "scenarios.num_train": scenarios.num_train,
        "scenarios.seed": scenarios.seed,
    }


def summarise(
    config: DatasetConfig, domain: str, folder: Path, sac: SACConfig, steps: int, seconds: float, source: str
) -> dict:
    """The summary of the agent in `folder`: its snapshots evaluated on the domain's training scenarios, and its selection."""
    specs = [spec for spec in config.scenarios.train if spec.domain == domain]
    snapshots = evaluate_snapshots(folder, specs, derive_seed(config.seed, "behaviour-select"), config.episode_steps)
    training = json.loads((folder / TRAINING_LOG).read_text()) if (folder / TRAINING_LOG).exists() else []
    return {
        "settings": agent_settings(config, domain),
        "source": source,
        "sac": dataclasses.asdict(sac),
        "sac_steps": steps,
        "seconds": round(seconds, 1),
        "training": training,
        "snapshots": snapshots,
        **select_policies(snapshots, specs),
    }


def train_domain(config: DatasetConfig, domain: str, store: EpisodeStore, progress: bool) -> dict:
    """Trains (or finds) the behaviour agent of one domain and writes its `mix` episodes; returns its summary."""
    folder = agent_folder(config.root, domain)
    if (folder / SUMMARY).exists():  # written last: the agent, its selection and its mix data are complete
        return json.loads((folder / SUMMARY).read_text())
    specs = [spec for spec in config.scenarios.train if spec.domain == domain]
    for stale in folder.glob("snapshot-*.pt"):  # of a run killed before its summary: trained again
        stale.unlink()
    result = train_agent(specs, config.sac_steps, config.sac, config.seed, config.episode_steps, folder, progress=progress)

    counts: dict[str, int] = defaultdict(int)
    for episode in result.replay.episodes():
        spec = specs[int(episode["episode"]) % len(specs)]
        index = counts[spec.id]
        counts[spec.id] += 1
        plain = Episode(strip(episode["obs"]), episode["action"], episode["reward"], episode["terminal"], spec, "mix", config.seed)
        store.write(plain, index)
    summary = summarise(config, domain, folder, config.sac, config.sac_steps, result.seconds, source="trained")
    summary["mix_episodes"] = dict(counts)
    write_json(folder / SUMMARY, summary)
    return summary

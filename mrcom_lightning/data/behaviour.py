"""SAC behaviour agents for `mrcom collect --dataset.behaviour sac` (DESIGN.md §3, Table 5).

One agent per domain learns across that domain's training scenarios (episode i runs on
training scenario i mod n). Its evaluations are kept as snapshots: the best becomes the
`expert`, the one whose return is closest to half of the expert's the `medium` policy, and
its replay, cut back into whole episodes, the `mix` data.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
import torch

from mrcom_lightning.agents import train_sac
from mrcom_lightning.data.dataset import DatasetConfig
from mrcom_lightning.data.episodes import Episode, EpisodeStore, atomic_write
from mrcom_lightning.scenarios import make_env
from mrcom_lightning.seeding import derive_seed

AGENTS_DIR = "_agents"
EVALUATIONS = 10  # snapshots per run, among which expert and medium are chosen


def agent_paths(root: str | Path, domain: str) -> dict[str, Path]:
    folder = Path(root) / AGENTS_DIR / domain
    return {"expert": folder / "expert.pt", "medium": folder / "medium.pt", "summary": folder / "summary.json"}


def _save(path: Path, checkpoint: dict) -> None:
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def train_domain(config: DatasetConfig, domain: str, store: EpisodeStore, progress: bool) -> dict[str, Path]:
    """Trains (or finds) the behaviour agent of one domain; writes its `mix` episodes."""
    paths = agent_paths(config.root, domain)
    if paths["summary"].exists():  # written last: the agent and its mix data are complete
        return paths
    specs = [spec for spec in config.scenarios.train if spec.domain == domain]

    def make(index: int):
        return make_env(specs[index % len(specs)], seed=derive_seed(config.seed, "behaviour", domain, index), episode_steps=config.episode_steps)

    snapshots: list[tuple[int, float, dict]] = []
    result = train_sac(
        make,
        config.sac_steps,
        config.sac,
        seed=config.seed,
        eval_every=max(1, config.sac_steps // EVALUATIONS),
        eval_episodes=3,
        on_eval=lambda step, mean_return, agent: snapshots.append((step, mean_return, agent.checkpoint())),
        progress=progress,
    )
    best = max(snapshots, key=lambda s: s[1])
    medium = min(snapshots, key=lambda s: abs(s[1] - best[1] / 2))
    _save(paths["expert"], best[2])
    _save(paths["medium"], medium[2])

    counts: dict[str, int] = defaultdict(int)
    for episode in result.replay.episodes():
        spec = specs[int(episode["episode"]) % len(specs)]
        index = counts[spec.id]
        counts[spec.id] += 1
        store.write(
            Episode(episode["obs"], episode["action"], episode["reward"], episode["terminal"], spec, "mix", config.seed),
            index,
        )
    summary = {
        "domain": domain,
        "expert": {"step": best[0], "return": best[1]},
        "medium": {"step": medium[0], "return": medium[1]},
        "evaluations": [{"step": s, "return": r} for s, r, _ in snapshots],
        "mix_episodes": dict(counts),
        "seconds": result.seconds,
    }
    payload = json.dumps(summary, indent=1).encode()
    atomic_write(paths["summary"], lambda f: f.write(payload))
    return paths


def train_behaviour_agents(config: DatasetConfig, store: EpisodeStore, progress: bool = True) -> dict[tuple[str, str], str]:
    """(domain, policy) -> agent checkpoint path, for `expert` and `medium` of every domain."""
    agents = {}
    for domain in config.scenarios.domains:
        paths = train_domain(config, domain, store, progress)
        for policy in ("expert", "medium"):
            agents[(domain, policy)] = str(paths[policy])
    return agents

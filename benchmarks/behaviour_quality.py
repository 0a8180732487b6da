"""What the behaviour data of the main job is: each policy's score per domain.

Collects the main job's dataset (`data.dataset` of `configs/multi.yaml`, with the behaviour
agents shipped in the package unless `--train-agents`) and the same scenarios with random
actions, then prints the mean score (100 × episode return / episode steps, the percentage of
the episode's maximum) of `expert`, `medium`, `mix` and `random` per domain over the training
scenarios, and the expert's score on every validation and test scenario (ID and OOD).

    python benchmarks/behaviour_quality.py            # ~3 min on one CPU core

The last line is `expert_score_min=<the lowest per-domain expert score on the training scenarios>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mrcom_lightning.data import EpisodeStore
from mrcom_lightning.data.collect import collect, dataset_scores
from mrcom_lightning.data.shipped import dataset_settings
from mrcom_lightning.scenarios import SPLITS

POLICIES = ("expert", "medium", "mix", "random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/multi.yaml", help="a fit config; its data.dataset is used")
    parser.add_argument("--root", default=None, help="dataset folder (default: a fresh temporary one)")
    parser.add_argument("--train-agents", action="store_true", help="train the agents (sac_steps) instead of the shipped ones")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()

    root = Path(args.root or tempfile.mkdtemp(prefix="behaviour-quality-"))
    config = dataset_settings(args.config)
    sac = dataclasses.replace(config, root=str(root / "sac"), behaviour="sac", train_agents=args.train_agents)
    random = dataclasses.replace(config, root=str(root / "random"), behaviour="random")
    for dataset in (sac, random):
        collect(dataset, workers=args.workers, progress=args.progress)
    scores = {split: dataset_scores(sac.root).get(split, {}) | dataset_scores(random.root).get(split, {}) for split in SPLITS}

    domains = list(config.scenarios.domains)
    print(f"mean score over the {config.scenarios.num_train} training scenarios per domain "
          f"({config.episodes_per_scenario} episodes of {config.episode_steps} steps each, sampled actions):")
    print(f"| domain | {' | '.join(POLICIES)} |\n|---|{'---|' * len(POLICIES)}")
    for domain in domains:
        print(f"| {domain} | " + " | ".join(f"{scores['train'][p][domain]:.1f}" for p in POLICIES) + " |")

    print("\nexpert on held-out scenarios (mean of the episodes of each scenario; test_ood lies outside the training ranges):")
    print("| split | scenario | expert | random |\n|---|---|---|---|")
    sac_store, random_store = EpisodeStore(sac.root), EpisodeStore(random.root)

    def score(store: EpisodeStore, spec, policy: str) -> float:
        episodes = [store.read(i.path) for i in store.index(spec.id, policy)]
        return float(np.mean([100 * e.reward.sum() / e.steps for e in episodes]))

    for split in ("test_id", "test_ood", "val"):
        for spec in config.scenarios.draw(split):
            print(f"| {split} | {spec} | {score(sac_store, spec, 'expert'):.1f} | {score(random_store, spec, 'random'):.1f} |")
    for split in ("test_id", "test_ood"):
        print(f"{split} expert mean per domain: " + ", ".join(f"{d} {scores[split]['expert'][d]:.1f}" for d in domains))
    print(f"data: {root}  ({time.perf_counter() - start:.0f} s)")
    print(f"expert_score_min={min(scores['train']['expert'][d] for d in domains):.2f}")


if __name__ == "__main__":
    main()

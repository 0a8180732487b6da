"""Trains the behaviour agents shipped with the package (`mrcom_lightning/behaviour_agents/`).

For one domain of the main job's dataset settings (`data.dataset` of `configs/multi.yaml`):
trains the scenario-conditioned SAC across the domain's training scenarios
(`mrcom_lightning.data.behaviour.train_agent`, a snapshot and a line of `training.json` at each
of `--evaluations` evaluations), evaluates every snapshot on every training scenario and picks
each scenario's expert and medium (`summarise`), and with `--install` copies the summary and
the snapshots it names into the package, where `mrcom collect` finds them. A folder whose
`training.json` already reaches `--steps` is not trained again (the selection is redone).

    python benchmarks/train_behaviour_agents.py --domain cheetah --steps 80000 --install
    python benchmarks/train_behaviour_agents.py --domain hopper --steps 300000 --shaping stand --install

The last line is `expert_score_mean=<mean over training scenarios of the expert's score>`
(score = 100 × return / episode steps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mrcom_lightning.agents import SACConfig
from mrcom_lightning.data.behaviour import SUMMARY, TRAINING_LOG, summarise, train_agent, write_json
from mrcom_lightning.data.conditioning import SHAPINGS
from mrcom_lightning.data.shipped import dataset_settings, referenced_files, shipped_folder


def trained_steps(folder: Path) -> int:
    log = folder / TRAINING_LOG
    return json.loads(log.read_text())[-1]["step"] if log.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", required=True, help="cheetah, hopper or walker")
    parser.add_argument("--steps", type=int, required=True, help="environment steps of SAC training")
    parser.add_argument("--config", default="configs/multi.yaml", help="a fit config; its data.dataset is used")
    parser.add_argument("--folder", default=None, help="work folder (default: data/behaviour-agents/<domain>)")
    parser.add_argument("--batch", type=int, default=128, help="SAC batch size")
    parser.add_argument("--lr", type=float, default=3e-4, help="actor, critic and temperature learning rate")
    parser.add_argument("--hidden", type=int, default=256, help="hidden width of actor and critics")
    parser.add_argument("--updates-per-step", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5000, help="random-action steps first")
    parser.add_argument("--evaluations", type=int, default=10, help="snapshots over the run")
    parser.add_argument(
        "--shaping", default="none", choices=SHAPINGS,
        help="training reward of the behaviour agent only (stand: half for standing, for hopper); data and evaluations use the task's",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="SAC training seed (default: the config's data seed)")
    parser.add_argument("--install", action="store_true", help="copy the result into the package")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = dataset_settings(args.config)
    folder = Path(args.folder or f"data/behaviour-agents/{args.domain}")
    specs = [spec for spec in config.scenarios.train if spec.domain == args.domain]
    sac = SACConfig(
        hidden_dim=args.hidden, batch_size=args.batch, actor_lr=args.lr, critic_lr=args.lr,
        temperature_lr=args.lr, updates_per_step=args.updates_per_step, warmup_steps=args.warmup,
    )  # fmt: skip
    seed = config.seed if args.seed is None else args.seed
    if trained_steps(folder) < args.steps:
        train_agent(specs, args.steps, sac, seed, config.episode_steps, folder, args.evaluations,
                    not args.no_progress, shaping=args.shaping)  # fmt: skip
    log = json.loads((folder / TRAINING_LOG).read_text())
    summary = summarise(config, args.domain, folder, sac, args.steps, log[-1]["seconds"], source="trained")
    summary["shaping"] = args.shaping
    summary["training_seed"] = seed
    write_json(folder / SUMMARY, summary)

    print("evaluations (step, mean return over training scenarios, seconds):")
    print("  " + ", ".join(f"({r['step']}, {r['return']:.1f}, {r['seconds']:.0f})" for r in log))
    scale = 100 / config.episode_steps
    for spec in specs:
        picks = summary["scenarios"][spec.id]
        print(f"  {spec}: expert {scale * picks['expert']['return']:.1f} (step {picks['expert']['step']}), "
              f"medium {scale * picks['medium']['return']:.1f} (step {picks['medium']['step']})")
    print(f"steps/s: {args.steps / log[-1]['seconds']:.1f}")
    if args.install:
        target = shipped_folder(args.domain)
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("snapshot-*.pt"):
            old.unlink()
        for name in referenced_files(summary):
            (target / name).write_bytes((folder / name).read_bytes())
        # A plain write: package data must be readable by every user (a temporary file is 0600).
        (target / SUMMARY).write_text(json.dumps(summary, indent=1))
        print(f"installed {len(referenced_files(summary))} snapshots and {SUMMARY} in {target}")
    experts = [summary["scenarios"][spec.id]["expert"]["return"] for spec in specs]
    print(f"expert_score_mean={scale * float(np.mean(experts)):.2f}")


if __name__ == "__main__":
    main()

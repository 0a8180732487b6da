"""Gradient shares: how hard each term of Eq. 16 pulls on the world model, at the main job's settings.

The model is configs/multi.yaml's (the paper's sizes, w_wm = w_mv = 1, w_ms = 0.1, AdamW at
lr 1e-4, gradient norm clipped at 100), trained on batches of 32 windows of 64 steps with
prompts of 20 transitions. Every `--every` steps the norm of each weighted term's gradient
(w_wm·L_wm, w_ms·L_ms, w_mv·L_mv; `models.gradient_norms`) is measured on the latent cell and
on all shared world-model parameters (tokenizers, context, latent cell: what `mrcom fit` logs as
`charts/grad_norm/*`).

Data: `--root` a collected dataset (default data/imagination-bench, which `python
benchmarks/imagination.py` collects: SAC-behaviour episodes of cheetah, hopper, walker), or
`--root synthetic` (sines at the domains' sizes; no real rewards). A root must hold
imagination.py's default dataset (its settings are those).

    python benchmarks/grad_shares.py --steps 300 --every 10      # ~15 min on one loaded core
    python benchmarks/grad_shares.py --smoke                       # seconds: tiny sizes, synthetic

The last line is `mv_over_wm_grad=<ratio>`: the mean over the measured steps of |∇ w_mv·L_mv| /
|∇ w_wm·L_wm| on the latent cell (goal between 0.01 and 100: the regulariser pulls, and does not
drown the world-model loss). The line before gives the ratios on the shared parameters and L_ms's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from common import GRADIENT_CLIP  # noqa: E402  (benchmarks/common.py)

from mrcom_lightning.models import WorldModelConfig, gradient_norms
from mrcom_lightning.models.synthetic import PAPER_DOMAIN_DIMS, PAPER_NUM_SCENARIOS, synthetic_batch
from mrcom_lightning.module import MrCoM

MAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "multi.yaml"


def main_job_model() -> dict:
    """configs/multi.yaml's `model` section: the world model's sizes and the loss weights."""
    model = yaml.safe_load(MAIN_CONFIG.read_text())["model"]
    return {"world_model": WorldModelConfig(**model.pop("world_model"))} | model


def stream(args: argparse.Namespace, prompt: int):
    """(domain_dims, num_scenarios, an iterator of batches)."""
    if args.root == "synthetic":
        def batches():
            for k in range(10**9):
                yield synthetic_batch(PAPER_DOMAIN_DIMS, args.batch_size, args.sequence_length, prompt, PAPER_NUM_SCENARIOS, k)
        return PAPER_DOMAIN_DIMS, PAPER_NUM_SCENARIOS, batches()
    from imagination import dataset_config  # the dataset benchmarks/imagination.py collects

    from mrcom_lightning.datamodules import MultiScenarioDataModule

    own = argparse.Namespace(data="own", train_scenarios=4, test_scenarios=3, episodes=4, episode_steps=250, sac_steps=10_000)
    dm = MultiScenarioDataModule(
        dataset=dataset_config(own, args.root), sequence_length=args.sequence_length, prompt_length=prompt,
        batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip
    return dm.domain_dims, dm.num_scenarios, iter(dm.train_stream())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/imagination-bench", help="a collected dataset, or `synthetic`")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--every", type=int, default=10, help="measure every this many steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, synthetic data, 6 steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = main_job_model()
    if args.smoke:
        args.root, args.steps, args.every, args.batch_size, args.sequence_length = "synthetic", 6, 2, 6, 12
        settings["world_model"] = WorldModelConfig(embed_dim=16, hidden_dim=32, stochastic_dim=8, deterministic_dim=16,
                                                   auxiliary_dim=4, context_length=4, reward_bins=31)  # fmt: skip
    prompt = settings["world_model"].context_length
    domain_dims, num_scenarios, batches = stream(args, prompt)
    torch.manual_seed(args.seed)
    module = MrCoM(domain_dims=domain_dims, num_scenarios=num_scenarios, **settings)
    wm = module.world_model
    parts = {"cell": list(wm.cell.parameters()), "shared": wm.shared_parameters()}
    print(f"model: {settings}; data: {args.root}; batch {args.batch_size} x {args.sequence_length}, prompt {prompt}")
    optimizer = module.configure_optimizers()
    measured: dict[str, list[float]] = {}
    start = time.perf_counter()
    for step in range(args.steps):
        batch = next(batches)
        terms, _ = module.losses(batch)
        if step % args.every == 0:
            weighted = module.weighted_terms(terms)
            for part, params in parts.items():
                for name, norm in gradient_norms(weighted, params).items():
                    measured.setdefault(f"{part}/{name}", []).append(float(norm))
            line = ", ".join(f"{k} {v[-1]:.3g}" for k, v in measured.items())
            losses = ", ".join(f"{k} {terms[k].item():.3g}" for k in ("wm", "ms", "mv") if k in terms)
            print(f"step {step}: grad norms {line}; losses {losses}; {time.perf_counter() - start:.0f}s", flush=True)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), GRADIENT_CLIP)
        optimizer.step()
        module.on_train_batch_end(None, batch, step)

    def ratio(part: str, name: str) -> float:
        return float(np.mean(np.asarray(measured[f"{part}/{name}"]) / np.asarray(measured[f"{part}/wm"])))

    print(f"{len(measured['cell/wm'])} measurements over {args.steps} steps, {time.perf_counter() - start:.0f}s")
    print("means: " + ", ".join(f"{k} {np.mean(v):.4g}" for k, v in measured.items()))
    print(f"ms_over_wm_grad={ratio('cell', 'ms'):.4g} shared_mv_over_wm_grad={ratio('shared', 'mv'):.4g} "
          f"shared_ms_over_wm_grad={ratio('shared', 'ms'):.4g}")
    print(f"mv_over_wm_grad={ratio('cell', 'mv'):.4g}")


if __name__ == "__main__":
    main()

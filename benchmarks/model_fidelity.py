"""How faithful are the world model's imagined transitions, in the units the agent reads them in?

On `adapt_efficiency.py`'s data (its `--out/data`, collected there first) this trains reduced-size
MrCoM variants for `--steps` steps each (the same model, data stream and learning rate as that
benchmark; a variant changes `MrCoM` arguments, or `WorldModelConfig` fields under "wm") and
measures, on each domain's held-out target episodes (256 windows, burn-in 16):

* reconstruction: the posterior's decoded o_t against the real o_t, squared error per dim divided
  by the dim's mean squared one-step change (the naive forecast's error), median over dims;
* the open-loop observation error h = 1..5 with real actions in the same per-dim units
  (`per_dim_relative_errors`), sampled and anchored (`WorldModel.start(anchor=True)`), naive = 1 at h = 1;
* the reward error at h = 1, sampled and anchored (`start(anchor_reward=True)`), and from the
  posterior latents (teacher-forced), against the naive forecast's (repeat the last reward);
* with `--probe-steps N`: a fresh reward head of the same shape fitted N steps on the trained
  model's frozen posterior features: if it does no better than the model's own head, the latent,
  not the head, limits the reward.

    python benchmarks/model_fidelity.py --steps 4000 --seeds 0,1,2 --variants '{"symlog": {}, "standardize": {"wm": {"obs_normalization": "standardize"}}}'

The last line is `standardize_over_symlog_anchored_h1=<ratio of the anchored one-step errors,
mean over domains and seeds> p=<Welch p over seeds> seeds=<n>` (`nan` where a variant or a
second seed is missing).
"""

import os

os.environ.setdefault("MUJOCO_GL", "disable")  # before dm_control is imported

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import adapt_efficiency as bench  # noqa: E402
from common import train_world_model  # noqa: E402

from mrcom_lightning.adaptation.history import RealHistory  # noqa: E402
from mrcom_lightning.adaptation.imagination import open_loop_errors  # noqa: E402
from mrcom_lightning.compare import welch_p_value  # noqa: E402
from mrcom_lightning.data.collect import collect  # noqa: E402
from mrcom_lightning.data.episodes import EpisodeStore  # noqa: E402
from mrcom_lightning.datamodules import MultiScenarioDataModule  # noqa: E402
from mrcom_lightning.models.layers import mlp  # noqa: E402
from mrcom_lightning.module import MrCoM  # noqa: E402
from mrcom_lightning.training import fit_observation_statistics  # noqa: E402

BURN_IN, HORIZON, WINDOWS = 16, 5, 256


def target_batch(module: MrCoM, store: EpisodeStore, spec):
    domain = module.domains.index(spec.domain)
    history = RealHistory.from_episodes(store.read_all(store.index(spec.id)), module.obs_dims[domain], module.act_dims[domain])
    return history.model_batch(module, domain, WINDOWS, BURN_IN + HORIZON, np.random.default_rng(0))


@torch.no_grad()
def fidelity(module: MrCoM, batch) -> dict:
    wm = module.world_model
    torch.manual_seed(0)
    predictions = wm.predict(batch)
    reconstruction = wm.decode(predictions.latents.features, batch["domain"])
    mask = wm.obs_mask[batch["domain"]].bool()
    t = BURN_IN + 1
    change = ((batch["obs"][:, t] - batch["obs"][:, t - 1]) ** 2).mean(0).clamp(min=1e-8)
    recon = ((reconstruction[:, t] - batch["obs"][:, t]) ** 2).mean(0) / change
    torch.manual_seed(0)
    sampled = open_loop_errors(wm, batch, HORIZON)
    torch.manual_seed(0)
    anchored = open_loop_errors(wm, batch, HORIZON, anchor=True, anchor_reward=True)
    return {
        "reconstruction_median": float(recon[mask[0]].median()),
        "sampled": sampled["model_obs"].tolist(),
        "anchored": anchored["model_obs"].tolist(),
        "naive": sampled["naive_obs"].tolist(),
        "reward_h1": sampled["model_reward"][0].item(),
        "anchored_reward_h1": anchored["model_reward"][0].item(),
        "naive_reward_h1": sampled["naive_reward"][0].item(),
        "posterior_reward": ((predictions.reward - batch["reward"]) ** 2).mean().item(),
    }


def probe(module: MrCoM, stream, steps: int, batch) -> float:
    """The posterior reward error of a fresh head fitted on the frozen model's features."""
    wm = module.world_model
    torch.manual_seed(0)
    head = mlp(wm.cell.feature_dim, wm.config.reward_bins, wm.config.hidden_dim, 3)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(steps):
        train = next(stream)
        with torch.no_grad():
            features = wm.predict(train).latents.features[:, 1:]
        loss = wm.twohot.nll(head(features), train["reward"]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        torch.manual_seed(0)
        features = wm.predict(batch).latents.features[:, 1:]
        return ((wm.twohot.mean(head(features)) - batch["reward"]) ** 2).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default='{"symlog": {}, "standardize": {"wm": {"obs_normalization": "standardize"}}}',
                        help="JSON: name -> MrCoM arguments (WorldModelConfig fields under 'wm')")
    parser.add_argument("--steps", type=int, default=4000, help="training steps per variant")
    parser.add_argument("--probe-steps", type=int, default=0, help="fit a fresh reward head this long (0: no probe)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (each variant is trained once per seed)")
    parser.add_argument("--out", default=str(bench.RESULTS / "adapt_efficiency"), help="adapt_efficiency.py's --out (its data)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = bench.parse_args([])  # adapt_efficiency's defaults: the same data
    base.out = args.out
    dataset = bench.dataset_config(base, seed=0)
    _, reduced, _ = bench.read_world_model_config(base)
    collect(dataset, progress=False)
    store = EpisodeStore(dataset.root)
    datamodule = MultiScenarioDataModule(dataset=dataset, sequence_length=16, prompt_length=reduced.context_length,
                                         batch_size=32)
    anchored_h1: dict[str, list[float]] = {}  # per variant: per seed, the mean over domains
    runs = [(name, kwargs, int(seed)) for seed in args.seeds.split(",") for name, kwargs in json.loads(args.variants).items()]
    for name, kwargs, seed in runs:
        kwargs = dict(kwargs)
        config = dataclasses.replace(reduced, **kwargs.pop("wm", {}))
        torch.manual_seed(seed)
        module = MrCoM(world_model=config, domain_dims=datamodule.domain_dims, num_scenarios=datamodule.num_scenarios,
                       lr=base.wm_lr, **kwargs)
        fit_observation_statistics(module, datamodule)
        start = time.perf_counter()
        stream = iter(datamodule.train_stream())
        losses = train_world_model(module, stream, args.steps)
        print(f"{name}, seed {seed}: {args.steps} steps in {time.perf_counter() - start:.0f}s, last losses "
              f"{ {k: round(v, 3) for k, v in losses.items()} }", flush=True)
        per_domain = []
        for spec in dataset.scenarios.test_id[::2]:  # each domain's tuning target (test_id/<domain>/0)
            batch = target_batch(module, store, spec)
            f = fidelity(module, batch)
            per_domain.append(f["anchored"][0])
            line = (f"  {spec.domain:8s} reconstruction/change (median dim) {f['reconstruction_median']:.2f} | observation "
                    f"h1..{HORIZON}: sampled {np.round(f['sampled'], 2)}, anchored {np.round(f['anchored'], 2)}, naive "
                    f"{np.round(f['naive'], 2)} | reward h1 {f['reward_h1']:.5f}, anchored {f['anchored_reward_h1']:.5f} "
                    f"(naive {f['naive_reward_h1']:.5f}), "
                    f"posterior {f['posterior_reward']:.5f}")
            if args.probe_steps:
                line += f", fresh head on frozen features {probe(module, stream, args.probe_steps, batch):.5f}"
            print(line, flush=True)
        anchored_h1.setdefault(name, []).append(float(np.mean(per_domain)))
    print("anchored one-step error, mean over domains, mean ± std over seeds: " + ", ".join(
        f"{name} {np.mean(v):.2f} ± {np.std(v):.2f}" for name, v in anchored_h1.items()))
    ratio, p = math.nan, math.nan
    if {"standardize", "symlog"} <= anchored_h1.keys():
        ratio = float(np.mean(anchored_h1["standardize"]) / np.mean(anchored_h1["symlog"]))
        if len(anchored_h1["symlog"]) > 1:
            p = welch_p_value(anchored_h1["standardize"], anchored_h1["symlog"])
    print(f"standardize_over_symlog_anchored_h1={ratio:.3f} p={p:.3g} seeds={len(args.seeds.split(','))}")


if __name__ == "__main__":
    main()

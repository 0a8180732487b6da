"""Imagination quality: open-loop errors of a rolling context, a frozen context and the naive forecast.

In imagination the context window rolls forward: each imagined step pushes its own token
(decoded observation, action, predicted reward) and reads a fresh c. The old behaviour kept c
frozen at the last real step (`frozen_context` here: the start state without its window). This benchmark
measures, on held-out scenarios, whether imagination beats the naive forecast (repeat the last
real observation o_b and the last real reward r_{b-1}) and whether rolling beats freezing.

1. data: a fixed SAC-behaviour dataset (`expert`, `medium` and `mix` policies) over cheetah,
   hopper and walker: one SAC agent per domain trained here (`train_agents`: the shipped agents
   belong to the scenario set of configs/multi.yaml) for `--sac-steps` steps (1000 of them random
   warm-up) across `--train-scenarios` training scenarios per domain, `--episodes` episodes per
   training scenario and policy, 250-step episodes; 3 in-distribution (test_id) and 3
   out-of-distribution (test_ood) test scenarios per domain with 2 episodes per policy (expert and
   medium). Collected once into `--root` and reused (collection is resumable; a root collected
   with other settings is refused). At this budget the agents are weak (expert returns about
   20 of 250 on cheetah, 10 on walker, 0 on hopper, whose rewards are then all zero).
2. model, per seed of `--seeds`: a reduced-size MrCoM (embed 64, hidden 128, z 32, h 64, u 16,
   context/prompt length 20, 4 heads, 1 layer, 255 reward bins, symlog observations; the paper's
   sizes are 128/256/128/128) trained for `--steps` AdamW steps (lr `--lr`, gradient norm clipped
   at 100, target values updated after each step) on batches of 16 windows of 48 transitions;
   `torch.manual_seed(seed)` and the datamodule's seed = seed.
3. evaluation: every fixed, non-overlapping 48-step window of the test scenarios (every policy's
   episodes), posterior pass over the window, then H = 15 steps imagined open loop from the
   burn-in step b = 48 - 15 with the window's real actions: (a) context rolling, (b) context
   frozen, (c) naive forecast. Both rollouts of a batch start from the same torch seed, so they
   see the same noise. Errors in the environment's own units: reward MSE against r_b..r_{b+H-1},
   observation MSE (mean over the domain's real dims) against o_{b+1}..o_{b+H}.

Tables: rows h = 1..15 (and their mean), columns rolled/frozen/naive, mean ± sample std over
seeds of the per-domain means averaged over domains, for ID (test_id) and OOD (test_ood);
then a per-domain table (h = 1, 5, 10, 15 and the mean over h). The naive forecast does not
depend on the model or the seed (same windows every seed), so its std is 0. Summary: Welch's
t-test over seeds of the mean-over-h reward MSE (domains averaged), rolled vs frozen and rolled
vs naive, per split (with a paired t-test of rolled vs frozen, which share a model per seed).

    python benchmarks/imagination.py          # 19 min at load 5 on 2 cores: collect 11 min (once), 3 min per seed
    python benchmarks/imagination.py --smoke  # under a minute: tiny data in a temporary folder, 20 steps per seed
    python benchmarks/imagination.py --data main --workers 2   # on the main job's dataset (shipped expert agents)
    python benchmarks/imagination.py --reward-head residual    # the residual reward head (r_{t-1} + predicted change)

Each seed's results are written to `--out/seed<k>.json` as soon as it finishes; a re-run with
the same settings loads finished seeds instead of training them again. `--reward-head residual`
trains the reduced model with `reward_head: residual` (WorldModelConfig) and writes to its own
default `--out` (`...-residual`).

The line before last is `imagined_reward_error_over_naive_ood=<value>` and the last
`imagined_reward_error_over_naive=<value>`: the rolled context's reward MSE, averaged over
h = 1..15, domains and seeds, divided by the naive forecast's reward MSE averaged the same way
(a ratio of means), on the in-distribution test split (test_id) for the last line, test_ood
for the one before. Below 1: imagination predicts reward better than repeating the last one.
"""

import os

os.environ.setdefault("MUJOCO_GL", "disable")  # before dm_control is imported

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from scipy import stats  # noqa: E402

from common import train_world_model  # noqa: E402  (benchmarks/common.py)

from mrcom_lightning.agents import SACConfig  # noqa: E402
from mrcom_lightning.data.collect import DatasetConfig, collect, is_complete  # noqa: E402
from mrcom_lightning.data.shipped import dataset_settings  # noqa: E402
from mrcom_lightning.datamodules import MultiScenarioDataModule  # noqa: E402
from mrcom_lightning.metrics import masked_mean  # noqa: E402
from mrcom_lightning.models import WorldModelConfig  # noqa: E402
from mrcom_lightning.models.world_model import ImaginedState  # noqa: E402
from mrcom_lightning.module import MrCoM  # noqa: E402
from mrcom_lightning.scenarios import MetaScenarioSet  # noqa: E402

MAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "multi.yaml"
REDUCED = WorldModelConfig(
    embed_dim=64, hidden_dim=128, stochastic_dim=32, deterministic_dim=64, auxiliary_dim=16,
    context_length=20, heads=4, layers=1, reward_bins=255,
)
DOMAINS = ("cheetah", "hopper", "walker")
SPLITS = {"ID": "test_id", "OOD": "test_ood"}
METHODS = ("rolled", "frozen", "naive")
METRICS = ("reward_mse", "obs_mse")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="dataset folder (default data/imagination-bench; smoke: a temporary one)")
    parser.add_argument("--out", default=None, help="per-seed results (default benchmarks/results/imagination; smoke: temporary)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; at least 3 for any quality claim")
    parser.add_argument("--steps", type=int, default=1500, help="world-model gradient steps per seed")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sequence-length", type=int, default=48)
    parser.add_argument("--horizon", type=int, default=15, help="imagined steps; burn-in = sequence length - horizon")
    parser.add_argument("--sac-steps", type=int, default=10_000, help="behaviour-agent steps per domain")
    parser.add_argument("--train-scenarios", type=int, default=4, help="training scenarios per domain")
    parser.add_argument("--test-scenarios", type=int, default=3, help="test_id and test_ood scenarios per domain")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per training scenario and policy")
    parser.add_argument("--episode-steps", type=int, default=250)
    parser.add_argument(
        "--data", choices=("own", "main"), default="own",
        help="own: the small dataset above, its agents trained here; main: the main job's dataset "
        "(configs/multi.yaml's data.dataset, the shipped behaviour agents), default root data/multi",
    )
    parser.add_argument("--workers", type=int, default=1, help="collection processes")
    parser.add_argument("--smoke", action="store_true", help="tiny data and 20 steps per seed: checks that it runs")
    parser.add_argument("--progress", action="store_true", help="progress bars while collecting")
    parser.add_argument("--reward-head", choices=("absolute", "residual"), default="absolute",
                        help="the model's reward_head (WorldModelConfig): residual predicts the change from r_{t-1}")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.sac_steps, args.train_scenarios, args.test_scenarios = 20, 400, 1, 1
        args.episodes, args.episode_steps = 2, 100
    if args.horizon >= args.sequence_length:
        parser.error("--horizon must be below --sequence-length (the burn-in needs a real step before it)")
    return args


def dataset_config(args: argparse.Namespace, root: str) -> DatasetConfig:
    if args.data == "main":  # the main job's dataset, settings and all: `mrcom fit` reuses it
        sac = yaml.safe_load(MAIN_CONFIG.read_text())["data"]["dataset"].get("sac", {})
        return dataclasses.replace(dataset_settings(MAIN_CONFIG), root=root, sac=SACConfig(**sac))
    scenarios = MetaScenarioSet(
        domains=DOMAINS, num_train=args.train_scenarios, num_val=0,
        num_test_id=args.test_scenarios, num_test_ood=args.test_scenarios,
    )
    # Not the scenario set the shipped behaviour agents were trained for: train agents here.
    return DatasetConfig(
        root=root, scenarios=scenarios, behaviour="sac", episodes_per_scenario=args.episodes,
        test_episodes_per_scenario=2, episode_steps=args.episode_steps, train_agents=True, sac_steps=args.sac_steps,
        sac=SACConfig(warmup_steps=min(1000, args.sac_steps // 2)),
    )


def behaviour_returns(root: str, domain: str) -> str:
    """The behaviour agent's expert and medium returns from `<root>/_agents/<domain>/summary.json`."""
    summary = json.loads((Path(root) / "_agents" / domain / "summary.json").read_text())
    held, train = summary["held_out"], summary["scenarios"].values()  # held-out picks; per-scenario picks
    mean = {p: np.mean([s[p]["return"] for s in train]) for p in ("expert", "medium")}
    return (f"{domain} {held['expert']['return']:.1f} / {held['medium']['return']:.1f} held-out "
            f"({mean['expert']:.1f} / {mean['medium']:.1f} on training scenarios)")


def model_config(args: argparse.Namespace) -> WorldModelConfig:
    """REDUCED with `--reward-head`."""
    return dataclasses.replace(REDUCED, reward_head=args.reward_head)


def train(dm: MultiScenarioDataModule, config: WorldModelConfig, seed: int, steps: int, lr: float) -> tuple[MrCoM, dict]:
    torch.manual_seed(seed)
    module = MrCoM(world_model=config, domain_dims=dm.domain_dims, num_scenarios=dm.num_scenarios, lr=lr)

    def report(step: int, losses: dict[str, float], seconds: float) -> None:
        rounded = {k: round(v, 3) for k, v in losses.items()}
        print(f"  seed {seed} step {step}/{steps}: losses (mean of last 100) {rounded}, {seconds:.0f}s", flush=True)

    return module, train_world_model(module, iter(dm.train_stream()), steps, report)


def frozen_context(state: ImaginedState) -> ImaginedState:
    """The start state without its context window: `WorldModel.step` rolls only a window the state
    carries, so every imagined step reads the start's c (the behaviour compared against rolling)."""
    return dataclasses.replace(state, tokens=None)


@torch.no_grad()
def evaluate(module: MrCoM, dm: MultiScenarioDataModule, split: str, horizon: int, seed: int) -> dict:
    """{domain: {metric: {method: [H] mean over the split's windows}}, "windows": {domain: n}}."""
    wm = module.world_model
    sums = {d: {m: {k: torch.zeros(horizon, dtype=torch.float64) for k in METHODS} for m in METRICS} for d in dm.domains}
    counts = {d: 0 for d in dm.domains}
    for index, batch in enumerate(dm._eval_loader(split)):
        burn_in = batch["action"].shape[1] - horizon
        predictions = wm.predict(batch)
        state = wm.start(predictions, batch, burn_in)
        domain, mask = batch["domain"], wm.obs_mask[batch["domain"]]
        real_obs = batch["obs"][:, burn_in + 1 : burn_in + horizon + 1]
        real_reward = batch["reward"][:, burn_in : burn_in + horizon]
        errors = {
            "naive": {
                "obs_mse": masked_mean((batch["obs"][:, burn_in : burn_in + 1] - real_obs) ** 2, mask),
                "reward_mse": (state.prev_reward[:, None] - real_reward) ** 2,
            }
        }
        for method, freeze in (("rolled", False), ("frozen", True)):
            torch.manual_seed(1_000_003 * seed + index)  # the same noise for both rollouts of this batch
            start = frozen_context(state) if freeze else state
            rollout = wm.rollout(start, batch["action"][:, burn_in:], horizon, domain)
            errors[method] = {
                "obs_mse": masked_mean((rollout.next_obs - real_obs) ** 2, mask),
                "reward_mse": (rollout.reward - real_reward) ** 2,
            }
        for k, name in enumerate(dm.domains):
            rows = domain == k
            counts[name] += int(rows.sum())
            for method, by_metric in errors.items():
                for metric, error in by_metric.items():
                    sums[name][metric][method] += error[rows].double().sum(0)
    return {
        "domains": {
            d: {m: {k: (v / counts[d]).tolist() for k, v in by_method.items()} for m, by_method in sums[d].items()}
            for d in dm.domains if counts[d]
        },
        "windows": counts,
    }


def run_seed(dataset: DatasetConfig, args: argparse.Namespace, seed: int) -> dict:
    dm = MultiScenarioDataModule(
        dataset=dataset, sequence_length=args.sequence_length, prompt_length=REDUCED.context_length,
        batch_size=args.batch_size, seed=seed,
    )
    start = time.perf_counter()
    module, losses = train(dm, model_config(args), seed, args.steps, args.lr)
    trained = time.perf_counter()
    splits = {label: evaluate(module, dm, split, args.horizon, seed) for label, split in SPLITS.items()}
    return {
        "seed": seed, "final_losses": losses, "train_seconds": trained - start,
        "eval_seconds": time.perf_counter() - trained, "splits": splits,
    }


# --- statistics --------------------------------------------------------------------------------
def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Welch's t-test of mean(a) = mean(b): (t, degrees of freedom, two-sided p)."""
    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.df), float(result.pvalue)


def paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Paired t-test of mean(a − b) = 0 over seeds: (t, degrees of freedom, two-sided p)."""
    result = stats.ttest_rel(a, b)
    return float(result.statistic), float(result.df), float(result.pvalue)


# --- reporting ----------------------------------------------------------------------------------
def curves(results: list[dict], label: str, metric: str, method: str, domain: str | None) -> np.ndarray:
    """[seeds, H]: one domain's curve, or the mean of the domains' curves (domain None)."""
    out = []
    for result in results:
        by_domain = result["splits"][label]["domains"]
        names = [domain] if domain is not None else sorted(by_domain)
        out.append(np.mean([by_domain[d][metric][method] for d in names], axis=0))
    return np.asarray(out)


def cell(values: np.ndarray) -> str:
    std = values.std(ddof=1) if len(values) > 1 else math.nan
    std = 0.0 if std <= 1e-9 * abs(values.mean()) else std  # the naive forecast's rounding noise
    return f"{values.mean():.4g} ± {std:.2g}"


def print_tables(results: list[dict], horizon: int, domains: list[str]) -> None:
    seeds = [r["seed"] for r in results]
    for label, split in SPLITS.items():
        print(f"\n== {label} ({split}), mean over domains, mean ± std over seeds {seeds} ==")
        head = " | ".join(f"{f'{metric} {method}':>20}" for metric in METRICS for method in METHODS)
        print(f"{'h':>4} | {head}")
        table = {(m, k): curves(results, label, m, k, None) for m in METRICS for k in METHODS}
        for h in range(horizon):
            print(f"{h + 1:>4} | " + " | ".join(f"{cell(table[m, k][:, h]):>20}" for m in METRICS for k in METHODS))
        print(f"{'mean':>4} | " + " | ".join(f"{cell(table[m, k].mean(1)):>20}" for m in METRICS for k in METHODS))
    shown = sorted({0, 4, 9, horizon - 1} & set(range(horizon)))
    for label, split in SPLITS.items():
        print(f"\n== {label} ({split}), per domain, mean ± std over seeds {seeds} ==")
        head = " | ".join(f"{f'{metric} {method}':>20}" for metric in METRICS for method in METHODS)
        print(f"{'domain':>8} {'h':>4} | {head}")
        for domain in domains:
            windows = results[0]["splits"][label]["windows"][domain]
            table = {(m, k): curves(results, label, m, k, domain) for m in METRICS for k in METHODS}
            for h in shown + ["mean"]:
                pick = (lambda v: v.mean(1)) if h == "mean" else (lambda v, h=h: v[:, h])
                name = f"{domain}" if h == shown[0] else (f"({windows} w)" if h == shown[1] else "")
                print(f"{name:>8} {h if h == 'mean' else h + 1:>4} | "
                      + " | ".join(f"{cell(pick(table[m, k])):>20}" for m in METRICS for k in METHODS))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="imagination-bench-") if args.smoke else None
    default_root, default_out = {
        "own": ("data/imagination-bench", "benchmarks/results/imagination"),
        "main": ("data/multi", "benchmarks/results/imagination-main"),
    }[args.data]
    if args.reward_head != "absolute":
        default_out += f"-{args.reward_head}"
    root = args.root or (f"{tmp.name}/data" if tmp else default_root)
    out = Path(args.out or (f"{tmp.name}/results" if tmp else default_out))
    dataset = dataset_config(args, root)

    complete = is_complete(root)
    print(f"data: {root} (already collected)" if complete else f"data: collecting into {root} ...", flush=True)
    try:  # resumable; on a complete dataset it only checks that it was collected with these settings
        collect(dataset, workers=args.workers, progress=args.progress)
    except ValueError as error:
        raise SystemExit(f"{error}\n(--root {root} holds another dataset: delete it or choose another --root)")
    if not complete:
        print(f"data: collected in {time.perf_counter() - start:.0f}s", flush=True)
    collected = time.perf_counter()
    print("behaviour returns (expert / medium, deterministic evaluation): "
          + ", ".join(behaviour_returns(root, d) for d in DOMAINS))
    scores = json.loads((Path(root) / "dataset.json").read_text()).get("scores", {})
    for split, by_policy in scores.items():  # written by `collect` where it scores the episodes
        print(f"behaviour scores {split} (100 x return / steps): "
              + "; ".join(f"{p} " + ", ".join(f"{d} {v:.1f}" for d, v in by_domain.items()) for p, by_domain in by_policy.items()))
    s = dataset.scenarios
    print(f"data: {s.num_train} training scenarios per domain, {dataset.episodes_per_scenario} episodes per scenario "
          f"and policy, {s.num_test_id} test_id and {s.num_test_ood} test_ood scenarios per domain, "
          f"{dataset.episode_steps}-step episodes, " + ("shipped agents" if args.data == "main" else
                                                         f"agents trained here for {args.sac_steps} steps"))
    print(f"model: {dataclasses.asdict(model_config(args))}")
    print(f"training: {args.steps} steps per seed, batch {args.batch_size} x {args.sequence_length}, lr {args.lr}; "
          f"evaluation: burn-in {args.sequence_length - args.horizon}, H {args.horizon}", flush=True)

    settings = {
        "dataset": dataset.to_dict() | {"root": None}, "model": dataclasses.asdict(model_config(args)),
        **{k: getattr(args, k) for k in ("steps", "lr", "batch_size", "sequence_length", "horizon")},
    }
    settings = json.loads(json.dumps(settings))  # as a stored seed holds them (tuples read back as lists)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in seeds:
        path = out / f"seed{seed}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved["settings"] != settings:
                raise SystemExit(f"{path} was written with other settings: choose another --out or delete it")
            print(f"seed {seed}: loaded {path}", flush=True)
            results.append(saved["result"])
            continue
        result = run_seed(dataset, args, seed)
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps({"settings": settings, "result": result}, indent=1))
        partial.replace(path)
        print(f"seed {seed}: trained in {result['train_seconds']:.0f}s, evaluated in {result['eval_seconds']:.0f}s, "
              f"final losses {({k: round(v, 3) for k, v in result['final_losses'].items()})} -> {path}", flush=True)
        results.append(result)

    domains = sorted(results[0]["splits"]["ID"]["domains"])
    print_tables(results, args.horizon, domains)

    print()
    ratios = {}
    for label, split in SPLITS.items():
        mean_h = {k: curves(results, label, "reward_mse", k, None).mean(1) for k in METHODS}
        for other in ("frozen", "naive"):
            t, df, p = welch(mean_h["rolled"], mean_h[other])
            line = (f"{label} reward MSE (mean over h and domains) rolled {mean_h['rolled'].mean():.4g} vs {other} "
                    f"{mean_h[other].mean():.4g}: Welch t={t:.3f}, df={df:.2f}, p={p:.4f}")
            if other == "frozen":
                tp, dfp, pp = paired(mean_h["rolled"], mean_h["frozen"])
                line += f" (paired over seeds: t={tp:.3f}, df={dfp:.0f}, p={pp:.4f})"
            print(line)
        ratios[label] = float(mean_h["rolled"].mean() / mean_h["naive"].mean())
    end = time.perf_counter()
    print(f"elapsed: {end - start:.0f}s (data {collected - start:.0f}s, seeds {end - collected:.0f}s)")
    print(f"imagined_reward_error_over_naive_ood={ratios['OOD']:.3f}")
    print(f"imagined_reward_error_over_naive={ratios['ID']:.3f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

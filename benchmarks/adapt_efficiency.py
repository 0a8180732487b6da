"""Sample efficiency of scenario adaptation: MrCoM (SAC on real plus imagined data) against plain SAC.

On one held-out target scenario per domain (`--domains`, default cheetah and walker), at a
CPU-sized budget:

1. data: behaviour episodes of `--train-scenarios` training scenarios per domain, drawn around
   the targets (torso scales in [1-α, 1+α], target speeds in [speed-β, speed+β]); each domain's
   target is the set's first in-distribution test scenario, whose episodes the world model never
   sees. Behaviour `sac` (default) is the project's pipeline at a small budget: one SAC agent per
   domain trained here for `--sac-steps` across the training scenarios (`train_agents`) gives the
   `mix` data (its replay) and the `expert` and `medium` episodes; `random` is cheaper.
   Collected into `--out/data` and reused by later runs with the same settings.
2. world model: one MrCoM over all the domains, of reduced sizes (embedding 64, hidden 128, z 32,
   h 64, u 8; the paper's are 128/256/128/128), observations standardised per domain and dim
   (`--obs-normalization`; symlog's joint angles are several times less faithful, measured by
   model_fidelity.py), trained for `--wm-steps` steps of `module.losses` on the datamodule's
   training stream (batch 32, windows of 16 steps, prompts of 8); saved to
   `--out/model-<digest of its settings>.pt` and reused.
3. adaptation: `adapt(use_model=True)` (the loop's defaults: fine-tuning, large rollout rounds,
   K = 4 samples per start with truncation where they disagree, rollouts anchored at their real
   start, the naive-forecast safeguard, real share 0.5, extra updates while the pool holds
   trusted data) and `adapt(use_model=False)` (plain SAC), same real steps, same SAC settings,
   same seeds, scored on the same evaluation episodes every `--eval-every` real steps. Each
   run's curve is written to `--out/runs/<method>-<hash of its settings>/` as it finishes, and a
   rerun with the same settings loads it. `--set KEY=VALUE` changes an `AdaptationConfig` field
   for the MrCoM runs (ablations, which share the SAC runs).

Reported: per domain and method the final score mean ± std over seeds, Welch's t-test per
domain and over all runs (scores divided by the domain's SAC mean), the area under each run's
curve (its mean score over the evaluations) against SAC's with its Welch p, the learning curves
(`--out/curves.png`, `--out/curves.json`), and the real steps after which MrCoM's mean curve first
reaches plain SAC's final mean score.

    python benchmarks/adapt_efficiency.py               # cheetah and walker, seeds 0-2, 10k steps, two runs at once (--jobs)
    python benchmarks/adapt_efficiency.py --smoke       # a minute: tiny data, model and budget
    python benchmarks/adapt_efficiency.py --set safeguard=false --set fine_tune=false   # an ablation
    python benchmarks/adapt_efficiency.py --env-steps 100000 --updates-per-step 10 --device cuda  # the paper's budget

The last line is `adapt_over_sac=<mean MrCoM score ÷ mean SAC score over domains and seeds>`
(`nan` when SAC scores 0); the line before it, `adapt_p_value=`, is the Welch p-value over all runs.
"""

import os

os.environ.setdefault("MUJOCO_GL", "disable")  # before dm_control is imported

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import train_world_model  # noqa: E402  (benchmarks/common.py)

from mrcom_lightning.adaptation import AdaptationConfig, adapt  # noqa: E402
from mrcom_lightning.adaptation.history import RealHistory  # noqa: E402
from mrcom_lightning.adaptation.imagination import open_loop_errors  # noqa: E402
from mrcom_lightning.agents import SACConfig  # noqa: E402
from mrcom_lightning.compare import welch_p_value  # noqa: E402
from mrcom_lightning.data.collect import DatasetConfig, collect  # noqa: E402
from mrcom_lightning.data.episodes import EpisodeStore  # noqa: E402
from mrcom_lightning.datamodules import MultiScenarioDataModule  # noqa: E402
from mrcom_lightning.models import WorldModelConfig  # noqa: E402
from mrcom_lightning.module import MrCoM  # noqa: E402
from mrcom_lightning.scenarios import MetaScenarioSet  # noqa: E402

REDUCED = WorldModelConfig(
    embed_dim=64, hidden_dim=128, stochastic_dim=32, deterministic_dim=64, auxiliary_dim=8, context_length=8, heads=4, reward_bins=63
)
RESULTS = Path(__file__).resolve().parent / "results"
SMOKE = dict(train_scenarios=2, behaviour="random", episodes_per_scenario=2, episode_steps=100, wm_steps=20,
             env_steps=300, warmup_steps=100, eval_every=100, eval_episodes=1, seeds="0,1")


# What `adapt(use_model=False)` reads of an AdaptationConfig.
PLAIN_SAC_FIELDS = ("env_steps", "episode_steps", "warmup_steps", "updates_per_step", "eval_every", "eval_episodes", "sac")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", default="cheetah,walker", help="comma-separated, one target each")
    parser.add_argument("--adapt-domains", default=None, help="adapt to these domains' targets only (default: all)")
    parser.add_argument("--target-speed", type=float, default=0.2, help="centre of the speed range (fraction of the max)")
    parser.add_argument("--alpha", type=float, default=0.1, help="torso scale half-width of the training scenarios")
    parser.add_argument("--beta", type=float, default=0.05, help="speed half-width of the training scenarios")
    parser.add_argument("--train-scenarios", type=int, default=4, help="per domain")
    parser.add_argument("--behaviour", default="sac", choices=["sac", "random"], help="behaviour policy of the data")
    parser.add_argument("--sac-steps", type=int, default=20_000, help="steps of each domain's behaviour agent")
    parser.add_argument("--episodes-per-scenario", type=int, default=4, help="per training scenario and policy")
    parser.add_argument("--episode-steps", type=int, default=250, help="steps per episode, data and adaptation")
    parser.add_argument("--wm-steps", type=int, default=10_000, help="world-model gradient steps")
    parser.add_argument("--wm-lr", type=float, default=1e-3)
    parser.add_argument("--obs-normalization", default="standardize", choices=["symlog", "standardize"],
                        help="model.world_model.obs_normalization of the world model")
    parser.add_argument("--reward-bins", default="symlog", choices=["symlog", "linear"],
                        help="the reward head's bins: DreamerV3's symlog [-20, 20], or linear over [0, 1]")
    parser.add_argument("--env-steps", type=int, default=10_000, help="real steps of each adaptation (the budget)")
    parser.add_argument("--warmup-steps", type=int, default=1000)
    parser.add_argument("--updates-per-step", type=int, default=1, help="SAC updates per real step, both methods (paper: 10)")
    parser.add_argument("--eval-every", type=int, default=1000, help="real steps between evaluations (the curves)")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an AdaptationConfig field for the MrCoM runs (repeatable), e.g. real_ratio=0.2")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--methods", default="mrcom,sac", choices=["mrcom,sac", "mrcom", "sac"],
                        help="run one method alone (e.g. a SAC control at another --updates-per-step): its runs only, no comparison")
    parser.add_argument("--out", default=str(RESULTS / "adapt_efficiency"), help="data, model, runs and plots")
    parser.add_argument("--smoke", action="store_true", help="tiny everything, into a temporary --out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each run")
    parser.add_argument("--jobs", type=int, default=2, help="adaptation runs at once, each a process (CPU: one per core)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
        args.out = str(Path(args.out).parent / "adapt_efficiency_smoke")
    return args


def changes(pairs: list[str]) -> dict:
    """`--set` pairs as typed AdaptationConfig fields."""
    fields = {f.name: f for f in dataclasses.fields(AdaptationConfig)}
    out = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        if key not in fields or key == "sac":
            raise SystemExit(f"--set {pair!r}: {key!r} is not an AdaptationConfig field ({', '.join(fields)})")
        kind = type(getattr(AdaptationConfig(), key))
        out[key] = text.lower() in ("1", "true", "yes") if kind is bool else kind(text)
    return out


def dataset_config(args: argparse.Namespace, domains: tuple[str, ...]) -> DatasetConfig:
    speed = args.target_speed
    scenarios = MetaScenarioSet(
        domains=domains, alpha=args.alpha, beta=(speed - args.beta, speed + args.beta),
        num_train=args.train_scenarios, num_val=0, num_test_id=1, num_test_ood=0,
    )
    return DatasetConfig(
        root=str(Path(args.out) / "data"), scenarios=scenarios, behaviour=args.behaviour,
        episodes_per_scenario=args.episodes_per_scenario, test_episodes_per_scenario=2, episode_steps=args.episode_steps,
        train_agents=True, sac_steps=args.sac_steps, sac=SACConfig(warmup_steps=min(2000, args.sac_steps // 4)),
    )


def world_model(args: argparse.Namespace, dataset: DatasetConfig) -> tuple[MrCoM, str, str]:
    """The trained model, its description and the digest of its settings; loaded from
    `--out/model-<digest>.pt` when a model with the same settings was trained before."""
    config = dataclasses.replace(REDUCED, obs_normalization=args.obs_normalization)
    if args.reward_bins == "linear":  # bins over dm_control's reward range [0, 1] instead of symlog's [-20, 20]
        config = dataclasses.replace(config, reward_bin_scale="linear", reward_bin_range=(0.0, 1.0))
    key = {"dataset": dataset.to_dict(), "wm_steps": args.wm_steps, "wm_lr": args.wm_lr, "model": dataclasses.asdict(config)}
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:10]
    path = Path(args.out) / f"model-{digest}.pt"
    datamodule = MultiScenarioDataModule(dataset=dataset, sequence_length=16, prompt_length=config.context_length, batch_size=32)
    torch.manual_seed(0)
    module = MrCoM(world_model=config, domain_dims=datamodule.domain_dims, num_scenarios=datamodule.num_scenarios, lr=args.wm_lr)
    if path.exists():
        saved = torch.load(path, weights_only=True)  # plain settings and tensors: nothing to unpickle
        if saved["key"] == key:
            module.load_state_dict(saved["state_dict"])
            return module.eval(), f"loaded from {path}", digest
    if config.obs_normalization == "standardize":  # as `mrcom fit` does at its start
        datamodule.setup("fit")
        module.world_model.set_observation_statistics(*datamodule.observation_statistics())
    start = time.perf_counter()
    losses = train_world_model(module, iter(datamodule.train_stream()), args.wm_steps)
    torch.save({"key": key, "state_dict": module.state_dict()}, path)
    return module.eval(), f"{args.wm_steps} steps in {time.perf_counter() - start:.0f}s, last losses " + str(
        {name: round(value, 3) for name, value in losses.items()}), digest


def target_errors(module: MrCoM, dataset: DatasetConfig, spec, windows: int = 256, horizon: int = 5) -> dict:
    """The model's open-loop errors (h = 1 and h = `horizon`) on the target's held-out behaviour
    episodes, which it never trained on, beside the naive forecast's (`open_loop_errors`; the
    observations' and rewards' also anchored, as adaptation imagines them by default), and its
    reward error with the posterior latents (teacher-forced): how good its data can be."""
    domain = module.domains.index(spec.domain)
    store = EpisodeStore(dataset.root)
    history = RealHistory(module.obs_dims[domain], module.act_dims[domain])
    for episode in store.read_all(store.index(spec.id)):
        history.start(episode.obs[0])
        for t in range(episode.steps):
            history.add(episode.action[t], float(episode.reward[t]), episode.obs[t + 1], t == episode.steps - 1)
    batch = history.batch(windows, 16 + horizon, REDUCED.context_length, np.random.default_rng(0), domain,
                          max(module.obs_dims), max(module.act_dims))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        errors = open_loop_errors(module.world_model, batch, horizon)
        torch.manual_seed(0)
        anchored = open_loop_errors(module.world_model, batch, horizon, anchor=True, anchor_reward=True)
        posterior = ((module.world_model.predict(batch).reward - batch["reward"]) ** 2).mean().item()
    return ({f"{key}_h{h}": errors[key][h - 1].item() for key in errors for h in (1, horizon)}
            | {f"anchored_{kind}_h{h}": anchored[f"model_{kind}"][h - 1].item() for kind in ("obs", "reward")
               for h in (1, horizon)}
            | {"posterior_reward": posterior})


def run(target, config: AdaptationConfig, module, use_model: bool, seed: int, path: Path, args) -> dict:
    """One adaptation's curve and timing, loaded from `path` when it already ran."""
    if path.exists():
        return json.loads(path.read_text())
    model = None
    if use_model:  # a copy per run: fine-tuning trains the model it is given
        model = copy.deepcopy(module)
    result = adapt(target, config, model, use_model=use_model, seed=seed, progress=args.progress, device=args.device)
    record = {"steps": result.eval_steps, "scores": result.eval_scores, "seconds": result.seconds,
              "imagined": result.imagined, "summary": result.summary(),
              "metrics": {k: v for k, v in result.metrics.items() if k.startswith("charts/")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record


_SHARED: dict = {}  # what every run reads, set before the worker processes fork


def _run_task(task: tuple[str, str, int]) -> dict:
    domain, method, seed = task
    shared = _SHARED
    torch.set_num_threads(shared["args"].threads)
    path = shared["out"] / "runs" / shared["tags"][method] / f"{domain}-seed{seed}.json"
    cached = path.exists()
    record = run(shared["targets"][domain], shared["configs"][method], shared["module"], method == "mrcom", seed, path,
                 shared["args"])
    if not cached:
        print(f"  ran {method} {domain} seed {seed}: score {record['scores'][-1]:.2f} in {record['seconds']:.0f}s", flush=True)
    return record


def run_all(tasks: list[tuple[str, str, int]], jobs: int) -> list[dict]:
    """Every (domain, method, seed) run, `jobs` processes at once (forked: the model is shared, not copied over)."""
    if jobs <= 1 or len(tasks) <= 1 or _SHARED["args"].device != "cpu":  # CUDA does not survive a fork
        return [_run_task(task) for task in tasks]
    with multiprocessing.get_context("fork").Pool(min(jobs, len(tasks))) as pool:
        return pool.map(_run_task, tasks, chunksize=1)


def steps_to_reach(steps: list[int], curve: np.ndarray, level: float) -> int | None:
    reached = np.flatnonzero(curve >= level)
    return int(steps[reached[0]]) if len(reached) else None


def plot(path: Path, curves: dict, domains: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(domains), figsize=(4.5 * len(domains), 3.5), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        for method, (steps, runs) in curves[domain].items():
            mean, std = np.mean(runs, 0), np.std(runs, 0)
            line, = ax.plot(steps, mean, marker="o", markersize=3, label=f"{method} ({len(runs)} seeds)")
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_title(domain)
        ax.set_xlabel("real steps")
        ax.set_ylabel("score")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    domains = tuple(args.domains.split(","))
    changed = changes(args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    dataset = dataset_config(args, domains)
    collect(dataset, progress=args.progress)
    collected = time.perf_counter()
    module, how, model_digest = world_model(args, dataset)
    trained = time.perf_counter()

    base = dict(env_steps=args.env_steps, episode_steps=args.episode_steps, warmup_steps=args.warmup_steps,
                updates_per_step=args.updates_per_step, eval_every=args.eval_every, eval_episodes=args.eval_episodes)
    if args.smoke:
        base |= dict(rollout_every=50, rollout_batch=50, history_length=8, sac=SACConfig(hidden_dim=64, batch_size=64, warmup_steps=0))
    configs = {"mrcom": AdaptationConfig(**(base | changed)), "sac": AdaptationConfig(**base)}
    # A run is stored under its full settings' hash (MrCoM's with its world model's): a changed
    # default, flag or model never reuses a stale run.
    # Plain SAC's by the fields it reads only, so that a new model-only option does not rerun it.
    settings = {"mrcom": repr(configs["mrcom"]) + model_digest,
                "sac": repr({name: getattr(configs["sac"], name) for name in PLAIN_SAC_FIELDS})}
    tags = {m: f"{m}-{hashlib.sha1(s.encode()).hexdigest()[:10]}" for m, s in settings.items()}
    for method, tag in tags.items():
        if method not in args.methods.split(","):
            continue
        (out / "runs" / tag).mkdir(parents=True, exist_ok=True)
        (out / "runs" / tag / "config.txt").write_text(repr(configs[method]) + ("\nworld model " + model_digest if method == "mrcom" else "") + "\n")
    print(f"data: {domains}, {args.train_scenarios} training scenarios each, {args.behaviour} behaviour "
          f"({args.sac_steps} agent steps), {args.episodes_per_scenario} episodes per scenario and policy, "
          f"{args.episode_steps} steps each; {collected - start:.0f}s")
    print(f"world model: reduced sizes, {how}")
    print(f"adaptation: {configs['mrcom']}")

    domains = tuple(args.adapt_domains.split(",")) if args.adapt_domains else domains
    scores: dict[str, dict[str, list[float]]] = {d: {"mrcom": [], "sac": []} for d in domains}
    curves: dict[str, dict] = {d: {} for d in domains}
    targets = {}
    for domain in domains:
        target = targets[domain] = [spec for spec in dataset.scenarios.test_id if spec.domain == domain][0]
        print(f"target {domain}: {target}")
        e = target_errors(module, dataset, target)
        print(f"  model on the target's held-out behaviour episodes (naive forecast in brackets): observation "
              f"(per-dim relative) h1 {e['model_obs_h1']:.2f}, anchored {e['anchored_obs_h1']:.2f} ({e['naive_obs_h1']:.2f}), "
              f"h5 {e['model_obs_h5']:.2f}, anchored {e['anchored_obs_h5']:.2f} ({e['naive_obs_h5']:.2f}); "
              f"reward h1 {e['model_reward_h1']:.5f}, anchored {e['anchored_reward_h1']:.5f} ({e['naive_reward_h1']:.5f}), "
              f"h5 {e['model_reward_h5']:.5f}, anchored {e['anchored_reward_h5']:.5f} ({e['naive_reward_h5']:.5f}), "
              f"from posterior latents {e['posterior_reward']:.5f}", flush=True)
    _SHARED.update(args=args, out=out, tags=tags, targets=targets, configs=configs, module=module)
    tasks = [(domain, method, seed) for domain in domains for method in args.methods.split(",") for seed in seeds]
    records = dict(zip(tasks, run_all(tasks, args.jobs)))
    for domain in domains:
        print(f"target {domain}")
        for method in args.methods.split(","):
            runs = []
            for seed in seeds:
                record = records[domain, method, seed]
                scores[domain][method].append(record["scores"][-1])
                runs.append(record["scores"])
                trusted = np.mean([v for _, v in record["metrics"].get("charts/trusted_horizon", [(0, 0.0)])])
                print(f"  {method:<5} seed {seed} score {record['scores'][-1]:6.2f}  imagined share "
                      f"{record['summary']['imagined_share']:.2f}  trusted horizon {trusted:.1f}  "
                      f"{record['seconds']:5.0f}s  curve " + " ".join(f"{v:.1f}" for v in record["scores"]), flush=True)
            curves[domain][method] = (record["steps"], np.array(runs))

    if args.methods != "mrcom,sac":
        print(f"runs of {args.methods} only: no comparison; elapsed {time.perf_counter() - start:.0f}s")
        return
    print("\n| domain | MrCoM | SAC | MrCoM ÷ SAC | Welch p | area under the curve ÷ SAC's (p) | MrCoM reaches SAC's final score at |")
    print("|---|---|---|---|---|---|---|")
    normalised = {"mrcom": [], "sac": []}
    for domain in domains:
        m, s = scores[domain]["mrcom"], scores[domain]["sac"]
        steps, mrcom_runs = curves[domain]["mrcom"]
        reach = steps_to_reach(steps, mrcom_runs.mean(0), float(np.mean(s)))
        reach_text = f"{reach} of {steps[-1]} steps ({reach / steps[-1]:.2f})" if reach else "not reached"
        ratio = np.mean(m) / np.mean(s) if np.mean(s) > 0 else math.nan
        # The mean score over the evaluations: how early each method learns, less noisy than the last one.
        area_m, area_s = mrcom_runs.mean(1), curves[domain]["sac"][1].mean(1)
        area = f"{np.mean(area_m) / np.mean(area_s):.3f} ({welch_p_value(area_m, area_s):.3g})" if np.mean(area_s) > 0 else "–"
        print(f"| {domain} | {np.mean(m):.2f} ± {np.std(m):.2f} | {np.mean(s):.2f} ± {np.std(s):.2f} | {ratio:.3f} | "
              f"{welch_p_value(m, s):.3g} | {area} | {reach_text} |")
        for method in normalised:
            normalised[method] += list(np.array(scores[domain][method]) / max(np.mean(s), 1e-9))
    (out / "curves.json").write_text(json.dumps(
        {d: {k: {"steps": st, "scores": r.tolist()} for k, (st, r) in c.items()} for d, c in curves.items()}))
    plot(out / "curves.png", curves, list(domains))
    print(f"curves: {out / 'curves.png'}; elapsed {time.perf_counter() - start:.0f}s (collect {collected - start:.0f}s, "
          f"world model {trained - collected:.0f}s, adaptation {time.perf_counter() - trained:.0f}s)")
    mrcom = np.mean([v for d in domains for v in scores[d]["mrcom"]])
    sac = np.mean([v for d in domains for v in scores[d]["sac"]])
    print(f"adapt_p_value={welch_p_value(normalised['mrcom'], normalised['sac']):.4g}")
    print(f"adapt_over_sac={mrcom / sac if sac > 0 else math.nan:.3f}")


if __name__ == "__main__":
    main()

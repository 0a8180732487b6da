"""Does the world model help adaptation? MrCoM against the controls that could explain its gain.

Methods, each run on the same targets, seeds, real steps and evaluation episodes (DESIGN.md §5):

* `mrcom`: the adaptation loop with the world model (`AdaptationConfig()`'s defaults: fine-tuning,
  anchored K-sample rollouts cut where the samples disagree, half-imagined batches and
  `model_updates_per_step` extra SAC updates while the pool holds imagined data);
* `null`: the same loop, fine-tuning and pool with a null model, whose imagined transitions
  repeat the real start's observation and reward (`imagination="null"`): what half-imagined
  batches of copies with new actions do on their own;
* `sac`: plain SAC, one update per real step;
* `sac_utd`: plain SAC at MrCoM's updates per real step (1 + `model_updates_per_step`);
* `droq`: SAC with DroQ's regularised critics (dropout 0.01 and LayerNorm), a model-free agent
  made for many updates per step, at MrCoM's updates per real step;
* on the tuning targets also the two halves of imagination: `naive_reward` (the model's
  observations, the last real reward) and `naive_obs` (the last real observation, the model's
  rewards), to show which half helps or hurts.

Targets and seeds are split by purpose. `--targets tuning` is the target every default was
chosen on (each domain's first in-distribution test scenario) with seeds 0–2 and the
diagnostics. `--targets test` (the default) reports on held-out targets: each domain's second
in-distribution test scenario (other torso scales and target speed) and its first
out-of-distribution one (both outside the training ranges), seeds 10–14. World models: `--world-models`
(default 2) are trained with seeds 0, 1, ... on data collected with the same seeds (the scenario set
is shared); adaptation seed i uses world model i mod n, so the spread over world models is part of
every model method's figure, and each stored run records the digests of its model's settings,
its weights and its data.

Data and models, per world-model seed: behaviour episodes of `--train-scenarios` training
scenarios per domain (one SAC agent per domain trained here for `--sac-steps`: `mix`, `expert` and
`medium` episodes), and one MrCoM of reduced sizes over all domains, trained for `--wm-steps`.
Every finished adaptation run is written to `--out/runs/<method>-<digest of its settings>/` at
once and reused by a rerun: an interrupted benchmark resumes where it stopped. The run files are
committed (benchmarks/results/adapt_efficiency/runs/), data and models are not.

Reported, per target: final score, mean over the curve, worst seed and collapse rate (final below
0.7 × its best after reaching 20) per method; per domain (the targets pooled, runs paired by
target and seed): MrCoM's final against each control's, paired t-tests with Holm's correction over
every comparison of the report. Curves of every method per target: `--out/curves-<targets>.png`,
logged to MLflow (experiment `adapt_efficiency`) with the tables.

    python benchmarks/adapt_efficiency.py                      # held-out targets, seeds 10-14, two world models
    python benchmarks/adapt_efficiency.py --targets tuning     # the tuning targets, seeds 0-2, with the diagnostics
    python benchmarks/adapt_efficiency.py --smoke              # a few minutes: tiny data, model and budget
    python benchmarks/adapt_efficiency.py --set fine_tune.enabled=false   # an ablation of the loop (model methods)
    python benchmarks/adapt_efficiency.py --targets tuning --methods mrcom,null --set replay.share_cap=true   # a guard (docs/adaptation.md)
    python benchmarks/adapt_efficiency.py --targets tuning --reward-head residual   # world models with the residual reward head

The last lines, one per domain: `<domain>: mrcom_over_best_control=<MrCoM's mean final ÷ the best
control's> p=<Holm-corrected paired p against that control>`.
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
from mrcom_lightning.adaptation.loop import collapsed  # noqa: E402
from mrcom_lightning.adaptation.controls import CONTROLS, IMAGINATION_CONTROLS, control_config  # noqa: E402
from mrcom_lightning.data.collect import DatasetConfig, collect  # noqa: E402
from mrcom_lightning.data.episodes import EpisodeStore  # noqa: E402
from mrcom_lightning.datamodules import MultiScenarioDataModule  # noqa: E402
from mrcom_lightning.models import WorldModelConfig  # noqa: E402
from mrcom_lightning.module import MrCoM  # noqa: E402
from mrcom_lightning.stats import holm, paired_p_value  # noqa: E402
from mrcom_lightning.training import fit_observation_statistics, save_checkpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "adapt"
SMOKE = dict(seeds="0,1", world_models=2)
# --smoke: tiny data, model and budget over the configs' settings.
SMOKE_DATA = {"behaviour": "random", "episodes_per_scenario": 2, "episode_steps": 100, "scenarios.num_train": 2}
SMOKE_LOOP = {"env_steps": 150, "episode_steps": 50, "eval_every": 50, "eval_episodes": 1, "history_length": 8,
              "rollout.every": 25, "rollout.starts": 25, "fine_tune.steps": 4, "sac.warmup_steps": 50, "sac.hidden_dim": 64,
              "sac.batch_size": 64}  # fmt: skip
TARGETS = {  # which scenarios of the set, and the seeds reported on them
    "tuning": {"targets": [("test_id", 0)], "seeds": "0,1,2"},
    "test": {"targets": [("test_id", 1), ("test_ood", 0)], "seeds": "10,11,12,13,14"},
}
DIAGNOSTICS = IMAGINATION_CONTROLS[1:]  # naive_reward, naive_obs: on the tuning targets only
# What `adapt(use_model=False)` reads of an AdaptationConfig: a model-free run's key.
MODEL_FREE_FIELDS = ("env_steps", "episode_steps", "eval_every", "eval_episodes", "sac")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="test", choices=sorted(TARGETS), help="held-out test targets or the tuning ones")
    parser.add_argument("--adapt-domains", default=None, help="adapt to these domains' targets only (default: all)")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated subset (default: mrcom and {', '.join(CONTROLS)}; on tuning targets also "
                             f"{', '.join(DIAGNOSTICS)})")
    parser.add_argument("--seeds", default=None, help="comma-separated adaptation seeds (default: the targets' own)")
    parser.add_argument("--world-models", type=int, default=2, help="world models (and datasets) trained with seeds 0..n-1")
    parser.add_argument("--world-model-config", default=str(CONFIGS / "world_model.yaml"),
                        help="data, world model and its training (configs/adapt/world_model.yaml)")
    parser.add_argument("--loop-config", default=str(CONFIGS / "loop.yaml"),
                        help="the adaptation loop, as `mrcom adapt --config` reads it (configs/adapt/loop.yaml)")
    parser.add_argument("--env-steps", type=int, default=None, help="override the loop config's adaptation.env_steps")
    parser.add_argument("--reward-head", choices=("absolute", "residual"), default=None,
                        help="override the world-model config's reward_head (new models; the model-free controls' runs are shared)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an AdaptationConfig field of the model methods (repeatable), e.g. replay.real_ratio=0.2")
    parser.add_argument("--out", default=str(RESULTS / "adapt_efficiency"), help="data, models, runs and plots")
    parser.add_argument("--smoke", action="store_true", help="tiny everything, into a separate --out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each run")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, each a process (CPU: one per core)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns.db", help="MLflow store of the report ('' for none)")
    parser.add_argument("--progress", action="store_true", help="show each run's progress bar")
    parser.add_argument("--report-only", action="store_true",
                        help="report the runs stored so far (the seeds every method finished), run nothing")
    args = parser.parse_args(argv)
    if args.smoke:  # tiny values for every option left at its default
        for key, value in SMOKE.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
        if args.out == parser.get_default("out"):
            args.out = str(Path(args.out).parent / "adapt_efficiency_smoke")
    default_methods = ("mrcom",) + CONTROLS + (DIAGNOSTICS if args.targets == "tuning" else ())
    args.methods = tuple(args.methods.split(",")) if args.methods else default_methods
    unknown = set(args.methods) - set(("mrcom",) + CONTROLS + DIAGNOSTICS)
    if unknown:
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from mrcom, {', '.join(CONTROLS + DIAGNOSTICS)}")
    args.seeds = [int(s) for s in (args.seeds or TARGETS[args.targets]["seeds"]).split(",")]
    if args.world_models < 1:
        parser.error(f"--world-models must be >= 1, got {args.world_models}")
    return args


def changes(pairs: list[str]) -> dict:
    """`--set` pairs as typed AdaptationConfig fields (`env_steps=...`, a group's `rollout.horizon=...`)."""
    out = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        owner, _, name = key.rpartition(".")
        settings = getattr(AdaptationConfig(), owner) if owner else AdaptationConfig()
        if not dataclasses.is_dataclass(settings) or name not in {f.name for f in dataclasses.fields(settings)}:
            raise SystemExit(f"--set {pair!r}: {key!r} is not a setting of the adaptation loop (e.g. rollout.horizon)")
        kind = type(getattr(settings, name))
        out[key] = text.lower() in ("1", "true", "yes") if kind is bool else kind(text)
    return out


def read_world_model_config(args: argparse.Namespace) -> tuple[DatasetConfig, WorldModelConfig, argparse.Namespace]:
    """The data, the world model and its training budget of `--world-model-config` (with --smoke's tiny values)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(DatasetConfig, "dataset")
    parser.add_class_arguments(WorldModelConfig, "world_model")
    for name, kind in (("steps", int), ("lr", float), ("batch_size", int), ("sequence_length", int)):
        parser.add_argument(f"--training.{name}", type=kind, required=True)
    settings = parser.instantiate(parser.parse_path(args.world_model_config))
    dataset, training, world_model = settings.dataset, settings.training, settings.world_model
    if args.reward_head is not None:
        world_model = dataclasses.replace(world_model, reward_head=args.reward_head)
    if args.smoke:
        scenarios = dataclasses.replace(dataset.scenarios, num_train=SMOKE_DATA["scenarios.num_train"])
        dataset = dataclasses.replace(dataset, scenarios=scenarios,
                                      **{k: v for k, v in SMOKE_DATA.items() if "." not in k})
        training.steps = 20
    return dataset, world_model, training


def read_loop_config(args: argparse.Namespace) -> AdaptationConfig:
    """`--loop-config` through `mrcom adapt`'s own parser: the settings `mrcom adapt --config` runs with."""
    from mrcom_lightning.adaptation.cli import adapt_parser

    parser = adapt_parser()
    loop = parser.instantiate(parser.parse_args(["--config", args.loop_config, "--ckpt_path", "-"])).adaptation
    if args.smoke:
        loop = loop.replace(**SMOKE_LOOP)
    if args.env_steps is not None:
        loop = loop.replace(env_steps=args.env_steps)
    return loop


def method_configs(args: argparse.Namespace) -> dict[str, tuple[bool, AdaptationConfig]]:
    """(uses the model, settings) of each method: MrCoM runs the loop config's settings (with `--set`),
    the controls and diagnostics are mrcom_lightning/adaptation/controls.py's (the model-free ones
    from the config's settings without `--set`)."""
    base = read_loop_config(args)
    loop = base.replace(**changes(args.set))
    return {method: (True, loop) if method == "mrcom" else control_config(method, loop, base) for method in args.methods}


def dataset_config(args: argparse.Namespace, seed: int) -> DatasetConfig:
    """World-model seed `seed`'s dataset: the config's, collected with that seed into `--out/data-seed<seed>`."""
    dataset, _, _ = read_world_model_config(args)
    return dataclasses.replace(dataset, root=str(Path(args.out) / f"data-seed{seed}"), seed=seed)


def digest(value) -> str:
    return hashlib.sha1(repr(value).encode()).hexdigest()[:10]


def data_digest(dataset: DatasetConfig) -> str:
    """The episodes a model was trained on: the names and contents of the dataset's episode files."""
    root, sha = Path(dataset.root), hashlib.sha1()
    for path in sorted(root.rglob("*.npz")):
        sha.update(str(path.relative_to(root)).encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()[:10]


def _code_digest() -> str:
    """The source of what trains the model and runs the adaptation, as this process loaded it: a run
    stored under other code is not reused (a model or loop change means new runs)."""
    package = Path(__import__("mrcom_lightning").__file__).parent
    sources = [*sorted((package / "models").glob("*.py")), *sorted((package / "agents").glob("*.py")),
               *(package / "adaptation" / f"{name}.py" for name in ("loop", "rounds", "settings", "imagination", "history")),
               package / "training.py", Path(__file__).parent / "common.py"]
    sha = hashlib.sha1()
    for path in sources:
        sha.update(path.read_bytes())
    return sha.hexdigest()[:10]


CODE = _code_digest()  # once, at import: files edited while the benchmark runs do not change what it runs


def code_digest() -> str:
    return CODE


def weights_digest(module: torch.nn.Module) -> str:
    sha = hashlib.sha1()
    for name, value in sorted(module.state_dict().items()):
        sha.update(name.encode())
        sha.update(value.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:10]


def model_key(args: argparse.Namespace, dataset: DatasetConfig, seed: int) -> dict:
    """What a world model is trained from; its digest names the model file and enters every run's key."""
    _, config, training = read_world_model_config(args)
    key = {"dataset": dataset.to_dict(), "wm_steps": training.steps, "wm_lr": training.lr,
           "model": dataclasses.asdict(config), "seed": seed, "code": code_digest()}
    if (training.batch_size, training.sequence_length) != (32, 16):  # (the recorded runs' keys hold neither)
        key |= {"batch_size": training.batch_size, "sequence_length": training.sequence_length}
    return key


def world_model(args: argparse.Namespace, dataset: DatasetConfig, seed: int) -> tuple[MrCoM, dict]:
    """The MrCoM trained on `dataset` with `seed`, loaded from `--out/model-<digest>.pt` when one with
    the same settings was trained before; and its provenance (settings, weights and data digests)."""
    _, config, training = read_world_model_config(args)
    key = model_key(args, dataset, seed)
    settings = digest(key)
    path = Path(args.out) / f"model-{settings}.pt"
    datamodule = MultiScenarioDataModule(dataset=dataset, sequence_length=training.sequence_length,
                                         prompt_length=config.context_length, batch_size=training.batch_size, seed=seed)
    torch.manual_seed(seed)
    module = MrCoM(world_model=config, domain_dims=datamodule.domain_dims, num_scenarios=datamodule.num_scenarios, lr=training.lr)
    how = f"loaded from {path}"
    saved = torch.load(path, weights_only=True) if path.exists() else None  # plain settings and tensors
    if saved is not None and saved["key"] == key:
        module.load_state_dict(saved["state_dict"])
    else:
        fit_observation_statistics(module, datamodule)
        start = time.perf_counter()
        losses = train_world_model(module, iter(datamodule.train_stream()), training.steps)
        torch.save({"key": key, "state_dict": module.state_dict()}, path)
        how = f"{training.steps} steps in {time.perf_counter() - start:.0f}s, last losses " + str(
            {name: round(value, 3) for name, value in losses.items()})
    provenance = {"world_model_seed": seed, "model_settings": settings, "model_weights": weights_digest(module),
                  "data": data_digest(dataset)}
    # The same model as a checkpoint for `mrcom adapt --config configs/adapt/loop.yaml --ckpt_path ...`.
    save_checkpoint(module, datamodule, Path(args.out) / f"world-model-seed{seed}.ckpt")
    return module.eval(), provenance | {"how": how}


def prepare(task: tuple[argparse.Namespace, int]) -> str:
    """Collects one world-model seed's data and trains its model (saved for `world_model` to load)."""
    args, seed = task
    torch.set_num_threads(args.threads)
    dataset = dataset_config(args, seed)
    collect(dataset, progress=args.progress)
    return world_model(args, dataset, seed)[1]["how"]


def target_errors(module: MrCoM, dataset: DatasetConfig, spec, windows: int = 256, horizon: int = 5) -> dict:
    """The model's anchored open-loop errors (h = 1) on the target's held-out behaviour episodes
    against the naive forecast's: observations per dim in units of their one-step change."""
    domain = module.domains.index(spec.domain)
    store = EpisodeStore(dataset.root)
    history = RealHistory.from_episodes(store.read_all(store.index(spec.id)), module.obs_dims[domain], module.act_dims[domain])
    batch = history.model_batch(module, domain, windows, 16 + horizon, np.random.default_rng(0))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        e = open_loop_errors(module.world_model, batch, horizon, anchor=True, anchor_reward=True)
    return {"obs_h1": e["model_obs"][0].item(), "naive_obs_h1": e["naive_obs"][0].item(),
            "reward_h1": e["model_reward"][0].item(), "naive_reward_h1": e["naive_reward"][0].item()}


_SHARED: dict = {}  # what every run reads, set before the worker processes fork


def run_path(method: str, target: str, seed: int) -> Path:
    shared = _SHARED
    uses_model, config = shared["configs"][method]
    if uses_model:  # the loop's settings and the world model this seed uses
        key = repr(config) + repr(shared["provenance"][seed % len(shared["models"])])
    else:
        key = repr({name: getattr(config, name) for name in MODEL_FREE_FIELDS})
    key += shared["code"]
    folder = shared["out"] / "runs" / f"{method}-{digest(key)}"
    return folder / f"{target.replace('/', '-')}-seed{seed}.json"


def run_task(task: tuple[str, str, int]) -> dict:
    """One adaptation run, loaded from its file when it already ran; written as soon as it ends."""
    method, target, seed = task
    path = run_path(method, target, seed)
    if path.exists():
        return json.loads(path.read_text())
    shared = _SHARED
    torch.set_num_threads(shared["args"].threads)
    uses_model, config = shared["configs"][method]
    model, provenance = None, {}
    if uses_model:  # a copy per run: fine-tuning trains the model it is given
        index = seed % len(shared["models"])
        model, provenance = copy.deepcopy(shared["models"][index]), shared["provenance"][index]
    result = adapt(shared["targets"][target], config, model, use_model=uses_model, seed=seed,
                   progress=shared["args"].progress, device=shared["args"].device)
    record = {"method": method, "target": target, "spec": str(result.target), "seed": seed, "steps": result.eval_steps,
              "scores": result.eval_scores, "summary": result.summary(), "provenance": provenance,
              "settings": repr(config), "code": _SHARED["code"], "metrics": {k: v for k, v in result.metrics.items() if k.startswith("charts/")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    print(f"  ran {method} {target} seed {seed}: final {result.score:.2f}, best {record['summary']['best_score']:.2f} "
          f"in {result.seconds:.0f}s", flush=True)
    return record


def run_all(tasks: list[tuple[str, str, int]], jobs: int) -> dict:
    """Every run not stored yet, `jobs` at once through the project's launcher (`launch.run_cells`,
    forked workers: the models are shared, not copied; each run's output in `--out/cells/<run>/cell.log`,
    one progress line over the grid, a failed run reported without stopping the others)."""
    from mrcom_lightning.launch import Cell, run_cells

    args = _SHARED["args"]
    records = {task: json.loads(run_path(*task).read_text()) for task in tasks if run_path(*task).exists()}
    pending = [task for task in tasks if task not in records]
    print(f"{len(records)} of {len(tasks)} runs stored, {len(pending)} to run", flush=True)
    # only the runs to make go to the launcher: stored ones would count as instant cells in its time estimate
    cells = [Cell(f"{m}-{t.replace('/', '-')}-seed{s}", _SHARED["out"] / "cells" / f"{m}-{t.replace('/', '-')}-seed{s}",
                  ((m, t, s),), cpus=args.threads, group=m) for m, t, s in pending]
    workers = jobs if args.device == "cpu" else 1  # CUDA does not survive a fork
    if cells:
        summary = run_cells(cells, run_task, workers=workers, start_method="fork", skip_done=False, label="adapt_efficiency")
        records.update({task: summary.results[cell.name] for task, cell in zip(pending, cells) if cell.name in summary.results})
    return {task: records[task] for task in tasks if task in records}


def stored_records(args: argparse.Namespace, configs: dict, scenarios_digests: dict[int, str]) -> dict:
    """The runs stored under `--out/runs/` that this code and these settings would make, found without
    a world model (`--report-only`): same code digest, same loop settings, and for the model methods the
    world model of the seed's index with the expected settings digest."""
    found = {}
    for path in sorted((Path(args.out) / "runs").glob("*/*.json")):
        record = json.loads(path.read_text())
        method = record.get("method")
        if method not in configs or record.get("code") != CODE or record.get("settings") != repr(configs[method][1]):
            continue
        if configs[method][0]:
            provenance = record.get("provenance", {})
            index = record["seed"] % args.world_models
            if provenance.get("world_model_seed") != index or provenance.get("model_settings") != scenarios_digests[index]:
                continue
        found[method, record["target"], record["seed"]] = record
    return found


ERROR_PANELS = {"charts/model_error/obs_h1": "model's one-step obs error\n(per dim, naive = 1)",
                "charts/model_error/reward_h1_over_naive": "model's one-step reward error\n÷ naive's"}


def plot(path: Path, curves: dict, errors: dict, targets: list[str]) -> None:
    """Score curves per target (mean ± std over seeds), and under them, for the model methods, the
    model's errors where the policy goes at each evaluation: a collapse can be read against them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [name for name in ERROR_PANELS if any(name in errors[t].get(m, {}) for t in targets for m in errors[t])]
    fig, axes = plt.subplots(1 + len(panels), len(targets), figsize=(4.5 * len(targets), 3.4 * (1 + len(panels))),
                             squeeze=False, sharex="col")
    for column, target in enumerate(targets):
        ax = axes[0, column]
        for method, (steps, runs) in curves[target].items():
            mean, std = np.mean(runs, 0), np.std(runs, 0)
            line, = ax.plot(steps, mean, marker="o", markersize=2.5, label=f"{method} (n={len(runs)})")
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        ax.set_title(target)
        ax.set_ylabel("score (% of max return)")
        ax.legend(fontsize="x-small")
        for row, name in enumerate(panels, start=1):
            ax = axes[row, column]
            for method, series in errors[target].items():
                if name in series:
                    steps, values = series[name]
                    ax.plot(steps, np.mean(values, 0), marker="o", markersize=2.5, label=method)
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
            ax.set_yscale("log")
            ax.set_ylabel(ERROR_PANELS[name])
            ax.legend(fontsize="x-small")
        axes[-1, column].set_xlabel("real steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SUSPECTS = {"charts/model_error/obs_h1": "obs error ÷ naive", "charts/model_error/reward_h1_over_naive": "reward error ÷ naive",
            "charts/q_mean": "critic's mean Q"}


def at_step(points: list, step: int) -> float:
    """A logged series' value at `step`: the last one logged at or before it (nan if none)."""
    values = [value for at, value in points if at <= step]
    return values[-1] if values else math.nan


def suspect_table(runs: dict[str, list[dict]]) -> list[str]:
    """Issue 34's suspect read against the collapses: for each method, the model's errors where the
    policy went (model methods; the null model's are the naive forecast's, 1 by definition) and the
    critic's mean Q at each run's best evaluation and at its end, means over the runs that collapsed
    and over the rest."""
    lines = ["", "Where runs collapsed, was the model wrong there, or the critic? The model's one-step errors where the "
             "policy went (per dim and reward, in units of the naive forecast's; the null model's are 1 by definition) "
             "and the critic's mean Q, at each run's best evaluation → at its end (means over runs, all targets):", "",
             "| method | runs | " + " | ".join(SUSPECTS.values()) + " | Q above its bound |", "|---|---|" + "---|" * (len(SUSPECTS) + 1)]
    for method, records in runs.items():
        for label, group in (("collapsed", [r for r in records if collapsed(r["scores"])]),
                             ("the rest", [r for r in records if not collapsed(r["scores"])])):
            if not group:
                continue
            cells = []
            for name in SUSPECTS:
                best = [at_step(r["metrics"].get(name, []), r["steps"][int(np.argmax(r["scores"]))]) for r in group]
                end = [at_step(r["metrics"].get(name, []), r["steps"][-1]) for r in group]
                known = not (np.all(np.isnan(best)) or np.all(np.isnan(end)))
                cells.append(f"{np.nanmean(best):.3g} → {np.nanmean(end):.3g}" if known else "")
            diverged = sum(critic_diverged(r) for r in group)
            lines.append(f"| {method} ({label}) | {len(group)} | " + " | ".join(cells) + f" | {diverged}/{len(group)} |")
    lines.append(f"(Q above its bound: the critic's mean Q above {Q_BOUND:g} = 2 / (1 − γ) at some point, twice what "
                 "rewards of at most 1 per step can earn at γ = 0.99, leaving room for SAC's entropy bonus: the critic diverged.)")
    return lines


Q_BOUND = 2.0 / (1.0 - 0.99)  # rewards of at most 1 per step (dm_control) plus room for the entropy bonus; γ = SACConfig.discount


def critic_diverged(record: dict) -> bool:
    """Whether the run's critic's mean Q ever exceeded what any policy can earn."""
    return any(value > Q_BOUND for _, value in record["metrics"].get("charts/q_mean", []))


def report(records: dict, args: argparse.Namespace, target_names: list[str]) -> tuple[str, list[str], dict, dict]:
    """The markdown tables, the last lines, the score curves and the model's error curves."""
    lines = ["| target | method | final | mean over the curve | worst seed | collapsed | n |", "|---|---|---|---|---|---|---|"]
    finals: dict[tuple[str, str], list[float]] = {}
    complete = {t: [s for s in args.seeds if all((m, t, s) in records for m in args.methods)] for t in target_names}
    target_names = [t for t in target_names if complete[t]]  # a partial grid: the seeds every method finished
    curves = {t: {} for t in target_names}
    errors = {t: {} for t in target_names}
    for target in target_names:
        for method in args.methods:
            runs = [records[method, target, seed] for seed in complete[target]]
            final = [r["scores"][-1] for r in runs]
            finals[method, target] = final
            curve_means = [float(np.mean(r["scores"])) for r in runs]
            collapses = sum(collapsed(r["scores"]) for r in runs)
            lines.append(f"| {target} | {method} | {np.mean(final):.2f} ± {np.std(final):.2f} | "
                         f"{np.mean(curve_means):.2f} ± {np.std(curve_means):.2f} | {min(final):.2f} | "
                         f"{collapses}/{len(runs)} | {len(runs)} |")
            curves[target][method] = (runs[0]["steps"], np.array([r["scores"] for r in runs]))
            for name in ERROR_PANELS:
                series = [r["metrics"].get(name, []) for r in runs]
                if all(series) and len({len(points) for points in series}) == 1:
                    errors[target].setdefault(method, {})[name] = (
                        [step for step, _ in series[0]], np.array([[v for _, v in points] for points in series]))
    domains = sorted({t.split("/")[1] for t in target_names})
    controls = [m for m in args.methods if m != "mrcom"]
    comparisons = []  # (domain, control, ratio, raw p)
    for domain in domains:
        mine = [t for t in target_names if t.split("/")[1] == domain]
        mrcom = [v for t in mine for v in finals["mrcom", t]] if "mrcom" in args.methods else []
        for control in controls:
            other = [v for t in mine for v in finals[control, t]]
            if mrcom:
                ratio = np.mean(mrcom) / np.mean(other) if np.mean(other) > 0 else math.nan
                comparisons.append((domain, control, ratio, paired_p_value(mrcom, other)))
    adjusted = holm([p for *_, p in comparisons])
    lines += ["", f"MrCoM's final against each method's, per domain (targets pooled, paired by target and seed; "
              f"Holm over the {sum(not math.isnan(p) for p in adjusted)} comparisons):", "",
              "| domain | method | MrCoM ÷ method | paired p | Holm p |", "|---|---|---|---|---|"]
    lines += [f"| {d} | {c} | {r:.3f} | {p:.3g} | {q:.3g} |" for (d, c, r, p), q in zip(comparisons, adjusted)]
    last = []
    lines += suspect_table({m: [records[m, t, s] for t in target_names for s in complete[t]] for m in args.methods})
    for domain in domains:  # late collapse against the null model (issue 34)
        mine = [t for t in target_names if t.split("/")[1] == domain]
        if not {"mrcom", "null"} <= set(args.methods) or not mine:
            continue
        runs = {m: [records[m, t, s] for t in mine for s in complete[t]] for m in ("mrcom", "null")}
        rate = {m: np.mean([collapsed(r["scores"]) for r in rs]) for m, rs in runs.items()}
        final = {m: np.mean([r["scores"][-1] for r in rs]) for m, rs in runs.items()}
        curve = {m: np.mean([np.mean(r["scores"]) for r in rs]) for m, rs in runs.items()}
        q = next((q for (d, c, *_), q in zip(comparisons, adjusted) if d == domain and c == "null"), math.nan)
        last.append(f"{domain}: collapse_rate_mrcom={rate['mrcom']:.2f} collapse_rate_null={rate['null']:.2f} "
                    f"mrcom_over_null_final={final['mrcom'] / final['null'] if final['null'] > 0 else math.nan:.3f} "
                    f"mrcom_over_null_curve={curve['mrcom'] / curve['null'] if curve['null'] > 0 else math.nan:.3f} p={q:.3g}")
    for domain in domains:
        rows = [(r, q, c) for (d, c, r, _), q in zip(comparisons, adjusted) if d == domain and c in CONTROLS]
        if rows:  # the best control is the one MrCoM's ratio is smallest against
            ratio, q, control = min(rows, key=lambda row: row[0])
            seeds = min(len(complete[t]) for t in target_names if t.split("/")[1] == domain)
            last.append(f"{domain}: mrcom_over_best_control={ratio:.3f} p={q:.3g} best_control={control} "
                        f"seeds={seeds} world_models={args.world_models}")
    return "\n".join(lines), last, curves, errors


def log_to_mlflow(args: argparse.Namespace, out: Path, files: list[Path], last: list[str]) -> None:
    import mlflow

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment("adapt_efficiency")
    with mlflow.start_run(run_name=f"adapt_efficiency-{args.targets}"):
        mlflow.log_params({"targets": args.targets, "seeds": ",".join(map(str, args.seeds)), "methods": ",".join(args.methods),
                           "world_models": args.world_models, "env_steps": args.env_steps, "set": " ".join(args.set)})
        for line in last:
            domain, _, rest = line.partition(": ")
            ratio = float(rest.split()[0].split("=")[1])
            if math.isfinite(ratio):
                mlflow.log_metric(f"{domain}/mrcom_over_best_control", ratio)
        for path in files:
            mlflow.log_artifact(str(path))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    scenarios = dataset_config(args, 0).scenarios
    domains = tuple(scenarios.domains)
    preparations = [(args, seed) for seed in range(args.world_models)]
    if not any(uses for uses, _ in method_configs(args).values()) or args.report_only:
        preparations = []
    if args.jobs > 1 and args.device == "cpu" and len(preparations) > 1:
        with multiprocessing.get_context("fork").Pool(min(args.jobs, len(preparations))) as pool:
            hows = pool.map(prepare, preparations, chunksize=1)
    else:
        hows = [prepare(task) for task in preparations]
    models, provenance = [], []
    for seed, how in enumerate(hows):
        module, record = world_model(args, dataset_config(args, seed), seed)  # loads what `prepare` saved
        models.append(module)
        provenance.append({k: v for k, v in record.items() if k != "how"})
        print(f"world model {seed}: {how}; digests {provenance[-1]}", flush=True)
    prepared_at = time.perf_counter()

    adapt_domains = tuple(args.adapt_domains.split(",")) if args.adapt_domains else domains
    targets = {}
    for split, index in TARGETS[args.targets]["targets"]:
        for domain in adapt_domains:
            targets[f"{split}/{domain}/{index}"] = [s for s in scenarios.draw(split) if s.domain == domain][index]
    for name, spec in targets.items():
        print(f"target {name}: {spec}")
        for seed, module in enumerate(models):  # (none with --report-only)
            e = target_errors(module, dataset_config(args, seed), spec)
            print(f"  world model {seed} on its held-out episodes, anchored h=1 (naive): observation per dim "
                  f"{e['obs_h1']:.2f} ({e['naive_obs_h1']:.2f}), reward {e['reward_h1']:.5f} ({e['naive_reward_h1']:.5f})")
    configs = method_configs(args)
    print(f"methods: {', '.join(args.methods)}; seeds {args.seeds}; loop {configs['mrcom'][1] if 'mrcom' in configs else ''}",
          flush=True)
    _SHARED.update(args=args, out=out, targets=targets, configs=configs, models=models, provenance=provenance, code=code_digest())
    # Seed by seed, so that an interrupted run leaves whole paired blocks (every method on every target).
    tasks = [(m, t, s) for s in args.seeds for t in targets for m in args.methods]
    if args.report_only:
        settings = {seed: digest(model_key(args, dataset_config(args, seed), seed)) for seed in range(args.world_models)}
        stored = stored_records(args, configs, settings)
        records = {task: stored[task] for task in tasks if task in stored}
        print(f"report only: {len(records)} of {len(tasks)} runs stored")
    else:
        records = run_all(tasks, args.jobs)

    tables, last, curves, errors = report(records, args, list(targets))
    targets = {t: targets[t] for t in curves}  # the targets with a complete seed
    if not targets:
        print(f"no target has a seed that every method finished ({len(records)} of {len(tasks)} runs)")
        return
    print("\n" + tables + "\n")
    summary = out / f"report-{args.targets}.md"
    summary.write_text(f"# adapt_efficiency, {args.targets} targets\n\n{tables}\n\n" + "\n".join(last) + "\n")
    (out / f"curves-{args.targets}.json").write_text(json.dumps(
        {t: {m: {"steps": st, "scores": r.tolist()} for m, (st, r) in c.items()} for t, c in curves.items()}))
    figure = out / f"curves-{args.targets}.png"
    plot(figure, curves, errors, list(targets))
    if args.tracking_uri:
        log_to_mlflow(args, out, [summary, figure, out / f"curves-{args.targets}.json"], last)
    print(f"curves: {figure}; elapsed {time.perf_counter() - start:.0f}s (data and models {prepared_at - start:.0f}s, "
          f"adaptation {time.perf_counter() - prepared_at:.0f}s)")
    for line in last:
        print(line)


if __name__ == "__main__":
    main()

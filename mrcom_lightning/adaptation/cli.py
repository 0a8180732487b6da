"""`mrcom adapt`: adapt a trained world model to target scenarios, against plain SAC, logged to MLflow."""

from __future__ import annotations

import dataclasses
import time

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from mrcom_lightning import tracking
from mrcom_lightning.adaptation.parallel import AdaptationRun, adapt_all
from mrcom_lightning.adaptation.settings import AdaptationConfig
from mrcom_lightning.adaptation.targets import resolve_targets
from mrcom_lightning.checkpoints import exit_on_checkpoint_error, load_checkpoint, load_module
from mrcom_lightning.threads import Threads, resolve_threads, resolve_workers


def adapt_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="mrcom adapt",
        description="Adapt a trained MrCoM world model to target scenarios (Algorithm 2) and score it "
        "against plain SAC with the same number of real environment steps.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with the options below")
    parser.add_argument("--ckpt_path", type=str, required=True,
                        help="a checkpoint written by `mrcom fit`: a file, `runs:/<run_id>` (its best checkpoint), "
                        "`runs:/<run_id>/<artifact>` or `models:/<name>/<version>` in the store of --tracking_uri")
    parser.add_argument(
        "--target",
        type=list[str],
        default=["test_id/*/0", "test_ood/*/0"],
        help="scenarios of the checkpoint's meta-scenario set as SPLIT/DOMAIN/INDEX (`*`: every domain)",
    )
    parser.add_class_arguments(AdaptationConfig, "adaptation", help="the adaptation loop")
    parser.add_argument("--baseline", type=bool, default=True, help="also run plain SAC with the same budget")
    parser.add_argument("--seeds", type=list[int], default=[0], help="one adaptation per seed and target")
    parser.add_argument("--threads", type=Threads, default="auto",
                        help="torch CPU threads of this process (`auto`: every available core); each run has one")
    parser.add_argument("--workers", type=Threads, default="auto",
                        help="processes the runs (target × seed × method) share, one per core with `auto`; "
                        "on CUDA 1. The scores do not depend on it")
    parser.add_argument("--device", type=str, default="cpu", help="torch device of the agent and model")
    parser.add_argument("--tracking_uri", type=str | None, default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    parser.add_argument("--experiment", type=str, default="adapt", help="MLflow experiment of the runs")
    parser.add_argument("--progress", type=bool, default=True, help="show one progress bar over all runs")
    return parser


def _log(tracking_uri: str, experiment: str, ckpt_path: str, name: str, seed: int, result, config,
         source_run: str | None = None) -> str:
    """One MLflow run per adaptation: its settings as params, the score curve as `adapt/<target>/score`
    (what `mrcom compare --metric 'adapt/<split>/{domain}/score'` reads) and every metric the loop
    logged (`losses/...`, `charts/...`) against the real step; tagged `mrcom.evaluates` with the run
    whose checkpoint it adapted (`source_run`). Returns the run's id."""
    from mlflow.entities import Metric, Param, RunTag

    client = tracking.prepare_store(tracking_uri)
    with tracking.store_lock(tracking_uri):
        experiment_id = tracking.ensure_experiment(client, experiment, tracking_uri)  # tagged as model training
    method = result.method
    tags = tracking.git_tags() | tracking.parent_tag(client) | {"command": "adapt", "seed": str(seed)}
    if source_run:
        tags[tracking.EVALUATES_TAG] = source_run
    run = client.create_run(experiment_id, run_name=f"{method}-{name}-seed{seed}", tags=tags)
    run_id = run.info.run_id
    params = {"method": method, "target": name, "domain": result.target.domain, "seed": seed, "ckpt_path": ckpt_path,
              "spec": str(result.target)} | tracking.flat_params(dataclasses.asdict(config), "adaptation.", ".")  # fmt: skip
    now = int(time.time() * 1000)
    metrics = [Metric(f"adapt/{name}/score", score, now, step) for step, score in zip(result.eval_steps, result.eval_scores)]
    metrics += [Metric(key, value, now, step) for key, points in result.metrics.items() for step, value in points]
    client.log_batch(run_id, params=[Param(key, str(value)[:6000]) for key, value in params.items()],
                     tags=[RunTag(tracking.NOTE_TAG, f"adaptation to {name} ({result.target}), checkpoint {ckpt_path}")])
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def adapt_main(argv: list[str]) -> None:
    parser = adapt_parser()
    config = parser.parse_args(argv)
    try:
        settings = parser.instantiate(config)
        torch.set_num_threads(resolve_threads(settings.threads))
        workers = 1 if torch.device(settings.device).type == "cuda" else settings.workers
        resolve_workers(workers, 1)
    except ValueError as err:
        parser.error(str(err))
    uri = tracking.tracking_uri(settings.tracking_uri)
    with exit_on_checkpoint_error("mrcom adapt"):
        # A `runs:/` or `models:/` URI names a checkpoint in the MLflow store: downloaded first.
        ckpt_file = tracking.resolve_checkpoint(settings.ckpt_path, uri)
        checkpoint = load_checkpoint(ckpt_file)
    source_run = tracking.run_id_of(settings.ckpt_path) or dict(checkpoint.get("mrcom_run") or {}).get("run_id")
    try:
        scenarios = checkpoint["datamodule_hyper_parameters"]["dataset"].scenarios
        targets = resolve_targets(scenarios, settings.target)
    except (ValueError, KeyError) as err:
        parser.error(str(err))
    module = load_module(ckpt_file)
    methods = (True, False) if settings.baseline else (True,)
    runs = [AdaptationRun(name, spec, use_model, seed) for name, spec in targets.items() for seed in settings.seeds
            for use_model in methods]  # fmt: skip
    results = adapt_all(runs, settings.adaptation, module, workers=resolve_workers(workers, len(runs)),
                        progress=settings.progress, device=settings.device)  # fmt: skip
    for run, result in zip(runs, results):
        _log(uri, settings.experiment, settings.ckpt_path, run.name, run.seed, result,
             settings.adaptation, source_run)  # fmt: skip
    print(f"{'target':<24} {'method':<6} {'seed':>4} {'score':>7} {'real_steps':>10}")
    for run, result in zip(runs, results):
        print(f"{run.name:<24} {result.method:<6} {run.seed:>4} {result.score:7.2f} {result.eval_steps[-1]:>10}")

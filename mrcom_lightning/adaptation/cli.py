"""`mrcom adapt`: adapt a trained world model to target scenarios, against plain SAC, logged to MLflow."""

from __future__ import annotations

import copy
import dataclasses
import time

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from mrcom_lightning.adaptation.loop import adapt
from mrcom_lightning.adaptation.settings import AdaptationConfig
from mrcom_lightning.adaptation.targets import resolve_targets
from mrcom_lightning.checkpoints import allow_project_globals, exit_on_checkpoint_error, load_checkpoint
from mrcom_lightning.tracking import DEFAULT_TRACKING_URI


def adapt_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="mrcom adapt",
        description="Adapt a trained MrCoM world model to target scenarios (Algorithm 2) and score it "
        "against plain SAC with the same number of real environment steps.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with the options below")
    parser.add_argument("--ckpt_path", type=str, required=True, help="a checkpoint written by `mrcom fit`")
    parser.add_argument(
        "--target",
        type=list[str],
        default=["test_id/*/0", "test_ood/*/0"],
        help="scenarios of the checkpoint's meta-scenario set as SPLIT/DOMAIN/INDEX (`*`: every domain)",
    )
    parser.add_class_arguments(AdaptationConfig, "adaptation", help="the adaptation loop")
    parser.add_argument("--baseline", type=bool, default=True, help="also run plain SAC with the same budget")
    parser.add_argument("--seeds", type=list[int], default=[0], help="one adaptation per seed and target")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", type=str, default="cpu", help="torch device of the agent and model")
    parser.add_argument("--tracking_uri", type=str, default=DEFAULT_TRACKING_URI, help="MLflow tracking URI")
    parser.add_argument("--experiment", type=str, default="adapt", help="MLflow experiment of the runs")
    parser.add_argument("--progress", type=bool, default=True, help="show progress bars")
    return parser


def _log(tracking_uri: str, experiment: str, ckpt_path: str, name: str, seed: int, result, config) -> None:
    """One MLflow run per adaptation: its settings as params, the score curve as `adapt/<target>/score`
    (what `mrcom compare --metric 'adapt/<split>/{domain}/score'` reads) and every metric the loop
    logged (`losses/...`, `charts/...`) against the real step."""
    import mlflow
    from mlflow.entities import Metric

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    method = result.method
    with mlflow.start_run(run_name=f"{method}-{name}-seed{seed}") as run:
        mlflow.log_params(
            {"method": method, "target": name, "domain": result.target.domain, "seed": seed, "ckpt_path": ckpt_path,
             "spec": str(result.target)}
            | _flat("adaptation", dataclasses.asdict(config))
        )
        now = int(time.time() * 1000)
        metrics = [Metric(f"adapt/{name}/score", score, now, step) for step, score in zip(result.eval_steps, result.eval_scores)]
        metrics += [Metric(key, value, now, step) for key, points in result.metrics.items() for step, value in points]
        client = mlflow.MlflowClient()
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run.info.run_id, metrics=metrics[start : start + 1000])


def _flat(prefix: str, values: dict) -> dict:
    """Nested settings as MLflow params: `adaptation.rollout.horizon`, ..."""
    out = {}
    for key, value in values.items():
        out |= _flat(f"{prefix}.{key}", value) if isinstance(value, dict) else {f"{prefix}.{key}": value}
    return out


def _load_module(ckpt_path: str):
    """The MrCoM of a checkpoint that `load_checkpoint` has accepted, rebuilt by Lightning.

    Lightning reads the file again (weights-only, with the same allow-list) so that the module
    is restored exactly as Lightning restores it, hooks included.
    """
    from mrcom_lightning.module import MrCoM

    with allow_project_globals():
        return MrCoM.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)


def adapt_main(argv: list[str]) -> None:
    parser = adapt_parser()
    config = parser.parse_args(argv)
    try:
        settings = parser.instantiate_classes(config)
        if settings.threads < 1:
            raise ValueError(f"threads must be >= 1, got {settings.threads}")
        torch.set_num_threads(settings.threads)
    except ValueError as err:
        parser.error(str(err))
    with exit_on_checkpoint_error("mrcom adapt"):
        checkpoint = load_checkpoint(settings.ckpt_path)
    try:
        scenarios = checkpoint["datamodule_hyper_parameters"]["dataset"].scenarios
        targets = resolve_targets(scenarios, settings.target)
    except (ValueError, KeyError) as err:
        parser.error(str(err))
    module = _load_module(settings.ckpt_path)
    rows = []
    for name, spec in targets.items():
        for seed in settings.seeds:
            methods = [True, False] if settings.baseline else [True]
            for use_model in methods:
                # A copy per run: with `fine_tune` the adaptation trains the model it is given.
                model = copy.deepcopy(module) if use_model else None
                result = adapt(spec, settings.adaptation, model, use_model, seed, settings.progress, settings.device)
                _log(settings.tracking_uri, settings.experiment, settings.ckpt_path, name, seed, result, settings.adaptation)
                rows.append((name, result.method, seed, result.score, result.eval_steps[-1]))
    print(f"{'target':<24} {'method':<6} {'seed':>4} {'score':>7} {'real_steps':>10}")
    for name, method, seed, score, steps in rows:
        print(f"{name:<24} {method:<6} {seed:>4} {score:7.2f} {steps:>10}")

"""The MLflow run of a `mrcom fit/validate/test/predict`: named, tagged and described by the
CLI's config callback (`TrackRun`), with the best checkpoint and the loss curves as artifacts
at the end of `fit` (docs/tracking.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

from mrcom_lightning import tracking

# What `mrcom test --ckpt_path ...` without --config reads from a checkpoint besides the hyperparameters.
CARRIED_TRAINER_KEYS = ("logger", "callbacks", "default_root_dir", "precision", "accelerator")


@dataclasses.dataclass
class Invocation:
    """How the command was started, which the parsed config does not say.

    Attributes:
        argv: the command line (`fit --config ...`).
        config_files: the `--config` files given, in order.
        checkpoint_uri: `--ckpt_path` as given when it was an MLflow URI (`runs:/...`).
        source_run: the MLflow run whose checkpoint `--ckpt_path` loads, when known.
        run_name: the name given to the MLflow runs (None: the logger's own `run_name`).
    """

    argv: list[str]
    config_files: list[str] = dataclasses.field(default_factory=list)
    checkpoint_uri: str | None = None
    source_run: str | None = None
    run_name: str | None = None


def mlflow_loggers(trainer) -> list[MLFlowLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, MLFlowLogger)]


class TrackRun(SaveConfigCallback):
    """Writes the resolved config beside the checkpoints and describes the MLflow run: a unique
    name, tags, trainer and adaptation settings as params, the dataset as an input; at the end
    of `fit`, the best checkpoint and a figure of the losses as artifacts (docs/tracking.md).

    Lightning's own callback asserts `trainer.log_dir`, which an MLflow logger on an SQLite
    store does not have (DESIGN.md §8).
    """

    def __init__(self, *args, invocation: Invocation | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.invocation = invocation or Invocation(argv=[])

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved or not trainer.is_global_zero:
            return
        stage = getattr(stage, "value", stage)
        folder = Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"config-{stage}.yaml"
        self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=False)
        self.already_saved = True
        for logger in mlflow_loggers(trainer):
            logger.experiment.log_artifact(logger.run_id, str(path))
            self._describe(trainer, logger, stage)

    def _describe(self, trainer, logger: MLFlowLogger, stage: str) -> None:
        from mlflow.entities import RunTag

        client, uri = logger.experiment, logger._tracking_uri
        run = client.get_run(logger.run_id)
        tracking.mark_experiment(client, run.info.experiment_id)
        if self.invocation.run_name is not None:
            tracking.claim_run_name(client, uri, run, self.invocation.run_name)
        config = self.config.as_dict()
        tags = {"command": stage, "seed": str(config.get("seed_everything"))}
        tags["config"] = ", ".join(self.invocation.config_files) or "(from the checkpoint)"
        tags["variant"] = (logger.tags or {}).get("method", "")
        tags |= {k: v for k, v in tracking.git_tags().items() if k not in run.data.tags}
        tags |= tracking.parent_tag(client)
        if self.invocation.source_run:
            tags[tracking.RESUMES_TAG if stage == "fit" else tracking.EVALUATES_TAG] = self.invocation.source_run
        tags[tracking.NOTE_TAG] = self._note(trainer, stage)
        client.log_batch(run.info.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])
        params = run_params(config, trainer)
        if self.invocation.checkpoint_uri:  # rather than the temporary file it was downloaded to
            params["ckpt_path"] = self.invocation.checkpoint_uri
        tracking.log_params(client, run.info.run_id, params)
        dataset = dataset_settings(trainer)
        if dataset is not None and Path(dataset.root).is_dir():
            tracking.log_dataset(client, uri, run.info.run_id, dataset.root, "train" if stage == "fit" else stage)

    def _note(self, trainer, stage: str) -> str:
        """The run's description: the command, and what it trained or evaluated."""
        command = "mrcom " + " ".join(self.invocation.argv)
        dataset = dataset_settings(trainer)
        lines = [f"`{command}`", ""]
        if dataset is not None:
            what = f"data `{dataset.root}` ({dataset.behaviour} behaviour; domains {', '.join(dataset.scenarios.domains)})"
            lines.append(f"{trainer.max_steps} training steps on {what}" if stage == "fit" else f"{stage} on {what}")
        if self.invocation.source_run:
            lines.append(f"checkpoint of run {self.invocation.source_run}")
        return "\n".join(lines)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        config = self.config.as_dict()
        trainer_config = config.get("trainer", {})
        checkpoint["mrcom_trainer"] = {k: trainer_config[k] for k in CARRIED_TRAINER_KEYS if k in trainer_config}
        checkpoint["mrcom_seed"] = config.get("seed_everything")
        for logger in mlflow_loggers(trainer)[:1]:  # the run this checkpoint belongs to
            checkpoint["mrcom_run"] = {"run_id": logger.run_id, "tracking_uri": logger._tracking_uri}

    def on_fit_end(self, trainer, pl_module) -> None:
        """Logs the best checkpoint (`checkpoints/best.ckpt`) and the learning curves (`figures/`)."""
        if not trainer.is_global_zero:
            return
        best = best_checkpoint(trainer)
        for logger in mlflow_loggers(trainer):
            client, run_id = logger.experiment, logger.run_id
            if best is not None:
                client.log_artifact(run_id, str(best), tracking.CHECKPOINT_ARTIFACTS)
                client.set_tag(run_id, tracking.CHECKPOINT_TAG, f"runs:/{run_id}/{tracking.CHECKPOINT_ARTIFACTS}/{best.name}")
            figure = tracking.plot_learning_curves(client, run_id, Path(trainer.default_root_dir) / "figures" / "losses.png")
            if figure is not None:
                client.log_artifact(run_id, str(figure), "figures")


def dataset_settings(trainer):
    """The datamodule's `DatasetConfig` (`root`, `behaviour`, `scenarios`), if it has one."""
    return dict(getattr(trainer.datamodule, "hparams", None) or {}).get("dataset")


def best_checkpoint(trainer) -> Path | None:
    """The file of the monitored checkpoint callback's best model (`best.ckpt`), if written."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor and callback.best_model_path:
            if Path(callback.best_model_path).is_file():
                return Path(callback.best_model_path)
    return None


def run_params(config: dict, trainer) -> dict:
    """The settings Lightning does not log itself: the trainer's, and each adaptation callback's
    (`adaptation/<name>`, its `AdaptationConfig` flattened into the same prefix)."""
    params = {f"trainer/{k}": v for k, v in config.get("trainer", {}).items() if isinstance(v, (bool, int, float, str))}
    params |= {k: config.get(k) for k in ("seed_everything", "threads", "ckpt_path") if config.get(k) is not None}
    for callback in trainer.callbacks:
        settings = getattr(callback, "adaptation", None)
        if not dataclasses.is_dataclass(settings):
            continue
        fields = {k: v for k, v in vars(callback).items() if not k.startswith("_") and k not in ("adaptation", "validations")}
        for key, value in tracking.flat_params(fields | dataclasses.asdict(settings)).items():
            params[f"adaptation/{key}"] = value
    return params


def sets_method(config_file: str) -> bool:
    """Whether a config file sets the MLflow tag `method` (a variant: baseline or ablation)."""
    try:
        config = yaml.safe_load(Path(config_file).read_text()) or {}
        return "method" in (config["trainer"]["logger"]["init_args"]["tags"] or {})
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return False


def run_name(stage: str, config_files: list[str], method: str | None, seed, source: str | None, root_dir: str) -> str:
    """`<config>-<method>-seed<k>`: the first config file and every further one that is not a
    variant (`configs/multi.yaml --config configs/observation/add_gaussian.yaml`:
    `multi+add_gaussian`), the `method` tag, the seed. A run that loads another run's checkpoint
    is `<that run's name>-<stage>`."""
    if stage != "fit" and source:
        return f"{source}-{stage}"
    settings = [Path(f).stem for i, f in enumerate(config_files) if i == 0 or not sets_method(f)]
    parts = ["+".join(settings) or Path(root_dir).name] + ([method] if method else [])
    if isinstance(seed, int) and not isinstance(seed, bool):
        parts.append(f"seed{seed}")
    return "-".join(parts) + ("" if stage == "fit" else f"-{stage}")


def source_run_name(uri: str | None, run_id: str | None) -> str | None:
    """The name of run `run_id` in the store `uri`, if it is there."""
    if not uri or not run_id:
        return None
    try:
        return tracking.prepare_store(uri).get_run(run_id).info.run_name
    except Exception:  # another store, or deleted
        return None

"""`mrcom fit / validate / test / predict`: the LightningCLI of the world model."""

from __future__ import annotations

import dataclasses
import json
import pickle
import warnings
from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from mrcom_lightning.checkpoints import (
    CheckpointError,
    allow_project_globals,
    exit_on_checkpoint_error,
    load_checkpoint,
    load_error,
)
from mrcom_lightning import tracking
from mrcom_lightning.callbacks.tracking import Invocation, TrackRun, mlflow_loggers, run_name, source_run_name
from mrcom_lightning.data.episodes import atomic_write
from mrcom_lightning.module import MrCoM
from mrcom_lightning.threads import AUTO, Threads, resolve_threads
from mrcom_lightning.tracking import DEFAULT_ARTIFACTS, DEFAULT_TRACKING_URI, TEST_METRICS

EVAL_COMMANDS = ("validate", "test", "predict")
# `--ckpt_path` values Lightning resolves itself (to a file it then loads inside `allow_project_globals`).
CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar without `v_num` (for MLflow, the last four characters of the run id)."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class MrCoMCLI(LightningCLI):
    """LightningCLI with the datamodule's dims linked into the model, a torch thread setting (`--threads
    auto`: every core of a run alone, `mrcom_lightning.threads`), and MLflow runs named and described
    (`TrackRun`)."""

    def __init__(self, *args, invocation: Invocation | None = None, **kwargs):
        self.invocation = invocation or Invocation(argv=[])
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--threads",
            type=Threads,
            default=AUTO,
            help="torch intra-op threads: `auto` gives a run alone every core it may use and each worker of a "
            "parallel launcher ($MRCOM_PARALLEL_WORKER, $OMP_NUM_THREADS) its share; or a number",
        )
        parser.link_arguments("data.domain_dims", "model.domain_dims", apply_on="instantiate")
        parser.link_arguments("data.num_scenarios", "model.num_scenarios", apply_on="instantiate")
        parser.link_arguments("data.prompt_length", "model.world_model.context_length")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        try:
            torch.set_num_threads(resolve_threads(config.threads))
        except ValueError as err:
            self.parser.error(str(err))
        if config.get("weights_only") is False:
            self.parser.error(
                "--weights_only false is not supported: it would let a checkpoint run any code it names "
                "(README.md, Security)"
            )
        self._check_ckpt_path(config.get("ckpt_path"))
        for uri in logger_uris(config.get("trainer")):
            tracking.prepare_store(uri)  # tables created under a lock, before any logger connects

    def _check_ckpt_path(self, ckpt_path) -> None:
        """Loads a `--ckpt_path` file once, safely, before any data is collected or model built.

        A refused, damaged or missing checkpoint then ends the command at once, in one line,
        instead of after `prepare_data` (which may collect a dataset for minutes).
        """
        if ckpt_path is None or "://" in str(ckpt_path) or str(ckpt_path).split(":")[0] in CKPT_KEYWORDS:
            return
        with exit_on_checkpoint_error(f"mrcom {self.config.subcommand}"):
            checkpoint = load_checkpoint(ckpt_path)
        if self.invocation.source_run is None:
            self.invocation.source_run = dict(checkpoint.get("mrcom_run") or {}).get("run_id")

    def _run_subcommand(self, subcommand: str) -> None:
        """Runs the subcommand with the project's config classes allowed in Lightning's checkpoint load.

        Lightning loads `--ckpt_path` weights-only (see `_prepare_subcommand_kwargs`); a file it
        refuses or cannot read (say `last` resolved to a truncated file) is reported in one line.
        """
        with exit_on_checkpoint_error(f"mrcom {subcommand}"), allow_project_globals():
            try:
                super()._run_subcommand(subcommand)
            except (pickle.UnpicklingError, RuntimeError) as err:
                error = self._checkpoint_error(err)
                if error is None:
                    raise
                raise error from None

    def _checkpoint_error(self, err: BaseException) -> CheckpointError | None:
        """`err` as a `CheckpointError` naming the file, if it came from loading the checkpoint."""
        ckpt_path = getattr(self.trainer, "ckpt_path", None)
        from_loading = isinstance(err, pickle.UnpicklingError) or "PytorchStreamReader" in str(err)
        return load_error(ckpt_path, err) if ckpt_path and from_loading else None

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            kwargs["weights_only"] = True  # also where TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set
        return kwargs

    def _parse_ckpt_path(self) -> None:
        # Lightning would re-read only the model's hyperparameters here, and turns the dataclass
        # settings back into defaults; `config_from_checkpoint` has already given model and data.
        return

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # a value the types allow but a class rejects: report it as a usage error
            self.parser.error(str(err))

    def _fix_checkpoint_dirs(self) -> None:
        # A fixed directory is what lets `--ckpt_path last` find the previous run's checkpoint:
        # with MLflow each run gets a new id, and so would a logger-derived path.
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(Path(self.trainer.default_root_dir) / "checkpoints")

    def _show_version_free_progress_bar(self) -> None:
        bar = self.trainer.progress_bar_callback
        if type(bar) is TQDMProgressBar:  # Lightning's default: the same bar without `v_num`
            index = self.trainer.callbacks.index(bar)
            self.trainer.callbacks[index] = ProgressBar(bar.refresh_rate, bar.process_position)

    def _name_runs(self, stage: str) -> None:
        """Names the MLflow runs `<config>-<method>-seed<k>` before they are created (unless the
        logger was given a `run_name`); `TrackRun` makes the name unique in its experiment."""
        if rank_zero_only.rank != 0:
            return
        config = self.config[self.config.subcommand]
        for logger in mlflow_loggers(self.trainer):
            tags = dict(logger.tags or {})
            if logger._run_name is not None or "mlflow.runName" in tags:
                continue
            source = source_run_name(logger._tracking_uri, self.invocation.source_run)
            name = run_name(stage, self.invocation.config_files, tags.get("method"), config.get("seed_everything"),
                            source, self.trainer.default_root_dir)  # fmt: skip
            logger.tags = tags | {"mlflow.runName": name}
            self.invocation.run_name = name

    def _before(self, stage: str) -> None:
        self._fix_checkpoint_dirs()
        self._show_version_free_progress_bar()
        self._name_runs(stage)

    def before_fit(self) -> None:
        self._before("fit")

    def before_validate(self) -> None:
        self._before("validate")

    def before_test(self) -> None:
        self._before("test")

    def before_predict(self) -> None:
        self._before("predict")

    def _print_runs(self) -> None:
        """The MLflow runs of this command: name, id, experiment, and how to look at them."""
        for logger in mlflow_loggers(self.trainer):
            if logger._run_id is None:  # ddp_spawn: the run lives in the workers; do not start one here
                continue
            client, uri = logger.experiment, logger._tracking_uri
            run = client.get_run(logger.run_id)
            experiment = client.get_experiment(run.info.experiment_id).name
            print(f"MLflow run {run.info.run_name} (id {run.info.run_id}) in experiment {experiment}, store {uri}")
            if tracking.CHECKPOINT_TAG in run.data.tags:
                print(f"  best checkpoint: {run.data.tags[tracking.CHECKPOINT_TAG]}")
            print(f"  {tracking.ui_hint(uri, run.info.experiment_id, run.info.run_id)}")

    def after_test(self) -> None:
        """Writes the test metrics to `<default_root_dir>/test_metrics.json` (what a study reads)
        and logs them as an artifact of the test run."""
        if not self.trainer.is_global_zero:
            return
        path = Path(self.trainer.default_root_dir) / TEST_METRICS
        metrics = {name: float(value) for name, value in sorted(self.trainer.callback_metrics.items())}
        payload = json.dumps(metrics, indent=1).encode()
        atomic_write(path, lambda f: f.write(payload))
        print(f"test metrics: {path}")
        for logger in mlflow_loggers(self.trainer):
            if logger._run_id is not None:
                logger.experiment.log_artifact(logger.run_id, str(path))
        self._print_runs()

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.filename in ("best", "last"):
                path = callback.best_model_path
                if not path and callback.dirpath:
                    # ddp_spawn hands only the first checkpoint callback's path back from its workers.
                    written = Path(callback.dirpath) / f"{callback.filename}{callback.FILE_EXTENSION}"
                    path = str(written) if written.is_file() else ""
                print(f"{callback.filename} checkpoint: {path or '(none yet)'}")
        self._print_runs()


def logger_uris(trainer_config) -> list[str]:
    """The tracking URIs of the MLflow loggers in a parsed `trainer` config."""
    loggers = (trainer_config or {}).get("logger")
    uris = []
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if str(getattr(logger, "class_path", "")).endswith("MLFlowLogger"):
            uri = (logger.get("init_args") or {}).get("tracking_uri")
            if uri:
                uris.append(uri)
    return uris


def trainer_defaults() -> dict:
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.MLFlowLogger",
            "init_args": {
                "experiment_name": "mrcom",
                "tracking_uri": DEFAULT_TRACKING_URI,
                "artifact_location": DEFAULT_ARTIFACTS,
            },
        },
        # Persistent: every run keeps best.ckpt (lowest val/loss) and last.ckpt in a fixed folder.
        # Two callbacks: Lightning 2.6 writes `save_last` only when a top-k checkpoint is saved at
        # the same step, so last.ckpt would be a copy of best.ckpt and a resume would go back to
        # the best step. The unmonitored one overwrites last.ckpt after every validation.
        "callbacks": [
            ModelCheckpoint(
                filename="best", monitor="val/loss", mode="min", save_top_k=1, enable_version_counter=False
            ),
            ModelCheckpoint(filename="last", save_top_k=1, enable_version_counter=False),
        ],
        "max_steps": 1000,
        "val_check_interval": 250,
        "check_val_every_n_epoch": None,
        "default_root_dir": "runs/default",
    }


def _plain(value):
    """Dataclasses, tuples and mappings as plain YAML-safe data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_from_checkpoint(argv: list[str]) -> list[str]:
    """For validate/test/predict with `--ckpt_path` and no `--config`: the settings the
    checkpoint carries (model and datamodule hyperparameters) as a `--config` YAML string.

    The checkpoint is read with `load_checkpoint`; a refused, damaged or missing file ends
    the command with one line naming it."""
    if not argv or argv[0] not in EVAL_COMMANDS or any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv
    ckpt_path = option_value(argv, "--ckpt_path")
    if ckpt_path is None:
        return argv
    with exit_on_checkpoint_error(f"mrcom {argv[0]}"):
        checkpoint = load_checkpoint(ckpt_path)
    config = {}
    for key, section in (("hyper_parameters", "model"), ("datamodule_hyper_parameters", "data")):
        hparams = {k: v for k, v in dict(checkpoint.get(key, {})).items() if not k.startswith("_")}
        if section == "model":  # linked from the datamodule, not settable
            hparams = {k: v for k, v in hparams.items() if k not in ("domain_dims", "num_scenarios")}
        config[section] = _plain(hparams)
    if "mrcom_trainer" in checkpoint:
        config["trainer"] = checkpoint["mrcom_trainer"]
    if checkpoint.get("mrcom_seed") is not None:
        config["seed_everything"] = checkpoint["mrcom_seed"]
    # `--config` takes the YAML itself as well as a file name: nothing is written to disk.
    return [argv[0], "--config", yaml.safe_dump(config), *argv[1:]]


def option_value(argv: list[str], option: str) -> str | None:
    """The last value of `option` (`--option value` or `--option=value`) in `argv`."""
    value = None
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
    return value


def resolve_ckpt_argument(argv: list[str]) -> list[str]:
    """`argv` with an MLflow `--ckpt_path` (`runs:/<run_id>/checkpoints/best.ckpt`) replaced by
    the file downloaded from the store (`--trainer.logger.init_args.tracking_uri`, else
    `$MLFLOW_TRACKING_URI`, else `sqlite:///mlruns.db`); a missing one ends the command in one line."""
    uri = option_value(argv, "--ckpt_path")
    if uri is None or not tracking.is_artifact_uri(uri):
        return argv
    with exit_on_checkpoint_error(f"mrcom {argv[0]}"):
        local = tracking.resolve_checkpoint(uri, option_value(argv, "--trainer.logger.init_args.tracking_uri"))
    return [f"--ckpt_path={local}" if arg == f"--ckpt_path={uri}" else local if arg == uri else arg for arg in argv]


def config_files(argv: list[str]) -> list[str]:
    """The `--config` values of `argv` that are files (not inline YAML), in order."""
    files = []
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--config=") else arg if i and argv[i - 1] == "--config" else None
        if value and Path(value).is_file():
            files.append(value)
    return files


def run(argv: list[str]) -> None:
    """Runs a LightningCLI subcommand (fit, validate, test, predict)."""
    from mrcom_lightning.datamodules import MultiScenarioDataModule

    uri = option_value(argv, "--ckpt_path")
    invocation = Invocation(argv=list(argv), config_files=config_files(argv))
    if uri is not None and tracking.is_artifact_uri(uri):
        invocation.checkpoint_uri, invocation.source_run = uri, tracking.run_id_of(uri)
    # `args` carries the command line (plus a config from the checkpoint): not a mistake.
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    MrCoMCLI(
        MrCoM,
        MultiScenarioDataModule,
        args=config_from_checkpoint(resolve_ckpt_argument(argv)),
        trainer_defaults=trainer_defaults(),
        save_config_callback=TrackRun,
        save_config_kwargs={"overwrite": True, "invocation": invocation},
        # Hyperparameters stay the objects `__init__` received (dataclass settings included).
        load_from_checkpoint_support=False,
        parser_kwargs={"description": "MrCoM: train and evaluate a unified world model across MuJoCo scenarios."},
        invocation=invocation,
    )

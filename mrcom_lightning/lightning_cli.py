"""`mrcom fit / validate / test / predict`: the LightningCLI of the world model."""

from __future__ import annotations

import dataclasses
import json
import pickle
import warnings
from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from mrcom_lightning.checkpoints import (
    CheckpointError,
    allow_project_globals,
    exit_on_checkpoint_error,
    load_checkpoint,
    load_error,
)
from mrcom_lightning.data.episodes import atomic_write
from mrcom_lightning.module import MrCoM
from mrcom_lightning.tracking import DEFAULT_ARTIFACTS, DEFAULT_TRACKING_URI, TEST_METRICS

EVAL_COMMANDS = ("validate", "test", "predict")
CARRIED_TRAINER_KEYS = ("logger", "callbacks", "default_root_dir", "precision", "accelerator")
# `--ckpt_path` values Lightning resolves itself (to a file it then loads inside `allow_project_globals`).
CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


class SaveConfig(SaveConfigCallback):
    """Writes the resolved config beside the checkpoints and logs it as an MLflow artifact.

    Lightning's own callback asserts `trainer.log_dir`, which an MLflow logger on an SQLite
    store does not have (DESIGN.md §8).
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved or not trainer.is_global_zero:
            return
        folder = Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"config-{getattr(stage, 'value', stage)}.yaml"
        self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=False)
        self.already_saved = True
        for logger in trainer.loggers:
            if hasattr(logger, "run_id") and hasattr(logger.experiment, "log_artifact"):
                logger.experiment.log_artifact(logger.run_id, str(path))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        # What `mrcom test --ckpt_path ...` without --config needs besides the hyperparameters.
        config = self.config.as_dict()
        trainer_config = config.get("trainer", {})
        checkpoint["mrcom_trainer"] = {k: trainer_config[k] for k in CARRIED_TRAINER_KEYS if k in trainer_config}
        checkpoint["mrcom_seed"] = config.get("seed_everything")


class MrCoMCLI(LightningCLI):
    """LightningCLI with the datamodule's dims linked into the model and a torch thread setting."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--threads",
            type=int,
            default=1,
            help="torch intra-op threads; 1 stays fast when other processes share the cores, 2 is faster on "
            "an idle machine (benchmarks/README.md)",
        )
        parser.link_arguments("data.domain_dims", "model.domain_dims", apply_on="instantiate")
        parser.link_arguments("data.num_scenarios", "model.num_scenarios", apply_on="instantiate")
        parser.link_arguments("data.prompt_length", "model.world_model.context_length")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        if config.threads < 1:
            raise ValueError(f"threads must be >= 1, got {config.threads}")
        torch.set_num_threads(config.threads)
        if config.get("weights_only") is False:
            self.parser.error(
                "--weights_only false is not supported: it would let a checkpoint run any code it names "
                "(README.md, Security)"
            )
        self._check_ckpt_path(config.get("ckpt_path"))

    def _check_ckpt_path(self, ckpt_path) -> None:
        """Loads a `--ckpt_path` file once, safely, before any data is collected or model built.

        A refused, damaged or missing checkpoint then ends the command at once, in one line,
        instead of after `prepare_data` (which may collect a dataset for minutes).
        """
        if ckpt_path is None or "://" in str(ckpt_path) or str(ckpt_path).split(":")[0] in CKPT_KEYWORDS:
            return
        with exit_on_checkpoint_error(f"mrcom {self.config.subcommand}"):
            load_checkpoint(ckpt_path)

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

    def before_fit(self) -> None:
        self._fix_checkpoint_dirs()

    def before_validate(self) -> None:
        self._fix_checkpoint_dirs()

    def before_test(self) -> None:
        self._fix_checkpoint_dirs()

    def after_test(self) -> None:
        """Writes the test metrics to `<default_root_dir>/test_metrics.json` (what a study reads)."""
        if not self.trainer.is_global_zero:
            return
        path = Path(self.trainer.default_root_dir) / TEST_METRICS
        metrics = {name: float(value) for name, value in sorted(self.trainer.callback_metrics.items())}
        payload = json.dumps(metrics, indent=1).encode()
        atomic_write(path, lambda f: f.write(payload))
        print(f"test metrics: {path}")

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
    ckpt_path = None
    for i, arg in enumerate(argv):
        if arg == "--ckpt_path" and i + 1 < len(argv):
            ckpt_path = argv[i + 1]
        elif arg.startswith("--ckpt_path="):
            ckpt_path = arg.split("=", 1)[1]
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


def run(argv: list[str]) -> None:
    """Runs a LightningCLI subcommand (fit, validate, test, predict)."""
    from mrcom_lightning.datamodules import MultiScenarioDataModule

    # `args` carries the command line (plus a config from the checkpoint): not a mistake.
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    MrCoMCLI(
        MrCoM,
        MultiScenarioDataModule,
        args=config_from_checkpoint(argv),
        trainer_defaults=trainer_defaults(),
        save_config_callback=SaveConfig,
        save_config_kwargs={"overwrite": True},
        # Hyperparameters stay the objects `__init__` received (dataclass settings included).
        load_from_checkpoint_support=False,
        parser_kwargs={"description": "MrCoM: train and evaluate a unified world model across MuJoCo scenarios."},
    )

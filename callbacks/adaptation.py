"""Scenario adaptation during `fit` and `test`: the world model being trained, put to use."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from mrcom_lightning.adaptation import AdaptationConfig, resolve_targets
from mrcom_lightning.adaptation.parallel import AdaptationRun, adapt_all
from mrcom_lightning.threads import Threads, resolve_workers


class ScenarioAdaptation(L.Callback):
    """Adapts to target scenarios with the current world model (Algorithm 2) and logs the scores.

    During `fit`, every `every_n_validations` validations (with the infinite training stream an
    epoch is one validation interval), on rank 0 only, each target gets
    `adapt/<split>/<domain>-<index>/score` (and, with `baseline`, `.../sac_score`), with the run's
    summary: `.../real_steps`, `.../imagined_share` (mean share of imagined rows in SAC's batches)
    and `.../model_error_obs_h1` / `.../model_error_reward_h1_over_naive` (the model's one-step errors
    where the final policy goes, in units of the naive forecast's; `charts/model_error/...`), and
    `adapt/seconds`, the wall time of all its runs.
    During `test` the targets of the test splits are adapted to, with plain SAC beside them
    (`test_baseline`), and both scores are printed with the number of real steps.
    The runs (each target, with the model and, with a baseline, without) go side by side, one
    process per core (`workers`), under one progress bar (quiet with `trainer.enable_progress_bar
    false`). The adaptation runs on a copy of the model, so training never sees it. Under DDP the other
    ranks wait at their next collective meanwhile: keep one round of adaptation shorter than the
    process group's timeout (30 minutes by default).

    Args:
        targets: scenarios as `SPLIT/DOMAIN/INDEX` of the datamodule's meta-scenario set (`*` = every domain).
        test_targets: the scenarios adapted to at the end of `mrcom test`.
        every_n_validations: adapt after every n-th validation of `fit` (0: never during fit).
        adaptation: the adaptation loop's settings; the default is `mrcom adapt`'s (`AdaptationConfig()`).
        baseline: also run plain SAC with the same budget during `fit`, logged as `.../sac_score`.
        test_baseline: also run plain SAC during `test`.
        seed: seeds the target environments and the agents.
        workers: processes the runs (target × method) share, one torch thread each; `auto`: one
            per available core (1 inside a parallel launcher's worker). The scores do not depend on it.
    """

    def __init__(
        self,
        targets: list[str] = ["val/*/0"],
        test_targets: list[str] = ["test_id/*/0", "test_ood/*/0"],
        every_n_validations: int = 1,
        adaptation: AdaptationConfig = AdaptationConfig(),
        baseline: bool = False,
        test_baseline: bool = True,
        seed: int = 0,
        workers: Threads = "auto",
    ):
        if every_n_validations < 0:
            raise ValueError(f"every_n_validations must be >= 0, got {every_n_validations}")
        self.targets = list(targets)
        self.test_targets = list(test_targets)
        self.every_n_validations = every_n_validations
        self.adaptation = adaptation
        self.baseline = baseline
        self.test_baseline = test_baseline
        self.seed = seed
        self.workers = workers
        resolve_workers(workers, 1)  # a bad value fails at once, not after training
        self.validations = 0

    def _run(self, trainer: L.Trainer, pl_module, selectors: list[str], baseline: bool) -> dict[str, float]:
        # Validation and test hooks run under inference mode; SAC (and fine-tuning) need autograd,
        # and a copy taken inside inference mode would be made of inference tensors.
        with torch.inference_mode(False), torch.enable_grad():
            return self._adapt(trainer, pl_module, selectors, baseline)

    def _adapt(self, trainer: L.Trainer, pl_module, selectors: list[str], baseline: bool) -> dict[str, float]:
        targets = resolve_targets(trainer.datamodule.hparams.dataset.scenarios, selectors)
        runs = [AdaptationRun(name, spec, use_model, self.seed) for name, spec in targets.items()
                for use_model in ((True, False) if baseline else (True,))]  # fmt: skip
        workers = resolve_workers(self.workers, len(runs))
        start = time.perf_counter()
        # One copy of the model for every run (each adapts a copy of its own): training never sees it.
        results = adapt_all(runs, self.adaptation, pl_module.eager_copy(), workers=workers,
                            progress=getattr(trainer, "progress_bar_callback", None) is not None)  # fmt: skip
        seconds = time.perf_counter() - start
        metrics = {}
        for run, result in zip(runs, results):
            name = run.name
            if not run.use_model:
                metrics[f"adapt/{name}/sac_score"] = result.score
                continue
            metrics[f"adapt/{name}/score"] = result.score
            metrics[f"adapt/{name}/real_steps"] = float(result.eval_steps[-1])
            metrics[f"adapt/{name}/imagined_share"] = result.summary()["imagined_share"]
            for key in ("obs_h1", "reward_h1_over_naive"):  # the model where the final policy goes
                if points := result.metrics.get(f"charts/model_error/{key}"):
                    metrics[f"adapt/{name}/model_error_{key}"] = points[-1][1]
        for name, spec in targets.items():
            text = f"adaptation to {name} ({spec}) after {int(metrics[f'adapt/{name}/real_steps'])} real steps: "
            text += f"MrCoM {metrics[f'adapt/{name}/score']:.2f}"
            if f"adapt/{name}/sac_score" in metrics:
                text += f", SAC {metrics[f'adapt/{name}/sac_score']:.2f}"
            rank_zero_info(text)
        rank_zero_info(f"adapted {len(runs)} runs in {seconds:.1f} s on {workers} processes")
        for logger in trainer.loggers:
            logger.log_metrics(metrics | {"adapt/seconds": seconds}, step=trainer.global_step)
        return metrics

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or self.every_n_validations == 0:
            return
        self.validations += 1
        if self.validations % self.every_n_validations == 0 and trainer.is_global_zero:
            self._run(trainer, pl_module, self.targets, self.baseline)

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.is_global_zero and self.test_targets:
            metrics = self._run(trainer, pl_module, self.test_targets, self.test_baseline)
            print(f"{'target':<24} {'mrcom':>7} {'sac':>7} {'real_steps':>10}")
            for key in metrics:
                if key.endswith("/score"):
                    name = key[len("adapt/") : -len("/score")]
                    sac = metrics.get(f"adapt/{name}/sac_score", float("nan"))
                    print(f"{name:<24} {metrics[key]:7.2f} {sac:7.2f} {int(metrics[f'adapt/{name}/real_steps']):>10}")

    def state_dict(self) -> dict:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict) -> None:
        self.validations = state_dict["validations"]

"""Scenario adaptation during `fit` and `test`: the world model being trained, put to use."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from mrcom_lightning.adaptation import AdaptationConfig, adapt, resolve_targets


class ScenarioAdaptation(L.Callback):
    """Adapts to target scenarios with the current world model (Algorithm 2) and logs the scores.

    During `fit`, every `every_n_validations` validations (with the infinite training stream an
    epoch is one validation interval), on rank 0 only, each target gets
    `adapt/<split>/<domain>-<index>/score`; during `test`, the targets of the test splits do.
    The adaptation runs on a copy of the model, so training never sees it. Under DDP the other
    ranks wait at their next collective meanwhile: keep one round of adaptation shorter than the
    process group's timeout (30 minutes by default).

    Args:
        targets: scenarios as `SPLIT/DOMAIN/INDEX` of the datamodule's meta-scenario set (`*` = every domain).
        test_targets: the scenarios adapted to at the end of `mrcom test`.
        every_n_validations: adapt after every n-th validation of `fit` (0: never during fit).
        adaptation: the adaptation loop's settings.
        baseline: also run plain SAC with the same budget, logged as `.../sac_score`.
        seed: seeds the target environments and the agents.
    """

    def __init__(
        self,
        targets: list[str] = ["val/*/0"],
        test_targets: list[str] = ["test_id/*/0", "test_ood/*/0"],
        every_n_validations: int = 1,
        adaptation: AdaptationConfig = AdaptationConfig(env_steps=2000, episode_steps=250, warmup_steps=500, updates_per_step=1),
        baseline: bool = False,
        seed: int = 0,
    ):
        if every_n_validations < 0:
            raise ValueError(f"every_n_validations must be >= 0, got {every_n_validations}")
        self.targets = list(targets)
        self.test_targets = list(test_targets)
        self.every_n_validations = every_n_validations
        self.adaptation = adaptation
        self.baseline = baseline
        self.seed = seed
        self.validations = 0

    def _run(self, trainer: L.Trainer, pl_module, selectors: list[str]) -> dict[str, float]:
        # Validation and test hooks run under inference mode; SAC (and fine-tuning) need autograd,
        # and a copy taken inside inference mode would be made of inference tensors.
        with torch.inference_mode(False), torch.enable_grad():
            return self._adapt(trainer, pl_module, selectors)

    def _adapt(self, trainer: L.Trainer, pl_module, selectors: list[str]) -> dict[str, float]:
        scenarios = trainer.datamodule.hparams.dataset.scenarios
        metrics = {}
        for name, spec in resolve_targets(scenarios, selectors).items():
            # A copy per target: with `fine_tune` the adaptation trains the model it is given.
            model = pl_module.eager_copy()
            result = adapt(spec, self.adaptation, model, use_model=True, seed=self.seed, progress=False)
            metrics[f"adapt/{name}/score"] = result.score
            if self.baseline:
                sac = adapt(spec, self.adaptation, None, use_model=False, seed=self.seed, progress=False)
                metrics[f"adapt/{name}/sac_score"] = sac.score
            rank_zero_info(f"adaptation to {name} ({spec}): score {result.score:.1f}")
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        return metrics

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or self.every_n_validations == 0:
            return
        self.validations += 1
        if self.validations % self.every_n_validations == 0 and trainer.is_global_zero:
            self._run(trainer, pl_module, self.targets)

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.is_global_zero and self.test_targets:
            for name, value in self._run(trainer, pl_module, self.test_targets).items():
                print(f"{name}: {value:.2f}")

    def state_dict(self) -> dict:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict) -> None:
        self.validations = state_dict["validations"]

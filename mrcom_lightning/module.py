"""The LightningModule: wires the world model, its losses (Eq. 16) and its metrics."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch

from mrcom_lightning.batch import Batch
from mrcom_lightning.distributed import exit_cleanly
from mrcom_lightning.metrics import PredictionMetrics, masked_mean
from mrcom_lightning.models import (
    PredictionLoss,
    MetaStateLoss,
    MetaValueLoss,
    Predictions,
    ValueLoss,
    WorldModel,
    WorldModelConfig,
    WorldModelLoss,
    gradient_norms,
)
from mrcom_lightning.models.mamba import loss_window_length, loss_window_weights
from mrcom_lightning.reports import plot_imagination, write_horizon_table
from mrcom_lightning.scenarios import TEST_SPLITS



class MrCoM(L.LightningModule):
    """MrCoM: L = w_wm·L_wm + w_ms·L_ms + w_mv·L_mv (Eq. 16), plus the value losses (Eq. 13–14).

    The baselines are this module with other switches (configs/baselines/, docs/baselines.md):
    CaDM adds its prediction loss L_pred (`models.cadm.PredictionLoss`, weight 1, as CaDM trains
    its context by it alone) and MAMBA takes L_wm over a growing window (`loss_window_*`).

    Args:
        world_model: sizes and switches of the world model (ablations and baselines included).
        domain_dims: domain -> (observation dim, action dim), in domain-id order; linked from the
            datamodule.
        num_scenarios: number of training scenarios (one value head each); linked from the datamodule.
        w_wm: weight of the world-model loss L_wm (Eq. 10).
        w_ms: weight of the meta-state regularisation L_ms (Eq. 11–12); 0 removes it and its prior.
        w_mv: weight of the meta-value regularisation L_mv (Eq. 15, values in units of return);
            0 removes it and the value heads.
        lr: AdamW learning rate (paper: 1e-4).
        weight_decay: AdamW weight decay (the paper's "learning rate decay weight", 1e-4).
        kl_dynamics: scale of KL(sg q‖p) (DreamerV3).
        kl_representation: scale of KL(q‖sg p) (DreamerV3).
        free_nats: KL clipped below at this many nats (DreamerV3's free bits).
        reward_weight: scale of the reward term −log p(r | s) inside L_wm (1 is Eq. 10 as written).
        value_tau: Polyak rate of the scenario values' target network.
        open_loop_horizon: H of the open-loop prediction metric.
        compile: `torch.compile` the world model (GPU option).
        grad_norm_every: every this many training steps, log the norm of each weighted term's
            gradient (w_wm·L_wm, w_ms·L_ms, w_mv·L_mv) on the shared world-model parameters
            (tokenizers, context, latent cell) as `charts/grad_norm/{wm,ms,mv}`: one extra backward
            per term, so 100 costs about 2 % of the steps' time; 0 turns it off.
        loss_window_start: MAMBA's local reconstruction (Rimon et al. 2024): in training, L_wm reads
            only a window of this many consecutive latent states per sequence, placed uniformly (the
            posterior still runs over the whole sequence); MAMBA: 50. 0 turns it off (L_wm over the
            whole sequence, as in validation, test and adaptation's fine-tuning).
        loss_window_growth: latent states the window grows by per training step (MAMBA grows it
            linearly with environment frames; offline, frames are training steps).
        loss_window_limit: the window's largest length; null: the whole sequence (MAMBA's).
    """

    def __init__(
        self,
        world_model: WorldModelConfig = WorldModelConfig(),
        domain_dims: dict[str, tuple[int, int]] | None = None,
        num_scenarios: int = 1,
        w_wm: float = 1.0,
        w_ms: float = 0.1,
        w_mv: float = 1.0,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        kl_dynamics: float = 0.5,
        kl_representation: float = 0.1,
        free_nats: float = 1.0,
        reward_weight: float = 1.0,
        value_tau: float = 0.005,
        open_loop_horizon: int = 15,
        compile: bool = False,
        grad_norm_every: int = 100,
        loss_window_start: int = 0,
        loss_window_growth: float = 0.0,
        loss_window_limit: int | None = None,
    ):
        super().__init__()
        if not domain_dims:
            raise ValueError("model.domain_dims is empty: it is linked from the datamodule (data.domain_dims)")
        for name, value in (("w_wm", w_wm), ("w_ms", w_ms), ("w_mv", w_mv), ("weight_decay", weight_decay),
                            ("reward_weight", reward_weight)):
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value!r}")
        if lr <= 0:
            raise ValueError(f"model.lr must be > 0, got {lr!r}")
        if grad_norm_every < 0:
            raise ValueError(f"model.grad_norm_every must be >= 0, got {grad_norm_every!r}")
        if loss_window_start < 0 or loss_window_growth < 0:
            raise ValueError(
                f"model.loss_window_start and model.loss_window_growth must be >= 0, got {loss_window_start!r}, "
                f"{loss_window_growth!r}"
            )
        if loss_window_limit is not None and loss_window_limit < 1:
            raise ValueError(f"model.loss_window_limit must be null or >= 1, got {loss_window_limit!r}")
        if open_loop_horizon <= 0:
            raise ValueError(f"model.open_loop_horizon must be > 0, got {open_loop_horizon!r}")
        self.save_hyperparameters()
        self.domains = list(domain_dims)
        self.obs_dims = [int(domain_dims[d][0]) for d in self.domains]
        self.act_dims = [int(domain_dims[d][1]) for d in self.domains]
        self.world_model = WorldModel(
            world_model, self.obs_dims, self.act_dims, num_scenarios, meta_state=w_ms > 0, meta_value=w_mv > 0
        )
        self.wm_loss = WorldModelLoss(
            self.world_model.head_twohot.nll,
            kl_dynamics=kl_dynamics,
            kl_representation=kl_representation,
            free_nats=free_nats,
            reward_weight=reward_weight,
        )
        self.ms_loss = MetaStateLoss(free_nats=free_nats) if w_ms > 0 else None
        self.value_loss = ValueLoss(world_model.discount) if w_mv > 0 else None
        self.mv_loss = MetaValueLoss(world_model.discount) if w_mv > 0 else None
        self.prediction_loss = (
            PredictionLoss(backward_weight=world_model.backward_weight) if world_model.context == "transitions" else None
        )
        self.metrics = torch.nn.ModuleDict(
            {split: PredictionMetrics(self.domains, open_loop_horizon, self.obs_dims) for split in ("val",) + TEST_SPLITS}
        )
        self._figure_samples: dict[str, dict[str, np.ndarray]] = {}

    def setup(self, stage: str) -> None:
        exit_cleanly()  # a CPU (gloo) DDP run ends without an abort in gloo's threads

    def on_fit_start(self) -> None:
        wm = self.world_model
        if wm.config.obs_normalization == "standardize" and not bool(wm.obs_statistics_set):
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "observation_statistics"):
                raise ValueError(
                    "model.world_model.obs_normalization=standardize needs the training data's statistics: "
                    "fit with MultiScenarioDataModule, or choose symlog"
                )
            mean, std = datamodule.observation_statistics()
            wm.set_observation_statistics(mean, std)

    def eager_copy(self, device: str | torch.device = "cpu") -> "MrCoM":
        """An uncompiled copy of this model's weights on `device` (for adaptation beside training)."""
        copy = type(self)(**{**self.hparams, "compile": False})
        copy.load_state_dict(self.state_dict())
        return copy.train(self.training).to(device)

    def configure_model(self) -> None:
        if self.hparams.compile:
            self.world_model.compile()

    def loss_window(self, step: int, batch: int, positions: int, device=None) -> torch.Tensor | None:
        """MAMBA's local-reconstruction weights [B, N+1] at training step `step`; None when off."""
        hp = self.hparams
        if not hp.loss_window_start:
            return None
        length = loss_window_length(step, positions, hp.loss_window_start, hp.loss_window_growth, hp.loss_window_limit)
        return loss_window_weights(batch, positions, length, device)

    def losses(self, batch: Batch, window_step: int | None = None) -> tuple[dict[str, torch.Tensor], Predictions]:
        """The named loss terms and their total (Eq. 16), and the predictions they came from.
        `window_step` is the training step of MAMBA's loss window (None: the whole sequence)."""
        hp = self.hparams
        predictions = self.world_model.predict(batch)
        zero = predictions.reward.new_zeros(())
        weights = None
        if window_step is not None:
            weights = self.loss_window(window_step, *predictions.latents.stochastic.shape[:2], device=zero.device)
        terms = self.wm_loss(predictions, batch, weights)
        if self.prediction_loss is not None:
            terms |= self.prediction_loss(predictions.dynamics, zero)
        if self.ms_loss is not None:
            terms |= self.ms_loss(predictions)
        if self.mv_loss is not None:
            terms |= self.mv_loss(predictions) | self.value_loss(predictions, batch)
        # The heads that only fit their targets (r, V_k, V_meta) read detached inputs: their terms
        # train those heads alone and need no weight.
        heads = sum((terms[k] for k in ("ms_prior", "scenario_value", "meta_value") if k in terms), zero)
        terms["total"] = (
            hp.w_wm * terms["wm"] + hp.w_ms * terms.get("ms", zero) + hp.w_mv * terms.get("mv", zero)
            + terms.get("prediction", zero) + heads
        )
        return terms, predictions

    def weighted_terms(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The world-model terms of Eq. 16 with their weights: w_wm·L_wm, w_ms·L_ms, w_mv·L_mv (and
        CaDM's L_pred, weight 1)."""
        hp = self.hparams
        weights = {"wm": hp.w_wm, "ms": hp.w_ms, "mv": hp.w_mv, "prediction": 1.0}
        return {name: weights[name] * terms[name] for name in weights if name in terms}

    def _log_gradient_shares(self, terms: dict[str, torch.Tensor]) -> None:
        norms = gradient_norms(self.weighted_terms(terms), self.world_model.shared_parameters())
        metrics = {f"charts/grad_norm/{name}": float(norm) for name, norm in norms.items()}
        # Straight to the loggers: `self.log` would keep them only on steps that are multiples of
        # both this interval and trainer.log_every_n_steps.
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    def training_step(self, batch, batch_idx):
        terms, predictions = self.losses(batch, window_step=self.global_step)
        for name, value in terms.items():
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"train/loss/{name} is {value.item()} at step {self.global_step}: stopping before this "
                    "state is checkpointed (try a lower model.lr or trainer.gradient_clip_val)"
                )
        self.log_dict({f"train/loss/{k}": v.detach() for k, v in terms.items()}, prog_bar=False)
        outside = self.world_model.reward_mass_outside(predictions.reward_logits.detach(), predictions.prev_reward).mean()
        self.log("train/reward_mass_outside", outside)
        every = self.hparams.grad_norm_every
        if every and self.global_step % every == 0 and self._trainer is not None and self.trainer.loggers:
            self._log_gradient_shares(terms)
        self.log("train/loss", terms["total"].detach(), prog_bar=True, logger=False)  # logged as train/loss/total
        return terms["total"]

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad.detach() for p in self.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None
        if norm is not None:
            if not torch.isfinite(norm):
                raise FloatingPointError(
                    f"train/grad_norm is {norm.item()} at step {self.global_step}: stopping before the weights "
                    "are updated and checkpointed (try a lower model.lr or trainer.gradient_clip_val)"
                )
            self.log("train/grad_norm", norm)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.world_model.scenario_values is not None:
            self.world_model.scenario_values.update_target(self.hparams.value_tau)

    def _evaluate(self, batch: Batch, split: str) -> torch.Tensor:
        terms, predictions = self.losses(batch)
        wm, domain, metrics = self.world_model, batch["domain"], self.metrics[split]
        mask = predictions.obs_mask
        obs = wm.denormalize_obs(predictions.obs, domain)
        metrics.update("obs_mse", masked_mean((obs - batch["obs"]) ** 2, mask).mean(1), domain)
        metrics.update("reward_mse", ((predictions.reward - batch["reward"]) ** 2).mean(1), domain)
        outside = wm.reward_mass_outside(predictions.reward_logits, predictions.prev_reward)
        metrics.update("reward_mass_outside", outside.mean(1), domain)
        horizon = self.hparams.open_loop_horizon
        burn_in = batch["action"].shape[1] - horizon
        if burn_in >= 0:
            # Imagination from the same pass's latents at the burn-in step, the real actions given.
            state = wm.start(predictions, batch, burn_in)
            rollout = wm.rollout(state, batch["action"][:, burn_in:], horizon, domain)
            real_obs, real_reward = batch["obs"][:, burn_in + 1 :], batch["reward"][:, burn_in:]
            metrics.update("open_loop_reward_mse", (rollout.reward - real_reward) ** 2, domain)
            model_error = (rollout.next_obs - real_obs) ** 2
            naive_error = (batch["obs"][:, burn_in : burn_in + 1] - real_obs) ** 2
            metrics.update("open_loop_mse", masked_mean(model_error, mask), domain)
            metrics.update("naive_open_loop_mse", masked_mean(naive_error, mask), domain)
            metrics.update_per_dim(model_error, naive_error, domain)
            metrics.update("naive_open_loop_reward_mse", (state.prev_reward[:, None] - real_reward) ** 2, domain)
            self._keep_figure_samples(batch, rollout, burn_in)
        return terms["total"]

    def _keep_figure_samples(self, batch: Batch, rollout, burn_in: int) -> None:
        """The first window of each domain in this evaluation, for the imagination figure."""
        for k, name in enumerate(self.domains):
            rows = (batch["domain"] == k).nonzero(as_tuple=True)[0]
            if name in self._figure_samples or not len(rows):
                continue
            row, dim = int(rows[0]), self.obs_dims[k]
            self._figure_samples[name] = {
                "obs": batch["obs"][row, burn_in:, :dim].float().cpu().numpy(),
                "predicted_obs": rollout.next_obs[row, :, :dim].float().cpu().numpy(),
                "reward": batch["reward"][row, burn_in:].float().cpu().numpy(),
                "predicted_reward": rollout.reward[row].float().cpu().numpy(),
            }

    def _report(self, split: str) -> dict[str, torch.Tensor]:
        """Computes the split's metrics; rank 0 writes the per-step table and the imagination figure
        beside the checkpoints and logs them as MLflow artifacts."""
        scalars, curves = self.metrics[split].compute(split)
        samples, self._figure_samples = self._figure_samples, {}
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero or trainer.sanity_checking or not curves:
            return scalars
        folder = Path(trainer.default_root_dir) / "imagination"
        name = f"{split}-step{self.global_step:07d}"
        files = [write_horizon_table(curves, folder / f"{name}.csv")]
        if samples:
            title = f"{split}, step {self.global_step}: imagined (context rolling) vs real"
            files.append(plot_imagination(samples, folder / f"{name}.png", title))
        for logger in trainer.loggers:
            if hasattr(logger, "run_id") and hasattr(logger.experiment, "log_artifact"):
                for path in files:
                    logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="imagination")
        return scalars

    def validation_step(self, batch, batch_idx):
        loss = self._evaluate(batch, "val")
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["obs"].shape[0])

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self._report("val"))

    def _log_metrics(self, metrics: dict[str, torch.Tensor], **kwargs) -> None:
        # torchmetrics' `compute` has already synchronised these, so every rank holds the same
        # value; Lightning's mean over ranks leaves it unchanged (and asks for no warning filter).
        self.log_dict(metrics, sync_dist=True, **kwargs)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        split = getattr(self.trainer.datamodule, "test_splits", TEST_SPLITS)[dataloader_idx]
        loss = self._evaluate(batch, split)
        self.log(f"{split}/loss", loss, sync_dist=True, add_dataloader_idx=False, batch_size=batch["obs"].shape[0])
        batches = self.trainer.num_test_batches
        if dataloader_idx < len(batches) and batch_idx == batches[dataloader_idx] - 1:
            # Logged at the split's last batch (every rank has as many), so each split's metrics
            # are reported under its own dataloader; the metrics are already synchronised.
            self._log_metrics(self._report(split), add_dataloader_idx=False, batch_size=1)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

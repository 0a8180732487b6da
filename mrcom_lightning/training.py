"""Training a world model outside Lightning: the one harness that adaptation's fine-tuning and the
benchmarks use, taking each step as `mrcom fit` does (Eq. 16's loss, AdamW, gradient clipping, the
value targets' update)."""

from __future__ import annotations

from typing import Iterable

import torch

GRADIENT_CLIP = 100.0  # configs/quick.yaml's and configs/multi.yaml's trainer.gradient_clip_val


def train_steps(module, batches: Iterable, optimizer: torch.optim.Optimizer, clip: float = GRADIENT_CLIP) -> list[dict[str, float]]:
    """One optimiser step of `module.losses` (an `MrCoM`) per batch of `batches`; the loss terms of each
    step. The module is left in eval mode."""
    module.train()
    history = []
    for step, batch in enumerate(batches):
        terms, _ = module.losses(batch)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        optimizer.step()
        module.on_train_batch_end(None, batch, step)
        history.append({name: value.item() for name, value in terms.items()})
    module.eval()
    return history


def fit_observation_statistics(module, datamodule) -> None:
    """With `obs_normalization: standardize`, the per-domain, per-dim mean and std of the datamodule's
    training episodes, as `mrcom fit` sets them at its start (a no-op for symlog)."""
    if module.world_model.config.obs_normalization == "standardize":
        datamodule.setup("fit")
        module.world_model.set_observation_statistics(*datamodule.observation_statistics())


def save_checkpoint(module, datamodule, path) -> None:
    """A model trained outside Lightning as a checkpoint that `mrcom test`, `mrcom adapt` and
    `MrCoM.load_from_checkpoint` read like one `mrcom fit` wrote: weights, the model's and the
    datamodule's settings (which carry the meta-scenario set that `--target` names). Written
    atomically."""
    import os
    import tempfile
    from pathlib import Path

    import lightning

    path = Path(path)
    checkpoint = {
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "datamodule_hyper_parameters": dict(datamodule.hparams),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)

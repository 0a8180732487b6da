"""The GPU path through Lightning: MrCoM at the paper's sizes, fp32 / bf16-mixed, eager / compiled.

For each variant, `Trainer(accelerator=<device>, precision=...)` fits `MrCoM(compile=...)` for
`--steps` steps on one fixed synthetic batch (the datamodule's format, as in `train_speed.py`),
then validates on it, so the precision plugin, `configure_model`'s `torch.compile`, the
optimiser and the torchmetrics all run on the device. Each line reports the training loss at the
first and last step (it must fall on a fixed batch), the median milliseconds per step after the
first `--warmup` steps (compilation included in those), and the validation metrics. The last
line, `bf16_over_fp32_step_time=<value>`, is the bf16-mixed step time over the fp32 one, eager.

    python benchmarks/gpu_check.py --steps 60            # on a machine with a GPU
    python benchmarks/gpu_check.py --device cpu --steps 3 --variants 32   # the same path on a CPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mrcom_lightning.models.synthetic import (
    PAPER_BATCH as BATCH,
    PAPER_DOMAIN_DIMS as DOMAIN_DIMS,
    PAPER_NUM_SCENARIOS as NUM_SCENARIOS,
    PAPER_PROMPT as PROMPT,
    PAPER_STEPS as STEPS,
)
from mrcom_lightning.models.synthetic import synthetic_batch
from mrcom_lightning.module import MrCoM

VARIANTS = {"32": ("32-true", False), "bf16": ("bf16-mixed", False), "bf16+compile": ("bf16-mixed", True)}


class FixedBatch(Dataset):
    """The same batch, `length` times (already batched: the loader's batch_size is None)."""

    def __init__(self, batch: dict[str, torch.Tensor], length: int):
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batch


class StepTimer(L.Callback):
    """Wall time of every training step, the device synchronised at both ends."""

    def __init__(self):
        self.seconds: list[float] = []
        self.losses: list[float] = []

    def _sync(self, trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(trainer)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(trainer)
        self.seconds.append(time.perf_counter() - self.start)
        self.losses.append(float(outputs["loss"]))


def run(variant: str, device: str, steps: int, warmup: int) -> float:
    precision, compile = VARIANTS[variant]
    L.seed_everything(0, verbose=False)
    batch = synthetic_batch(DOMAIN_DIMS, BATCH, STEPS, PROMPT, NUM_SCENARIOS)
    model = MrCoM(domain_dims=DOMAIN_DIMS, num_scenarios=NUM_SCENARIOS, compile=compile)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=device, devices=1, precision=precision, max_steps=steps, limit_val_batches=1,
        val_check_interval=steps, check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    loader = lambda n: DataLoader(FixedBatch(batch, n), batch_size=None)  # noqa: E731
    trainer.fit(model, train_dataloaders=loader(steps), val_dataloaders=loader(1))
    timed = timer.seconds[warmup:] or timer.seconds
    ms = 1000 * statistics.median(timed)
    val = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    first, last = timer.losses[0], timer.losses[-1]
    print(
        f"{variant:13s} loss {first:9.3f} -> {last:9.3f} ({'falls' if last < first else 'DOES NOT FALL'}); "
        f"{ms:7.1f} ms/step (median of {len(timed)}; first step {1000 * timer.seconds[0]:.0f} ms); "
        f"val/loss {val.get('val/loss')}",
        flush=True,
    )
    if not all(map(torch.isfinite, map(torch.tensor, timer.losses))):
        raise SystemExit(f"{variant}: non-finite loss")
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--steps", type=int, default=60, help="training steps per variant")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing (compilation)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_float32_matmul_precision("high")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__}, lightning {L.__version__}, {name}", flush=True)
    ms = {variant: run(variant, args.device, args.steps, min(args.warmup, args.steps - 1)) for variant in args.variants}
    if "32" in ms and "bf16" in ms:
        print(f"bf16_over_fp32_step_time={ms['bf16'] / ms['32']:.3f}")


if __name__ == "__main__":
    main()

"""Training steps/s of MrCoM and of the RSSM baseline at the paper's sizes, and the thread setting.

Both models are built as `mrcom fit` builds them, at the paper's sizes (Appendix D:
`WorldModelConfig()`, batch 32 x 64 steps, prompt 20) over hopper, walker and cheetah with their
real observation and action sizes and 24 training scenarios:

* MrCoM: `MrCoM(domain_dims=..., num_scenarios=24)` (context, u, L_ms and L_mv: Eq. 16);
* RSSM: no context, no u, w_ms = w_mv = 0 (configs/baselines/rssm.yaml).

A step is the training step without Lightning around it: `terms, _ = model.losses(batch)`,
`terms["total"].backward()`, an AdamW step. The batch is synthetic, in the datamodule's format
(domain-balanced rows, zero-padded observations and actions with masks, a prompt per row).
The models are measured in interleaved rounds (their order alternating), warm-up steps
excluded, and each side reports its median over rounds, so machine noise hits all alike. On a
CPU, MrCoM is also timed at 1 and 2 torch threads: the ratio is why `mrcom` defaults to
`--threads 1`. With `--compile`, both models are also built compiled (`model.compile=true`) and
timed in the same rounds as the eager ones; the warm-up, which compiles, is reported apart.

    python benchmarks/train_speed.py --rounds 5 --steps 5
    python benchmarks/train_speed.py --compile --rounds 5 --steps 5
    python benchmarks/train_speed.py --device cuda --precision bf16-mixed --compile --steps 50

The last line, `mrcom_over_rssm_step_time=<value>`, is MrCoM's seconds per step divided by the
RSSM's (both compiled with `--compile`): the price of the context transformer, u and the
regularisers. benchmarks/profile_step.py shows where it goes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

from mrcom_lightning.models import WorldModelConfig
from mrcom_lightning.models.synthetic import (
    PAPER_BATCH as BATCH,
    PAPER_DOMAIN_DIMS as DOMAIN_DIMS,
    PAPER_NUM_SCENARIOS as NUM_SCENARIOS,
    PAPER_PROMPT as PROMPT,
    PAPER_STEPS as STEPS,
)
from mrcom_lightning.models.synthetic import synthetic_batch as make_batch
from mrcom_lightning.module import MrCoM

PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def synthetic_batch(device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch in `mrcom_lightning.datamodules.multi_scenario`'s format at the paper's sizes."""
    batch = make_batch(DOMAIN_DIMS, BATCH, STEPS, PROMPT, NUM_SCENARIOS, seed)
    return {key: value.to(device) for key, value in batch.items()}


def build(name: str, device: torch.device, compile: bool) -> MrCoM:
    if name == "MrCoM":
        model = MrCoM(domain_dims=DOMAIN_DIMS, num_scenarios=NUM_SCENARIOS)
    else:
        rssm = WorldModelConfig(context="none", auxiliary_dim=0)
        model = MrCoM(world_model=rssm, domain_dims=DOMAIN_DIMS, num_scenarios=NUM_SCENARIOS, w_ms=0.0, w_mv=0.0)
    if compile:
        model.world_model.compile()
    return model.to(device).train()


class Stepper:
    """One model's training step: Eq. 16's losses, backward, AdamW (+ a grad scaler for fp16)."""

    def __init__(self, model: MrCoM, batch: dict, device: torch.device, precision: str):
        self.model, self.batch, self.device = model, batch, device
        self.optimizer = model.configure_optimizers()
        self.dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)

    def step(self) -> None:
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            terms, _ = self.model.losses(self.batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def seconds_per_step(self, steps: int, threads: int) -> float:
        torch.set_num_threads(threads)
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        return (time.perf_counter() - start) / steps

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the MrCoM-vs-RSSM comparison")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per round and model")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each side reports its median")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model and thread setting first")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="32", help="autocast dtype (GPU option)")
    parser.add_argument("--compile", action="store_true", help="also time both models torch.compile'd")
    args = parser.parse_args()
    for name in ("threads", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    device = torch.device(args.device)

    torch.manual_seed(0)
    batch = synthetic_batch(device)
    variants = (False, True) if args.compile else (False,)
    steppers = {
        (name, compiled): Stepper(build(name, device, compiled), batch, device, args.precision)
        for compiled in variants
        for name in ("MrCoM", "RSSM")
    }
    # (model, torch threads, compiled): the comparison at --threads, and MrCoM at 1 and 2 threads on a CPU.
    settings = [(name, args.threads, compiled) for compiled in variants for name in ("MrCoM", "RSSM")]
    if device.type == "cpu":
        settings += [("MrCoM", n, False) for n in (1, 2) if n != args.threads]
    warmup_seconds = {}
    for name, threads, compiled in settings:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        for _ in range(args.warmup):
            steppers[(name, compiled)].step()
        steppers[(name, compiled)].sync()
        warmup_seconds[(name, threads, compiled)] = time.perf_counter() - start

    times: dict[tuple[str, int, bool], list[float]] = {setting: [] for setting in settings}
    for round_ in range(args.rounds):
        order = settings if round_ % 2 == 0 else settings[::-1]
        for name, threads, compiled in order:
            times[(name, threads, compiled)].append(steppers[(name, compiled)].seconds_per_step(args.steps, threads))
    median = {setting: statistics.median(values) for setting, values in times.items()}

    print(
        f"torch {torch.__version__}, device {device}, precision {args.precision}, "
        f"{os.cpu_count()} CPUs; batch {BATCH} x {STEPS}, prompt {PROMPT}, {len(DOMAIN_DIMS)} domains, "
        f"{NUM_SCENARIOS} scenarios; median of {args.rounds} interleaved rounds x {args.steps} steps"
    )
    for (name, threads, compiled), seconds in median.items():
        warmup = f"; warm-up (compiles) {warmup_seconds[(name, threads, compiled)]:.0f} s" if compiled else ""
        label = "compiled" if compiled else "eager"
        speed = f"{1 / seconds:7.2f} steps/s ({seconds * 1000:8.1f} ms/step{warmup})"
        print(f"{name:5s} threads={threads} {label:8s}: {speed}")
    if device.type == "cpu":
        ratio = median[("MrCoM", 2, False)] / median[("MrCoM", 1, False)]
        print(f"mrcom_2_threads_over_1_thread_step_time={ratio:.3f}")
    if args.compile:
        for name in ("MrCoM", "RSSM"):
            ratio = median[(name, args.threads, True)] / median[(name, args.threads, False)]
            print(f"{name.lower()}_compiled_over_eager_step_time={ratio:.3f}")
    ratio = median[("MrCoM", args.threads, args.compile)] / median[("RSSM", args.threads, args.compile)]
    print(f"mrcom_over_rssm_step_time={ratio:.3f}")


if __name__ == "__main__":
    main()

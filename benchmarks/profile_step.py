"""Where a training step's time goes: `torch.profiler` tables of MrCoM's and the RSSM's step.

The models, batch and step are `train_speed.py`'s (paper sizes, batch 32 x 64, one CPU thread
by default). Each model runs `--warmup` untimed steps, then `--steps` profiled ones. Two tables:

* per model, the top operators by self CPU time (forward, backward and optimizer ops);
* both models side by side, the step split into the world model's parts: each part's forward
  ops and the backward of those ops (matched by autograd sequence number), in ms and in matmul
  GFLOP. `cell._unroll` is what the time loop runs outside the modules it calls as such (it
  calls the GRU, `cell.gru`, and runs the transition's and q's layers from their weights),
  `cell.observe` the glue after the loop, and `losses, glue` whatever runs outside the parts
  (losses, concatenations, gradient accumulation). The profiler adds its own overhead to each op.

    python benchmarks/profile_step.py --steps 3
    python benchmarks/profile_step.py --models MrCoM --rows 25

The last line, `mrcom_over_rssm_matmul_flops=<value>`, is MrCoM's matmul FLOPs per step over the
RSSM's: the step time ratio that a compute-bound step cannot beat.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from train_speed import Stepper, build, synthetic_batch

BACKWARD = "autograd::engine::evaluate_function: "
OTHER, OPTIMIZER = "losses, glue", "optimizer"


def label_parts(world_model: torch.nn.Module) -> None:
    """Profiler ranges `part::<name>` around the forward of the world model's modules and the
    latent cell's `observe` and `_unroll` methods. The latent cell, the context transformer and
    the scenario values run their children from methods other than forward: those children are
    parts of their own."""
    modules = [(name, m) for name, m in world_model.named_children() if name != "cell"]
    for parent in ("cell", "context_net", "scenario_values"):
        if getattr(world_model, parent) is not None:
            modules += [(f"{parent}.{name}", m) for name, m in getattr(world_model, parent).named_children()]
    for name, module in modules:
        ranges: list = []

        def enter(module, args, name=name, ranges=ranges):
            ranges.append(record_function(f"part::{name}"))
            ranges[-1].__enter__()

        def leave(module, args, output, ranges=ranges):
            ranges.pop().__exit__(None, None, None)

        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)
    cell = world_model.cell
    for method in ("observe", "_unroll"):
        original = getattr(cell, method)

        def wrapped(*args, original=original, method=method):
            with record_function(f"part::cell.{method}"):
                return original(*args)

        setattr(cell, method, wrapped)


def parts(events) -> dict[str, list[float]]:
    """[ms, GFLOP] per part, summed over `events`: forward ops by their innermost part range,
    backward ops by the part of the forward op that made their autograd node."""
    forward_part: dict[int, str] = {}
    memo: dict[int, tuple[str, str]] = {}

    def classify(event) -> tuple[str, str]:  # ("part" | "backward" | "optimizer" | "", value)
        if event.id in memo:
            return memo[event.id]
        if event.name.startswith(BACKWARD):
            kind = ("backward", str(event.sequence_nr))
        elif event.name.startswith("part::"):
            kind = ("part", event.name[len("part::") :])
        elif event.name.startswith("Optimizer.step"):
            kind = ("optimizer", OPTIMIZER)
        else:
            kind = classify(event.cpu_parent) if event.cpu_parent is not None else ("", OTHER)
        memo[event.id] = kind
        return kind

    for event in events:
        kind, value = classify(event)
        if kind == "part" and event.sequence_nr >= 0:
            forward_part.setdefault(event.sequence_nr, value)
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for event in events:
        kind, value = classify(event)
        part = forward_part.get(int(value), OTHER) if kind == "backward" else value
        totals[part][0] += event.self_cpu_time_total / 1e3
        totals[part][1] += (event.flops or 0) / 1e9
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=("MrCoM", "RSSM"), default=["MrCoM", "RSSM"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--steps", type=int, default=3, help="profiled training steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rows", type=int, default=15, help="rows of the operator tables")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    batch = synthetic_batch(device)
    split: dict[str, dict[str, list[float]]] = {}
    for name in args.models:
        model = build(name, device, compile=False)
        label_parts(model.world_model)
        stepper = Stepper(model, batch, device, "32")
        for _ in range(args.warmup):
            stepper.step()
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            for _ in range(args.steps):
                stepper.step()
        split[name] = {part: [v / args.steps for v in values] for part, values in parts(prof.events()).items()}
        step_ms = sum(ms for ms, _ in split[name].values())
        ops = [e for e in prof.key_averages() if not e.key.startswith(("part::", "Optimizer", BACKWARD))]
        print(f"\n### {name}: top operators by self CPU time ({step_ms:.1f} ms per profiled step)")
        print(f"{'operator':45s} {'self ms':>9s} {'share':>6s} {'calls':>7s}")
        for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
            ms = e.self_cpu_time_total / 1e3 / args.steps
            print(f"{e.key[:45]:45s} {ms:9.1f} {ms / step_ms:6.1%} {e.count // args.steps:7d}")

    names = list(split)
    print("\n### The step by part: forward + its backward, ms and matmul GFLOP per step")
    print(f"{'part':30s}" + "".join(f" {n + ' ms':>10s} {n + ' GFLOP':>12s}" for n in names))
    order = sorted(set().union(*split.values()), key=lambda p: -split[names[0]].get(p, [0.0])[0])
    for part in order + ["total"]:
        row = f"{part:30s}"
        for n in names:
            if part == "total":
                ms, gflop = (sum(values[i] for values in split[n].values()) for i in (0, 1))
            else:
                ms, gflop = split[n].get(part, [0.0, 0.0])
            row += f" {ms:10.1f} {gflop:12.2f}"
        print(row)
    if set(names) == {"MrCoM", "RSSM"}:
        flops = {n: sum(gflop for _, gflop in split[n].values()) for n in names}
        print(f"mrcom_over_rssm_matmul_flops={flops['MrCoM'] / flops['RSSM']:.3f}")


if __name__ == "__main__":
    main()

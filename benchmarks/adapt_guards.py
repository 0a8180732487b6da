"""Which guard against late collapse keeps MrCoM's early gain? (issue 34, item 3; tuning targets only)

Runs benchmarks/adapt_efficiency.py on its tuning targets (each domain's first in-distribution
test scenario, seeds 0–2, world models 0 and 1) once per guard, sharing that benchmark's data,
world models and stored runs (`--out`), then tables them side by side:

* `unguarded`: configs/adapt/loop.yaml as it is, run beside the null model and the two halves of
  imagination (`naive_reward`, `naive_obs`: issue 23's diagnostics);
* `safeguard`: imagined steps kept only up to the horizon where the model beats the naive forecast;
* `penalty`: rewards lowered by the K samples' disagreement (MOPO) instead of cutting rollouts there;
* `share_cap`: the imagined share of SAC's batches falls as the model's one-step error on the
  newest real transitions rises above the naive forecast's;
* `newest`: twice the fine-tuning steps, on windows among the newest 500 real transitions;
* `droq_critics`: SAC's critics with DroQ's dropout (0.01) and LayerNorm inside MrCoM's loop: in the
  default run's first collapse the model's error had fallen while the critic's mean Q grew from 14 to
  406, past anything rewards of at most 1 can earn (benchmarks/LOG.md), and LayerNorm critics are the
  usual cure for Q divergence at many updates per step.

Reported per row, over both targets and the seeds: final score, mean over the curve, best score and
the collapse rate (final below 0.7 × the best after reaching 20), the critic's mean Q at the end; each guard against the unguarded
loop, paired by target and seed, on the final and on the curve mean, with Holm's correction over
every comparison of the report. The choice, by a rule fixed before the runs: among the rows whose
collapse rate is no higher than the null model's and whose curve mean is at least 0.9 × the
unguarded loop's (the early gain kept), the one with the highest mean final; `none` when no row
qualifies. Each row also counts the runs whose critic diverged (mean Q above 2 / (1 − γ)). Last line: `guard_choice=<row> final=<x> curve=<x> collapse_rate=<x> null_collapse_rate=<x>`.

    python benchmarks/adapt_guards.py                 # ~3 h on 2 cores, an estimate (54 runs of 5k real steps)
    python benchmarks/adapt_guards.py --report-only   # the table from the runs stored so far
    python benchmarks/adapt_guards.py --smoke         # a few minutes, tiny everything
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

import adapt_efficiency as bench  # benchmarks/adapt_efficiency.py

from mrcom_lightning.adaptation.loop import collapsed
from mrcom_lightning.stats import holm, paired_p_value

HERE = Path(__file__).resolve().parent
GUARDS = {  # row -> the loop settings it changes (adapt_efficiency.py's --set)
    "unguarded": [],
    "safeguard": ["safeguard.enabled=true"],
    "penalty": ["rollout.uncertainty=penalty"],
    "share_cap": ["replay.share_cap=true"],
    "newest": ["fine_tune.newest=500", "fine_tune.steps=40"],
    "droq_critics": ["sac.critic_dropout=0.01", "sac.critic_layer_norm=true"],
}
CONTROLS = ("null", "naive_reward", "naive_obs")  # run once, beside the unguarded loop
KEEP_CURVE = 0.9  # a guard keeps the early gain when its curve mean is at least this × the unguarded loop's


def bench_argv(args: argparse.Namespace, guard: str) -> list[str]:
    methods = ["mrcom", *CONTROLS] if guard == "unguarded" else ["mrcom"]
    argv = ["--targets", "tuning", "--methods", ",".join(methods), "--jobs", str(args.jobs),
            "--threads", str(args.threads), "--tracking-uri", ""]
    argv += ["--smoke"] if args.smoke else []
    argv += ["--out", args.out] if args.out else []
    for pair in GUARDS[guard]:
        argv += ["--set", pair]
    return argv


def stored_runs(argv: list[str]) -> dict:
    """The runs adapt_efficiency.py stored for these arguments (its own `--report-only` lookup)."""
    args = bench.parse_args(argv + ["--report-only"])
    configs = bench.method_configs(args)
    settings = {seed: bench.digest(bench.model_key(args, bench.dataset_config(args, seed), seed))
                for seed in range(args.world_models)}
    return bench.stored_records(args, configs, settings)


def final_q(record: dict) -> float:
    """The critic's mean Q at the run's last log point (nan where none was logged): with rewards of at
    most 1 and the scores seen here, values far above the null model's mean the critic has inflated."""
    values = record["metrics"].get("charts/q_mean", [])
    return float(values[-1][1]) if values else math.nan


def rows_of(records: dict[str, dict]) -> dict[str, dict]:
    """Per row (guard or control): its runs keyed by (target, seed)."""
    rows = {}
    for guard, found in records.items():
        for (method, target, seed), record in found.items():
            name = guard if method == "mrcom" else method
            rows.setdefault(name, {})[target, seed] = record
    return rows


def summarise(rows: dict[str, dict]) -> tuple[str, str, dict]:
    """The markdown table, the last line and the figures, over the (target, seed) pairs every row has."""
    if "unguarded" not in rows:
        raise SystemExit("no unguarded runs stored yet: run without --report-only first")
    pairs = sorted(set.intersection(*(set(runs) for runs in rows.values())))
    if not pairs:
        raise SystemExit("no (target, seed) pair that every row finished")
    stats = {}
    for name, runs in rows.items():
        curves = [runs[pair]["scores"] for pair in pairs]
        stats[name] = {"final": [c[-1] for c in curves], "curve": [float(np.mean(c)) for c in curves],
                       "best": [max(c) for c in curves], "collapse_rate": float(np.mean([collapsed(c) for c in curves])),
                       "diverged": int(sum(bench.critic_diverged(runs[pair]) for pair in pairs)),
                       "final_q": [final_q(runs[pair]) for pair in pairs]}
    comparisons = []  # (row, measure, ratio, raw p)
    base = stats["unguarded"]
    for name in GUARDS:
        if name != "unguarded" and name in stats:
            for measure in ("final", "curve"):
                ratio = np.mean(stats[name][measure]) / np.mean(base[measure]) if np.mean(base[measure]) > 0 else math.nan
                comparisons.append((name, measure, ratio, paired_p_value(stats[name][measure], base[measure])))
    adjusted = holm([p for *_, p in comparisons])
    versus = {(n, m): (r, q) for (n, m, r, _), q in zip(comparisons, adjusted)}
    lines = [f"Tuning targets {sorted({t for t, _ in pairs})}, seeds {sorted({s for _, s in pairs})} ({len(pairs)} runs per row); "
             f"against the unguarded loop: paired t-tests, Holm over the {sum(not math.isnan(q) for q in adjusted)} comparisons.", "",
             "| row | final | mean over the curve | best | collapse rate | critic's mean Q at the end | critic diverged | "
             "final ÷ unguarded (Holm p) | curve ÷ unguarded (Holm p) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in stats.items():
        cells = []
        for measure in ("final", "curve"):
            ratio, q = versus.get((name, measure), (math.nan, math.nan))
            cells.append(f"{ratio:.3f} ({q:.3g})" if not math.isnan(ratio) else "")
        lines.append(f"| {name} | {np.mean(s['final']):.2f} ± {np.std(s['final']):.2f} | {np.mean(s['curve']):.2f} ± "
                     f"{np.std(s['curve']):.2f} | {np.mean(s['best']):.2f} | {s['collapse_rate']:.2f} | {np.nanmean(s['final_q']):.1f} ± "
                     f"{np.nanstd(s['final_q']):.1f} | {s['diverged']}/{len(pairs)} | "
                     f"{cells[0]} | {cells[1]} |")
    null_rate = stats["null"]["collapse_rate"] if "null" in stats else math.nan
    qualified = [n for n in GUARDS if n in stats and stats[n]["collapse_rate"] <= null_rate
                 and np.mean(stats[n]["curve"]) >= KEEP_CURVE * np.mean(base["curve"])]
    choice = max(qualified, key=lambda n: np.mean(stats[n]["final"]), default="none")
    chosen = stats.get(choice)
    last = (f"guard_choice={choice} final={np.mean(chosen['final']) if chosen else math.nan:.2f} "
            f"curve={np.mean(chosen['curve']) if chosen else math.nan:.2f} "
            f"collapse_rate={chosen['collapse_rate'] if chosen else math.nan:.2f} null_collapse_rate={null_rate:.2f}")
    return "\n".join(lines), last, {"pairs": [list(p) for p in pairs], "stats": stats, "choice": choice,
                                    "versus": {f"{n}/{m}": v for (n, m), v in versus.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guards", default=",".join(GUARDS), help=f"comma-separated subset of {', '.join(GUARDS)}")
    parser.add_argument("--out", default="", help="adapt_efficiency.py's --out (default: its own)")
    parser.add_argument("--report", default=str(HERE / "results" / "adapt_guards"), help="where the table goes")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    guards = args.guards.split(",")
    unknown = set(guards) - set(GUARDS)
    if unknown or "unguarded" not in guards:
        parser.error(f"--guards: need unguarded and a subset of {', '.join(GUARDS)}; got {args.guards}")
    records = {}
    for guard in guards:
        argv = bench_argv(args, guard)
        if not args.report_only:
            print(f"== {guard}: adapt_efficiency.py {' '.join(argv)}", flush=True)
            subprocess.run([sys.executable, str(HERE / "adapt_efficiency.py"), *argv], check=True)
        records[guard] = stored_runs(argv)
    table, last, figures = summarise(rows_of(records))
    report = Path(args.report + ("_smoke" if args.smoke else ""))
    report.mkdir(parents=True, exist_ok=True)
    (report / "report.md").write_text(f"# adapt_guards\n\n{table}\n\n{last}\n")
    (report / "result.json").write_text(json.dumps({"guards": {g: GUARDS[g] for g in guards}, **figures, "last": last}))
    print("\n" + table + "\n")
    print(last)


if __name__ == "__main__":
    main()

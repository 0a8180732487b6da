"""`mrcom study`: does MrCoM generalise better? Every variant trained on one dataset, over seeds.

MrCoM, the baselines (a DreamerV3-style RSSM, CaDM, MAMBA; docs/baselines.md) and the four
ablations are each fitted with the same
configs, budget and seeds (a `mrcom sweep` underneath: one folder per variant × seed, finished
cells skipped on a re-run), then tested on in-distribution scenarios and on three kinds of
out-of-distribution ones (dynamics, objective, both outside the training ranges). The report
gives, per test split and error, a table of mean ± std over seeds per domain and overall, each
variant's ratio to MrCoM, and the naive forecast's error on the same windows. Observation errors
are per dim in units of that dim's one-step change, then averaged (`*_rel_mse`): raw MSEs are
dominated by a few velocity dims. The overall rows carry the p-value of a paired t-test over
seeds against MrCoM (every variant shares the data and seeds), Holm-corrected over all of the
report's comparisons, whose number the report states.

With `--adapt true` every trained cell's world model also adapts to target scenarios, the
adaptation controls beside them (study_adapt.py), and `report_adapt.md` gives the paper's Table 1
in its own metric: the score after adaptation per method and target (adapt_table.py, docs/table1.md).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
from jsonargparse import ActionConfigFile, ArgumentParser

from mrcom_lightning import adapt_table, launch, study_adapt, tracking
from mrcom_lightning.compare import cell_text, plot_bars
from mrcom_lightning.stats import holm, paired_p_value
from mrcom_lightning.sweep import (LAUNCH_OPTIONS, add_launch_arguments, cell_name, check_launch_arguments, grid_run,
                                   run_cells, sweep_parser)  # fmt: skip
from mrcom_lightning.tracking import TEST_METRICS

REFERENCE = "mrcom"
NAIVE = "naive"  # the report's column of the naive forecast, read from the first variant's cells
VARIANTS = {
    "mrcom": "",
    "rssm": "configs/baselines/rssm.yaml",
    "cadm": "configs/baselines/cadm.yaml",
    "mamba": "configs/baselines/mamba.yaml",
    "no_context": "configs/ablations/no_context.yaml",
    "no_deterministic": "configs/ablations/no_deterministic.yaml",
    "no_meta_state": "configs/ablations/no_meta_state.yaml",
    "no_meta_value": "configs/ablations/no_meta_value.yaml",
    # MrCoM's context transformer over the history alone; until 2026-12 this row was called "cadm".
    "history_rssm": "configs/baselines/history_rssm.yaml",
}
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "history_rssm"]  # the paper's columns and ablations
# The pre-declared comparisons of the summary lines: MrCoM against each of the paper's baselines and
# against its own model without each meta-regulariser (Holm-corrected over these five).
SUMMARY_BASELINES = ("rssm", "mamba", "cadm", "no_meta_value", "no_meta_state")
# Test splits: interpolation, then each kind of extrapolation (scenarios/meta_set.py).
SPLITS = ("test_id", "test_ood_dynamics", "test_ood_objective", "test_ood")
OOD_SPLITS = SPLITS[1:]
# Observation errors per dim in units of its one-step change (metrics.PerDimStepwise), rewards raw.
ERRORS = ("one_step_rel_mse", "open_loop_rel_mse", "one_step_reward_mse", "open_loop_reward_mse")
PLOTTED = ("open_loop_rel_mse", "open_loop_reward_mse")
# The summary's comparisons again in raw units (MSE over dims, which velocities dominate): a check of
# how much the ranking owes to the per-dim metric, reported apart and Holm-corrected on its own.
RAW_ERROR = "open_loop_mse"
SIZES = {
    "cpu": ["configs/multi.yaml", "configs/study/generalization.yaml", "configs/study/cpu.yaml"],
    "paper": ["configs/multi.yaml", "configs/study/generalization.yaml"],
}


def study_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mrcom study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with the options below")
    parser.add_argument(
        "--sizes",
        type=Literal["cpu", "paper"],
        default="cpu",
        help="cpu: reduced widths and budget (configs/study/cpu.yaml: its header gives the time); paper: "
        "configs/multi.yaml's sizes (GPUs)",
    )
    parser.add_argument("--base", type=list[str] | None, default=None, help="configs every cell starts from (replaces --sizes)")
    parser.add_argument(
        "--variants", type=list[str], default=DEFAULT_VARIANTS, help=f"any of {list(VARIANTS)} (default: all but history_rssm)"
    )
    parser.add_argument("--seeds", type=list[int], default=[0, 1, 2], help="seeds of every variant (>= 3 for the tests)")
    parser.add_argument("--root", type=str, default="runs/study", help="folder of the cells and the report")
    parser.add_argument("--overrides", type=list[str], default=[], help="extra `mrcom fit` arguments for every cell")
    parser.add_argument("--report_only", type=bool, default=False, help="only write the report of the finished cells")
    study_adapt.add_arguments(parser)
    add_launch_arguments(parser)
    return parser


def load_results(root: Path, variants: list[str], seeds: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    """variant -> seed -> the cell's test metrics, for the cells whose test has finished."""
    results: dict[str, dict[int, dict[str, float]]] = {}
    for variant in variants:
        for seed in seeds:
            path = root / cell_name(VARIANTS[variant], seed) / TEST_METRICS
            if path.is_file():
                results.setdefault(variant, {})[seed] = json.loads(path.read_text())
    return results


def domains_of(results: dict) -> list[str]:
    names = {key.split("/")[1] for cells in results.values() for metrics in cells.values() for key in metrics}
    return sorted(n for n in names if n != "loss")


def overall(metrics: dict[str, float], split: str, error: str, domains: list[str]) -> float:
    """The mean over domains of one cell's error (nan if a domain is missing)."""
    return float(np.mean([metrics.get(f"{split}/{d}/{error}", np.nan) for d in domains]))


def table_cells(results, split: str, error: str, domains: list[str]) -> dict[tuple[str, str], list[float]]:
    """(row, variant) -> one value per seed; rows are the domains and `overall`."""
    cells: dict[tuple[str, str], list[float]] = {}
    for variant, seeds in results.items():
        for metrics in seeds.values():
            for domain in domains:
                value = metrics.get(f"{split}/{domain}/{error}")
                if value is not None and np.isfinite(value):
                    cells.setdefault((domain, variant), []).append(value)
            value = overall(metrics, split, error, domains)
            if np.isfinite(value):
                cells.setdefault(("overall", variant), []).append(value)
    return cells


def ood_open_loop(results, variant: str, domains: list[str], error: str = "open_loop_rel_mse") -> list[float]:
    """Per seed: the open-loop observation error averaged over domains and the three OOD kinds."""
    cells = results.get(variant, {}).values()
    return [float(np.mean([overall(metrics, split, error, domains) for split in OOD_SPLITS])) for metrics in cells]


def summary_comparison(
    results, domains: list[str], baseline: str, error: str = "open_loop_rel_mse", suffix: str = ""
) -> tuple[str, float, float, int]:
    """MrCoM against `baseline` on the OOD open-loop observation error (per-dim relative, or `error`),
    paired over the seeds both have: (the line's name, the ratio of means, the paired t-test's p, the seeds)."""
    name = f"{REFERENCE}_over_{baseline}_ood_open_loop{suffix}"
    shared = sorted(set(results.get(REFERENCE, {})) & set(results.get(baseline, {})))
    pick = {v: {s: results[v][s] for s in shared} for v in (REFERENCE, baseline) if v in results}
    ours, theirs = ood_open_loop(pick, REFERENCE, domains, error), ood_open_loop(pick, baseline, domains, error)
    if not ours or not theirs:
        return name, math.nan, math.nan, 0
    return name, float(np.mean(ours) / np.mean(theirs)), paired_p_value(ours, theirs), len(shared)


def summary_lines(results, domains: list[str], error: str = "open_loop_rel_mse", suffix: str = "") -> list[str]:
    """The report's last lines, its pre-declared comparisons: MrCoM against the RSSM (DreamerV3), MAMBA
    and CaDM, and against the model without L_mv and without L_ms (is each regulariser worth having?).
    `p` is Holm-corrected over these lines' comparisons, `p_raw` the paired t-test's own. With `error`
    and `suffix`: the same comparisons on another error, lines named `..._ood_open_loop<suffix>`."""
    compared = [summary_comparison(results, domains, baseline, error, suffix) for baseline in SUMMARY_BASELINES]
    adjusted = holm([p for _, _, p, _ in compared])
    return [f"{name}={ratio:.3f} p={p_holm:.3g} p_raw={p:.3g} seeds={seeds}"
            for (name, ratio, p, seeds), p_holm in zip(compared, adjusted)]


def overall_by_seed(results, variant: str, split: str, error: str, domains: list[str]) -> dict[int, float]:
    """seed -> the variant's overall error (mean over domains) in that cell, where finite."""
    values = {seed: overall(m, split, error, domains) for seed, m in results.get(variant, {}).items()}
    return {seed: v for seed, v in values.items() if np.isfinite(v)}


def paired_comparisons(results, domains: list[str], reference: str) -> dict[tuple[str, str, str], dict[str, float]]:
    """(split, error, variant) -> ratio of means to `reference`, the paired t-test's p over the seeds
    both have, and that p Holm-corrected over all the comparisons returned (the overall rows)."""
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for split in SPLITS:
        for error in ERRORS:
            base = overall_by_seed(results, reference, split, error, domains)
            for variant in results:
                values = overall_by_seed(results, variant, split, error, domains)
                shared = sorted(set(base) & set(values))
                if variant == reference or not shared:
                    continue
                a, b = [values[s] for s in shared], [base[s] for s in shared]
                ratio = float(np.mean(a) / np.mean(b)) if np.mean(b) else float("nan")
                out[split, error, variant] = {"ratio": ratio, "p": paired_p_value(a, b), "seeds": len(shared)}
    keys = list(out)
    for key, adjusted in zip(keys, holm([out[k]["p"] for k in keys])):
        out[key]["p_holm"] = adjusted
    return out


def study_table(rows, columns, cells, split: str, error: str, reference: str | None, compared) -> str:
    """One split × error: mean ± std per domain and overall; beside each variant its ratio of means
    to `reference` (every row) and, on the overall row, the Holm-corrected paired p-value."""
    header = []
    for col in columns:
        header += [col] + ([f"{col} ÷ {reference}", "p (Holm)"] if reference and col != reference else [])
    lines = [f"| {split}/{error} | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for row in rows:
        texts = []
        base = cells.get((row, reference))
        for col in columns:
            values = cells.get((row, col))
            texts.append(cell_text(values, 4))
            if not reference or col == reference:
                continue
            ratio = float(np.mean(values) / np.mean(base)) if values and base and np.mean(base) else float("nan")
            p = compared.get((split, error, col), {}).get("p_holm", float("nan")) if row == "overall" else float("nan")
            texts += [f"{ratio:.4f}" if np.isfinite(ratio) else "–", f"{p:.3g}" if np.isfinite(p) else "–"]
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def report(results, root: Path) -> tuple[str, list[str]]:
    """Writes `report.md`, `report.csv` and bar charts of the overall open-loop errors per split
    (`open_loop_rel_mse.png`, `open_loop_reward_mse.png`, ± std over seeds) under `root`; returns the
    Markdown and its summary lines (the pre-declared comparisons, then their raw-MSE check)."""
    domains = domains_of(results)
    rows = domains + ["overall"]
    cols = [v for v in VARIANTS if v in results]
    reference = REFERENCE if REFERENCE in results else None
    seeds = {v: len(s) for v, s in results.items()}
    compared = paired_comparisons(results, domains, reference) if reference else {}
    tested = sum(np.isfinite(c["p"]) for c in compared.values())
    parts = [
        f"Cells: {', '.join(f'{v} ({n} seeds)' for v, n in seeds.items())}. Each cell: mean ± std over seeds; "
        f"`÷ {reference}`: ratio of means to {reference}; `p (Holm)`: paired t-test over the shared seeds against "
        f"{reference} (overall rows only), Holm-corrected over this report's {tested} comparisons; `{NAIVE}`: "
        "repeating the last real observation and reward on the same windows (not tested). Observation errors "
        "(`*_rel_mse`): per dim in units of its mean squared one-step change, then averaged over dims and domains. "
        "Lower is better.",
    ]
    records = []
    for split in SPLITS:
        for error in ERRORS:
            cells = table_cells(results, split, error, domains)
            if not cells:
                continue
            # The naive forecast (repeat the last real observation and reward) on the same windows.
            naive = table_cells({NAIVE: results[cols[0]]}, split, f"naive_{error}", domains)
            cells |= naive
            parts.append(f"\n### {split} · {error}\n")
            columns = cols + ([NAIVE] if naive else [])
            parts.append(study_table(rows, columns, cells, split, error, reference, compared))
            for row in rows:
                base = cells.get((row, reference)) if reference else None
                for col in columns:
                    values = cells.get((row, col))
                    if values:
                        ratio = float(np.mean(values) / np.mean(base)) if base and np.mean(base) else float("nan")
                        test = compared.get((split, error, col), {}) if row == "overall" else {}
                        records.append([split, error, row, col, np.mean(values), np.std(values), len(values), ratio,
                                        test.get("p", float("nan")), test.get("p_holm", float("nan"))])
    summary, raw = summary_lines(results, domains), summary_lines(results, domains, RAW_ERROR, "_raw_mse")
    parts.append(f"\n### The summary's comparisons in raw units ({RAW_ERROR}, a sensitivity check)\n\n"
                 "The same five comparisons on the MSE over dims, which the velocity dims dominate; Holm over "
                 "these five, apart from the summary's. Where the two disagree, the ranking depends on how dims "
                 "are weighted.\n\n" + "\n".join(raw))
    parts.append("\n" + "\n".join(summary))
    text = "\n".join(parts) + "\n"
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.md").write_text(text)
    with (root / "report.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "error", "domain", "variant", "mean", "std", "seeds", f"ratio_to_{REFERENCE}",
                         "p_paired", "p_holm"])
        writer.writerows(records)
    for error in PLOTTED:  # overall errors per split, ± std over seeds
        cells = {(split, variant): values for split in SPLITS
                 for (row, variant), values in table_cells(results, split, error, domains).items() if row == "overall"}  # fmt: skip
        if cells:
            plot_bars(root / f"{error}.png", [s for s in SPLITS if any(k[0] == s for k in cells)], cols, cells, f"overall {error}")
    return text, summary + raw


def log_report(client, run_id: str, root: Path, summary: list[str]) -> None:
    """The report's files as artifacts of the study's parent run (`report/`), its summary lines as
    metrics: `mrcom_over_<baseline>_ood_open_loop` (and `..._raw_mse`) and its `_p` (Holm), `_p_raw` and `_seeds`."""
    for name in ("report.md", "report.csv", *(f"{error}.png" for error in PLOTTED)):
        if (root / name).is_file():
            client.log_artifact(run_id, str(root / name), "report")
    for line in summary:
        (name, ratio), *rest = (item.split("=") for item in line.split())
        values = {name: float(ratio)} | {f"{name}_{key}": float(value) for key, value in rest}
        for key, value in values.items():
            if np.isfinite(value):
                client.log_metric(run_id, key, value)


def adapt_cells(args, root: Path) -> tuple[list, launch.Summary | None]:
    """`--adapt true`: the adaptation units of the trained cells and the controls (run unless
    `--report_only`), and the launcher's summary of those run now."""
    cells = {(v, seed): root / cell_name(VARIANTS[v], seed) for v in args.variants for seed in args.seeds}
    loop = study_adapt.read_loop(args.adapt_config, args.adapt_overrides)
    try:
        units, notes = study_adapt.plan(cells, root, args.adapt_targets, loop, args.controls)
    except ValueError as err:  # a target the study's scenario set does not have
        raise SystemExit(f"mrcom study: --adapt_targets: {err}") from None
    for note in notes:
        print(f"mrcom study: {note}", flush=True)
    return units, (None if args.report_only else study_adapt.run_units(units, args))


def adapt_report(args, root: Path, units: list, client, run_id: str) -> str | None:
    """The adaptation table of the stored results (adapt_table.py), logged to the parent run."""
    records = study_adapt.records(units)
    if not records:
        print(f"mrcom study: no adaptation stored under {root} with these settings and this code yet: no adaptation table")
        return None
    loop = study_adapt.read_loop(args.adapt_config, args.adapt_overrides)
    settings = study_adapt.settings_text(args, loop)
    behaviour = study_adapt.behaviour_scores(units, loop.episode_steps)
    text = adapt_table.report(records, root, args.variants, args.controls, settings, behaviour)
    adapt_table.log_report(client, run_id, root, text.strip().splitlines()[-1])
    return text


def study_main(argv: list[str]) -> None:
    parser = study_parser()
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; allowed: {list(VARIANTS)}")
    check_launch_arguments(parser, args)
    if args.adapt:
        try:
            study_adapt.check_arguments(args)
        except ValueError as err:
            parser.error(str(err))
    root = Path(args.root)
    if args.report_only and not load_results(root, args.variants, args.seeds):
        parser.error(f"no finished cell under {root} (each writes {TEST_METRICS} when its test ends)")
    base = args.base if args.base is not None else SIZES[args.sizes]
    sizes = args.sizes if args.base is None else "custom"
    sweep = sweep_parser().parse_args(
        ["--root", str(root), "--base", json.dumps(base), "--seeds", json.dumps(args.seeds),
         "--variants", json.dumps([VARIANTS[v] for v in args.variants]), "--overrides", json.dumps(args.overrides),
         *(arg for key in LAUNCH_OPTIONS if getattr(args, key) is not None for arg in (f"--{key}", str(getattr(args, key))))]
    )  # fmt: skip
    params = {"sizes": sizes, "base": base, "variants": args.variants, "seeds": args.seeds, "overrides": args.overrides}
    if args.adapt:
        params |= {key: getattr(args, key) for key in ("adapt_targets", "adapt_config", "adapt_overrides", "controls")}
    params = {key: json.dumps(value) for key, value in params.items()} | {"root": str(root)}
    with grid_run(root, base, args.overrides, f"study-{sizes}", params) as (uri, run_id):
        summary = None if args.report_only else run_cells(sweep, run_id)
        results = load_results(root, args.variants, args.seeds)
        if not results:
            parser.error(f"no finished cell under {root} (each writes {TEST_METRICS} when its test ends)")
        text, lines = report(results, root)
        client = tracking.prepare_store(uri)
        log_report(client, run_id, root, lines)
        print(text)
        print(f"wrote {root / 'report.md'} and {root / 'report.csv'}; logged to the MLflow run {run_id} (report/)")
        adapted = None
        if args.adapt:
            units, adapted = adapt_cells(args, root)
            table = adapt_report(args, root, units, client, run_id)
            if table is not None:
                print(table)
                print(f"wrote {root / 'report_adapt.md'}, report_adapt.csv and adapt_curves.png; logged to {run_id} (report/)")
        # Each report covers what finished; the parent run is FAILED if a cell or an adaptation failed.
        if any(s is not None and s.failed for s in (summary, adapted)):
            raise SystemExit(1)

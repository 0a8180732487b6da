"""The adaptation table of `mrcom study --adapt true`: the paper's Table 1 in its own metric.

Rows are methods (the study's variants, then the controls of adaptation/controls.py), columns are
targets (domain × split, the out-of-distribution kind named), entries the final score (the mean
evaluation return in percent of the maximum, DESIGN.md §5) as mean ± std over seeds, the best of
each column in bold. Every other method is compared with MrCoM per column by a paired t-test
over the seeds both have (seed s trained both world models and drove both adaptations),
Holm-corrected over all of the table's comparisons. The functions below take plain numbers, so
the table can be checked by hand (tests/test_study.py).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from mrcom_lightning.compare import cell_text
from mrcom_lightning.stats import holm, paired_p_value

REFERENCE = "mrcom"
SUMMARY = "mrcom_over_best_other_adapt"
# What each split of the scenario set is, in the column headers: in distribution or which OOD kind.
SPLIT_KINDS = {"train": "train", "val": "val", "test_id": "ID", "test_ood_dynamics": "OOD dynamics",
               "test_ood_objective": "OOD objective", "test_ood": "OOD dynamics+objective"}  # fmt: skip
FILES = ("report_adapt.md", "report_adapt.csv", "adapt_curves.png")

Cells = dict[tuple[str, str], dict[int, float]]  # (method, target) -> seed -> value


def parse_target(target: str) -> tuple[str, str, str]:
    """`test_ood/cheetah-0` (the names of `resolve_targets`) -> ("test_ood", "cheetah", "0")."""
    split, _, rest = target.partition("/")
    domain, _, index = rest.rpartition("-")
    return split, domain, index


def column_label(target: str) -> str:
    split, domain, index = parse_target(target)
    return f"{domain} · {SPLIT_KINDS.get(split, split)} #{index}"


def ordered_targets(targets) -> list[str]:
    """By domain, then ID before the OOD kinds (dynamics, objective, both), then index."""
    kinds = list(SPLIT_KINDS)

    def key(target):
        split, domain, index = parse_target(target)
        return domain, kinds.index(split) if split in kinds else len(kinds), int(index) if index.isdigit() else 0

    return sorted(set(targets), key=key)


def cells_of(records: list[dict], field: str = "final") -> Cells:
    """(method, target) -> seed -> the records' `field`."""
    cells: Cells = {}
    for record in records:
        cells.setdefault((record["method"], record["target"]), {})[record["seed"]] = float(record[field])
    return cells


def mean_of(cells: Cells, method: str, target: str) -> float:
    values = list(cells.get((method, target), {}).values())
    return float(np.mean(values)) if values else math.nan


def paired(cells: Cells, a: str, b: str, target: str) -> tuple[list[float], list[float]]:
    """The values of methods `a` and `b` on `target` over the seeds both have, in seed order."""
    x, y = cells.get((a, target), {}), cells.get((b, target), {})
    shared = sorted(set(x) & set(y))
    return [x[s] for s in shared], [y[s] for s in shared]


def comparisons(cells: Cells, methods: list[str], targets: list[str], reference: str = REFERENCE) -> dict:
    """(method, target) -> `ratio` (reference's mean ÷ the method's, over the seeds both have; > 1:
    the reference scores higher), the paired t-test's `p`, `p_holm` (Holm over every comparison of
    the table with a p) and `seeds`, for every method other than `reference`."""
    out = {}
    for target in targets:
        for method in methods:
            ours, theirs = paired(cells, reference, method, target)
            if method == reference or not ours:
                continue
            ratio = float(np.mean(ours) / np.mean(theirs)) if np.mean(theirs) > 0 else math.nan
            out[method, target] = {"ratio": ratio, "p": paired_p_value(ours, theirs), "seeds": len(ours)}
    keys = list(out)
    for key, adjusted in zip(keys, holm([out[k]["p"] for k in keys])):
        out[key]["p_holm"] = adjusted
    return out


def best_methods(cells: Cells, methods: list[str], target: str) -> set[str]:
    """The methods with the column's highest mean (ties: all of them)."""
    means = {m: mean_of(cells, m, target) for m in methods}
    top = max((v for v in means.values() if np.isfinite(v)), default=math.nan)
    return {m for m, v in means.items() if np.isfinite(top) and v == top}


def summary_line(cells: Cells, compared: dict, variants: list[str], targets: list[str], reference: str = REFERENCE) -> str:
    """`mrcom_over_best_other_adapt=<g> p=<p> seeds=<n> columns=<k>/<m> not_ahead=<targets>`.

    Per column the best other *variant* (controls excluded) is the one with the highest mean final
    score; its ratio is MrCoM's mean ÷ its mean over the seeds both have. `g`: the geometric mean of
    those ratios over the `k` columns where it is finite and positive. `p`: the largest Holm-corrected
    paired p of MrCoM against the column's best other variant over those columns (each column's
    difference is significant at level a exactly when p < a). `seeds`: the fewest paired seeds of
    any column. A column whose ratio is undefined (a mean of 0) is left out of `g` and `p`. `not_ahead`: the columns where MrCoM's mean is not above the best other's."""
    ratios, ps, seeds, behind = [], [], [], []
    others = [v for v in variants if v != reference]
    for target in targets:
        best = sorted(best_methods(cells, others, target))
        test = compared.get((best[0], target)) if best else None
        if test is None:
            continue
        seeds.append(test["seeds"])
        if np.isfinite(test["ratio"]) and test["ratio"] > 0:
            ratios.append(test["ratio"])
            ps.append(test["p_holm"])
        if not test["ratio"] > 1:
            behind.append(target)
    if not ratios:
        return (f"{SUMMARY}=nan p=nan seeds={min(seeds, default=0)} columns=0/{len(targets)} "
                f"not_ahead={','.join(behind) or 'none'}")  # fmt: skip
    geometric = math.exp(float(np.mean(np.log(ratios))))
    p = float(np.max(ps))  # nan if any column has no test (fewer than 2 seeds)
    return (f"{SUMMARY}={geometric:.3f} p={p:.3g} seeds={min(seeds)} columns={len(ratios)}/{len(targets)} "
            f"not_ahead={','.join(behind) or 'none'}")  # fmt: skip


def score_table(cells: Cells, methods: list[str], targets: list[str], bold: bool = True, rows: str = "method") -> str:
    """Rows = methods, columns = targets, entries mean ± std (n) over seeds; the column's best in bold."""
    lines = [f"| {rows} | " + " | ".join(column_label(t) for t in targets) + " |", "|---|" + "---|" * len(targets)]
    best = {t: best_methods(cells, methods, t) for t in targets}
    for method in methods:
        texts = []
        for target in targets:
            values = list(cells.get((method, target), {}).values())
            text = cell_text(values, 1)
            texts.append(f"**{text}**" if bold and values and method in best[target] else text)
        lines.append(f"| {method} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def comparison_table(compared: dict, methods: list[str], targets: list[str]) -> str:
    """Per method and column: MrCoM's mean ÷ the method's, and the Holm-corrected paired p."""
    lines = ["| method | " + " | ".join(column_label(t) for t in targets) + " |", "|---|" + "---|" * len(targets)]
    for method in methods:
        texts = []
        for target in targets:
            test = compared.get((method, target))
            if test is None:
                texts.append("–")
                continue
            ratio = f"{test['ratio']:.3f}" if np.isfinite(test["ratio"]) else "–"
            texts.append(f"{ratio} (p={test['p_holm']:.3g}, n={test['seeds']})" if np.isfinite(test["p_holm"])
                         else f"{ratio} (n={test['seeds']})")  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def behaviour_section(behaviour: Cells, targets: list[str]) -> list[str]:
    """The reference table of the behaviour policies' scores on the targets (none without any)."""
    policies = list(dict.fromkeys(policy for policy, target in behaviour if target in targets))  # the data's order
    if not policies:
        return []
    return [
        "\n## Reference: the dataset's behaviour policies on the same targets\n",
        (
            "Not compared, and not a ceiling: the score over the first `episode_steps` steps (the evaluation's "
            "episode length) of each of the study dataset's episodes on the target, mean ± std over its episodes (n). The policies are snapshots of "
            "one SAC agent per domain, conditioned on the scenario's parameters and trained on the training "
            "scenarios with far more experience than an adaptation's budget; on a test target `expert` is the "
            "snapshot best on average over the training scenarios (docs/commands.md, `mrcom collect`).\n"
        ),
        score_table(behaviour, policies, targets, bold=False, rows="behaviour policy"),
    ]


def realisations(records: list[dict]) -> str:
    """Which realisation of each cell's world model its units adapted (`checkpoint_weights`, recorded
    since 2026-12-06; "unrecorded" before): one sentence naming every cell adapted in more than one,
    as when a cell is retrained on another machine between two parts of a study."""
    seen: dict[str, dict[str, list[str]]] = {}
    for r in records:
        if r.get("checkpoint"):
            weights = r.get("checkpoint_weights") or "unrecorded"
            seen.setdefault(r["checkpoint"], {}).setdefault(weights, []).append(f"{r['method']} {r['target']}")
    mixed = {path: found for path, found in sorted(seen.items()) if len(found) > 1}
    if not mixed:
        return "World models: each cell's units adapted one realisation of its model."
    parts = [f"{path}: " + "; ".join(f"{weights} ({', '.join(sorted(units))})" for weights, units in found.items())
             for path, found in mixed.items()]  # fmt: skip
    return ("World models: these cells were retrained between units (same recipe, other weights; "
            "docs/table1.md), so their units adapted more than one realisation: " + " | ".join(parts) + ".")  # fmt: skip


def report(records: list[dict], root: Path, variants: list[str], controls: list[str], settings: str = "",
           behaviour: Cells | None = None) -> str:  # fmt: skip
    """Writes `report_adapt.md`, `report_adapt.csv` and `adapt_curves.png` under `root` from the
    adaptation records (one per method, target and seed); returns the Markdown, whose last line is
    `summary_line`'s. `behaviour` ((policy, target) -> episode -> score, `study_adapt.behaviour_scores`)
    adds a reference table of the dataset's behaviour policies on the same targets."""
    targets = ordered_targets(r["target"] for r in records)
    present = {r["method"] for r in records}
    methods = [m for m in variants if m in present] + [m for m in controls if m in present]
    finals, curves = cells_of(records, "final"), cells_of(records, "curve_mean")
    compared = comparisons(finals, methods, targets)
    tested = sum(np.isfinite(c["p"]) for c in compared.values())
    last = summary_line(finals, compared, variants, targets)
    parts = [
        "# Adaptation after training: the paper's Table 1 in its own metric\n",
        (
            "Score: the mean evaluation return in percent of the maximum (DESIGN.md §5); each cell mean ± std "
            "over seeds (n), the column's best in **bold**. Each variant's row: that variant's world model, "
            "trained by the study with seed s, adapted with seed s. Controls (adaptation/controls.py): `null` "
            "(the loop with a model that predicts no change, on MrCoM's cell of the seed), `sac` (one update per "
            "real step), `sac_utd` (the loop's updates per real step), `droq` (DroQ's critics, the same updates)."
            + (f" Settings: {settings}." if settings else "")
        ),
        "\n" + realisations(records),
        "\n## Final score\n",
        score_table(finals, methods, targets),
        "\n## Mean over the score curve\n",
        score_table(curves, methods, targets),
        *behaviour_section(behaviour or {}, targets),
        f"\n## Against {REFERENCE}\n",
        (
            f"{REFERENCE}'s mean final score ÷ the method's over the seeds both have (> 1: {REFERENCE} ahead); p: "
            f"paired t-test over those seeds, Holm-corrected over this table's {tested} comparisons.\n"
        ),
        comparison_table(compared, [m for m in methods if m != REFERENCE], targets),
        (
            "\nLast line: per column, MrCoM against the best other variant (controls excluded); the geometric "
            "mean of the ratios over the columns, the largest of their Holm-corrected p, the fewest paired seeds "
            "and the columns where MrCoM is not ahead (docs/table1.md).\n"
        ),
        last,
    ]
    text = "\n".join(parts) + "\n"
    root.mkdir(parents=True, exist_ok=True)
    (root / FILES[0]).write_text(text)
    write_csv(root / FILES[1], records, methods, variants, targets, compared)
    plot_curves(root / FILES[2], records, methods, controls, targets)
    return text


def write_csv(path: Path, records, methods, variants, targets, compared) -> None:
    finals, curves = cells_of(records, "final"), cells_of(records, "curve_mean")
    collapsed = cells_of(records, "collapsed")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "kind", "target", "domain", "split", "split_kind", "seeds", "final_mean", "final_std",
                         "final_min", "curve_mean", "curve_std", "collapsed", f"{REFERENCE}_over_method", "p_paired",
                         "p_holm"])  # fmt: skip
        for target in targets:
            split, domain, _ = parse_target(target)
            for method in methods:
                final = list(finals.get((method, target), {}).values())
                if not final:
                    continue
                curve = list(curves[method, target].values())
                test = compared.get((method, target), {})
                writer.writerow([method, "variant" if method in variants else "control", target, domain, split,
                                 SPLIT_KINDS.get(split, split), len(final), np.mean(final), np.std(final), min(final),
                                 np.mean(curve), np.std(curve), int(sum(collapsed[method, target].values())),
                                 test.get("ratio", math.nan), test.get("p", math.nan), test.get("p_holm", math.nan)])  # fmt: skip


def plot_curves(path: Path, records: list[dict], methods: list[str], controls: list[str], targets: list[str]) -> None:
    """One panel per column: each method's mean score curve over seeds, ± std shaded; controls dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 3.6), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for method in methods:
            runs = [r for r in records if r["method"] == method and r["target"] == target and r["scores"]]
            if not runs:
                continue
            points = min(len(r["scores"]) for r in runs)
            scores = np.array([r["scores"][:points] for r in runs])
            mean, std = scores.mean(0), scores.std(0)
            (line,) = ax.plot(runs[0]["steps"][:points], mean, marker="o", markersize=2.5,
                              linestyle="--" if method in controls else "-", label=f"{method} (n={len(runs)})")  # fmt: skip
            ax.fill_between(runs[0]["steps"][:points], mean - std, mean + std, color=line.get_color(), alpha=0.12)
        ax.set_title(f"{column_label(target)}\n{target}", fontsize="small")
        ax.set_xlabel("real steps")
        ax.set_ylabel("score (% of max return)")
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_report(client, run_id: str, root: Path, last: str) -> None:
    """The table's files as artifacts of the study's parent run (`report/`); the last line's
    numbers as metrics `mrcom_over_best_other_adapt`, `..._p`, `..._seeds`."""
    for name in FILES:
        if (root / name).is_file():
            client.log_artifact(run_id, str(root / name), "report")
    items = dict(item.split("=", 1) for item in last.split())
    values = {SUMMARY: items.get(SUMMARY), f"{SUMMARY}_p": items.get("p"), f"{SUMMARY}_seeds": items.get("seeds")}
    for key, value in values.items():
        if value is not None and np.isfinite(float(value)):
            client.log_metric(run_id, key, float(value))

"""`mrcom compare`: MLflow runs as the paper's tables (rows by domain, columns by method, mean ± std
over seeds), in Markdown and CSV, with learning curves and score bars as PNG, logged as the
artifacts of a comparison run."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import numpy as np
from jsonargparse import ActionConfigFile, ArgumentParser

from mrcom_lightning import tracking
from mrcom_lightning.tracking import DEFAULT_TRACKING_URI

LISTED_METRICS = 40  # at most this many metric names in the error for a missing metric


def compare_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mrcom compare", description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with the options below")
    parser.add_argument("--tracking_uri", type=str, default=DEFAULT_TRACKING_URI, help="MLflow store or server URI")
    parser.add_argument("--experiment", type=list[str], default=["multi"], help="MLflow experiment names")
    parser.add_argument("--filter", type=str, default="", help="MLflow filter string, e.g. \"tags.method != 'rssm'\"")
    parser.add_argument(
        "--metric",
        type=str,
        default="test_id/{domain}/open_loop_mse",
        help="metric name with a {domain} placeholder: one table row per domain found",
    )
    parser.add_argument("--columns", type=str, default="tags.method", help="run field whose values are the columns")
    parser.add_argument("--curve", type=str, default="val/loss", help="metric drawn as learning curves per column")
    parser.add_argument("--out", type=str, default="comparison", help="folder for table.md, table.csv and the plots")
    parser.add_argument("--precision", type=int, default=2, help="decimals in the table")
    parser.add_argument(
        "--reference",
        type=str | None,
        default=None,
        help="a column value (e.g. mrcom): every other column gets its ratio of means to it and the p-value "
        "of Welch's t-test against it",
    )
    parser.add_argument(
        "--log_experiment",
        type=str,
        default="comparisons",
        help="MLflow experiment of the comparison run that gets the outputs as artifacts ('' : none)",
    )
    return parser


def load_runs(tracking_uri: str, experiments: list[str], filter_string: str = ""):
    import mlflow

    database = tracking.sqlite_file(tracking_uri)
    if database is not None and not database.is_file():
        raise ValueError(f"no MLflow store at {tracking_uri} ({database.resolve()}); run where `mrcom fit` wrote it")
    tracking.prepare_store(tracking_uri)
    mlflow.set_tracking_uri(tracking.absolute_uri(tracking_uri))
    runs = mlflow.search_runs(experiment_names=experiments, filter_string=filter_string, output_format="pandas")
    if runs.empty:
        raise ValueError(f"no MLflow runs in experiments {experiments} at {tracking_uri} (filter: {filter_string!r})")
    return runs


def table(runs, metric: str, columns: str) -> tuple[list[str], list[str], dict[tuple[str, str], list[float]]]:
    """Domains (rows), column values and the per-cell values, one per run that logged the metric."""
    if "{domain}" not in metric:
        raise ValueError(f"metric must contain the {{domain}} placeholder, got {metric!r}")
    if columns not in runs.columns:
        tags = sorted(c for c in runs.columns if c.startswith("tags.") and not c.startswith("tags.mlflow."))
        raise ValueError(f"no run has the field {columns!r}; the runs have {', '.join(tags) or 'no tag'} and params.<name>")
    pattern = re.compile("^metrics\\." + re.escape(metric).replace(re.escape("{domain}"), "(?P<domain>[^/]+)") + "$")
    cells: dict[tuple[str, str], list[float]] = {}
    for name in runs.columns:
        match = pattern.match(name)
        if not match:
            continue
        for value, column in zip(runs[name], runs[columns]):
            if value is not None and np.isfinite(value) and isinstance(column, str):
                cells.setdefault((match["domain"], column), []).append(float(value))
    if not cells:
        names = metric_templates([c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.")], metric)
        listed = "\n  ".join(names[:LISTED_METRICS]) + (f"\n  ... ({len(names) - LISTED_METRICS} more)" if len(names) > LISTED_METRICS else "")
        hint = " (test_* metrics come from `mrcom test --ckpt_path runs:/<run_id>`)" if metric.startswith("test") else ""
        raise ValueError(f"no run logged a metric matching {metric!r}{hint}; the runs logged:\n  {listed or '(no metric)'}")
    rows = sorted({domain for domain, _ in cells})
    cols = sorted({column for _, column in cells})
    return rows, cols, cells


def metric_templates(names: list[str], metric: str) -> list[str]:
    """Metric names, those that differ only where `metric` has `{domain}` written once with `{domain}`."""
    parts = metric.split("/")
    position = next((i for i, part in enumerate(parts) if "{domain}" in part), len(parts))
    groups: dict[tuple, set[str]] = {}
    for name in names:
        segments = name.split("/")
        if position < len(segments):
            groups.setdefault((tuple(segments[:position]), tuple(segments[position + 1 :])), set()).add(segments[position])
        else:
            groups.setdefault((tuple(segments), ()), set()).add("")
    templates = set()
    for (head, tail), values in groups.items():
        if values == {""}:
            templates.add("/".join(head))
        for value in ["{domain}"] if len(values) > 1 else values - {""}:
            templates.add("/".join([*head, value, *tail]))
    return sorted(templates, key=lambda t: ("{domain}" not in t, t))  # what --metric can name first


def welch_p_value(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) between two samples; nan with fewer
    than two values on a side or no spread at all."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2 or (np.var(a) == 0 and np.var(b) == 0):
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def against_reference(cells, rows, cols, reference: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(ratio of means to the reference column, Welch p-value against it) per (row, other column)."""
    out = {}
    for row in rows:
        base = cells.get((row, reference))
        for col in cols:
            values = cells.get((row, col))
            if col == reference or not values or not base:
                continue
            mean = float(np.mean(base))
            out[row, col] = (float(np.mean(values)) / mean if mean else float("nan"), welch_p_value(values, base))
    return out


def cell_text(values: list[float] | None, precision: int) -> str:
    """`mean ± std (n=k)` over the cell's runs; one run has no spread: `mean (n=1)`."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{precision}f} (n=1)"
    return f"{np.mean(values):.{precision}f} ± {np.std(values):.{precision}f} (n={len(values)})"


def markdown(rows, cols, cells, precision: int, metric: str, reference: str | None = None) -> str:
    """The table; with a `reference` column, each other column is followed by its ratio of means
    to the reference (`÷ ref`) and Welch's p-value against it (`p`)."""
    compared = against_reference(cells, rows, cols, reference) if reference else {}
    header = []
    for col in cols:
        header.append(col)
        if reference and col != reference:
            header += [f"{col} ÷ {reference}", "p"]
    lines = [f"| {metric} | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for row in rows:
        texts = []
        for col in cols:
            texts.append(cell_text(cells.get((row, col)), precision))
            if reference and col != reference:
                ratio, p = compared.get((row, col), (float("nan"), float("nan")))
                texts += [f"{ratio:.{precision}f}" if np.isfinite(ratio) else "–", f"{p:.3g}" if np.isfinite(p) else "–"]
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows, cols, cells, reference: str | None = None) -> None:
    compared = against_reference(cells, rows, cols, reference) if reference else {}
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["domain", "column", "mean", "std", "runs"] + (["ratio_to_reference", "p_value"] if reference else []))
        for row in rows:
            for col in cols:
                values = cells.get((row, col))
                if values:
                    extra = list(compared.get((row, col), ("", ""))) if reference else []
                    writer.writerow([row, col, np.mean(values), np.std(values), len(values)] + extra)


def plot_bars(path: Path, rows, cols, cells, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(rows) * max(1, len(cols)) / 2, 3.5))
    width = 0.8 / max(1, len(cols))
    for i, col in enumerate(cols):
        means = [np.mean(cells.get((r, col), [np.nan])) for r in rows]
        stds = [np.std(cells.get((r, col), [np.nan])) for r in rows]
        ax.bar(np.arange(len(rows)) + i * width, means, width, yerr=stds, capsize=3, label=col)
    ax.set_xticks(np.arange(len(rows)) + width * (len(cols) - 1) / 2, rows)
    # The metric's name with `{domain}` spelled out: test_id/{cheetah,hopper,walker}/open_loop_mse.
    domains = rows[0] if len(rows) == 1 else "{" + ",".join(rows) + "}"
    ax.set_ylabel(metric.replace("{domain}", domains), fontsize="small" if len(rows) > 1 else None)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(path: Path, runs, columns: str, curve: str, tracking_uri: str) -> bool:
    """Mean learning curve of `curve` per column value (over its runs); False if no run has it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.absolute_uri(tracking_uri))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for column in sorted(v for v in runs[columns].dropna().unique() if isinstance(v, str)):
        histories = []
        for run_id in runs.loc[runs[columns] == column, "run_id"]:
            points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, curve))
            if points:
                histories.append(dict(points))
        if not histories:
            continue
        steps = sorted(set().union(*histories))
        mean = np.array([np.mean([h[s] for h in histories if s in h]) for s in steps])
        std = np.array([np.std([h[s] for h in histories if s in h]) for s in steps])
        line, = ax.plot(steps, mean, marker="o", markersize=2, label=f"{column} ({len(histories)} runs)")
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)  # ± std over runs
        drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel(curve)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def fail(message: str) -> None:
    """Ends `mrcom compare` with the message (no usage text: the options were fine, the data not)."""
    print(f"mrcom compare: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def log_comparison(args, files: list[Path]) -> str:
    """Logs the outputs as artifacts of a run of experiment `args.log_experiment`; the run's summary."""
    client = tracking.prepare_store(args.tracking_uri)
    with tracking.store_lock(args.tracking_uri):
        experiment_id = tracking.ensure_experiment(client, args.log_experiment, args.tracking_uri)
    name = "compare-" + args.metric.replace("{domain}", "*")
    run = client.create_run(experiment_id, run_name=name, tags={"mrcom.compares": ", ".join(args.experiment)})
    name = tracking.claim_run_name(client, args.tracking_uri, run, name)
    keys = ("experiment", "metric", "columns", "filter", "curve", "reference")
    tracking.log_params(client, run.info.run_id, {key: getattr(args, key) for key in keys})
    for path in files:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return f"logged to MLflow run {name} (id {run.info.run_id}) in experiment {args.log_experiment}"


def compare_main(argv: list[str]) -> None:
    parser = compare_parser()
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.tracking_uri, args.experiment, args.filter)
        rows, cols, cells = table(runs, args.metric, args.columns)
        if args.reference is not None and args.reference not in cols:
            raise ValueError(f"--reference {args.reference!r} is not one of the columns {cols}")
    except ValueError as err:
        fail(str(err))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, cols, cells, args.precision, args.metric, args.reference)
    (out / "table.md").write_text(text + "\n")
    write_csv(out / "table.csv", rows, cols, cells, args.reference)
    plot_bars(out / "scores.png", rows, cols, cells, args.metric)
    files = [out / "table.md", out / "table.csv", out / "scores.png"]
    if plot_curves(out / "curves.png", runs, args.columns, args.curve, args.tracking_uri):
        files.append(out / "curves.png")
    print(text)
    print("\nwrote " + ", ".join(map(str, files)))
    if args.log_experiment:
        print(log_comparison(args, files))

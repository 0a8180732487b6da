"""Imagination reports: the per-step error table and the predicted-vs-real figure, written as
files that the LightningModule logs as MLflow artifacts at each validation and test."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

FIGURE_DIMS = 3  # observation dims shown per domain


def write_horizon_table(curves: dict[str, torch.Tensor], path: Path) -> Path:
    """`{domain}/{metric}` -> errors at h = 1..H, as CSV rows (domain, metric, h, value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["domain", "metric", "h", "value"])
        for key, values in sorted(curves.items()):
            domain, metric = key.split("/", 1)
            for h, value in enumerate(values.tolist(), start=1):
                writer.writerow([domain, metric, h, f"{value:.6g}"])
    return path


def plot_imagination(samples: dict[str, dict[str, np.ndarray]], path: Path, title: str) -> Path:
    """One row per domain: a few observation dims and the reward over the H imagined steps, real
    against imagined, from one window. `samples[domain]` holds `obs` [H+1, O] (real, from the start
    step), `predicted_obs` [H, O], `reward` [H] (real) and `predicted_reward` [H]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = sorted(samples)
    fig, axes = plt.subplots(len(domains), FIGURE_DIMS + 1, figsize=(3.2 * (FIGURE_DIMS + 1), 2.4 * len(domains)),
                             squeeze=False)
    for row, domain in enumerate(domains):
        s = samples[domain]
        horizon = len(s["predicted_reward"])
        steps = np.arange(1, horizon + 1)
        for col in range(FIGURE_DIMS):
            ax = axes[row, col]
            if col < s["obs"].shape[1]:
                ax.plot(np.arange(horizon + 1), s["obs"][:, col], "k-", label="real")
                ax.plot(steps, s["predicted_obs"][:, col], "C1--", label="imagined")
            ax.set_title(f"{domain}: obs[{col}]", fontsize=9)
        ax = axes[row, FIGURE_DIMS]
        ax.plot(steps, s["reward"], "k-", label="real")
        ax.plot(steps, s["predicted_reward"], "C1--", label="imagined")
        ax.set_title(f"{domain}: reward", fontsize=9)
    axes[0, -1].legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("imagined step h")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

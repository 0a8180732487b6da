"""Adaptations side by side: the (target, method, seed) runs of `ScenarioAdaptation` and `mrcom adapt`
as cells of `launch.run_cells`, one process per core with one torch thread each, and one progress
bar over all of them.

Every run, in a worker or in this process, has one torch thread and its own seeds, so the scores do
not depend on how many workers ran them. Each run adapts a copy of the model it is given.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from mrcom_lightning.adaptation.controls import plain_sac
from mrcom_lightning.adaptation.loop import AdaptationResult, adapt, method_name
from mrcom_lightning.adaptation.settings import AdaptationConfig
from mrcom_lightning.launch import Cell, run_cells
from mrcom_lightning.scenarios import ScenarioSpec

PROGRESS = "progress"  # `<cell folder>/progress`: "<real steps done> <last evaluation score>"
WRITE_EVERY_S = 0.5
SHOW_EVERY_S = 1.0


@dataclasses.dataclass(frozen=True)
class AdaptationRun:
    """One adaptation: `target` (named `name`, e.g. `val/hopper-0`) with the world model or without."""

    name: str
    target: ScenarioSpec
    use_model: bool
    seed: int


def adapt_all(
    runs: list[AdaptationRun],
    config: AdaptationConfig,
    module=None,
    *,
    workers: int = 1,
    progress: bool = True,
    device: str | torch.device = "cpu",
    stream=None,
) -> list[AdaptationResult]:
    """`adapt` for every run, `workers` at a time in processes of their own (on CUDA one after another
    in this process); returns the results in the runs' order, without their agents.

    Runs with the model get a copy of `module` each. `progress` shows one bar over all runs on
    `stream` (default stdout). A run that fails raises `RuntimeError` with the end of its log.
    """
    if torch.device(device).type == "cuda":
        workers = 1
    with tempfile.TemporaryDirectory(prefix="mrcom-adapt-") as folder:
        cells = []
        for index, run in enumerate(runs):
            cell_folder = Path(folder) / f"{index:03d}"
            shown = cell_folder / PROGRESS if progress else None
            settings = config if run.use_model else plain_sac(config)  # the baseline: plain SAC
            cells.append(Cell(f"{run.name} {method_name(config, run.use_model)} seed{run.seed}", cell_folder,
                              (run, settings, module if run.use_model else None, str(device), shown), cpus=1))  # fmt: skip
        # The model's runs take longest: they start first.
        order = sorted(cells, key=lambda cell: not cell.args[0].use_model)
        with AdaptationProgress(cells, config.env_steps, workers, enabled=progress, stream=stream):
            summary = run_cells(order, run_one, workers=workers, skip_done=False, progress=False)
        for failed in summary.failed:
            tail = failed.log.read_text().splitlines()[-30:] if failed.log and failed.log.is_file() else []
            raise RuntimeError(f"adaptation {failed.name} failed: {failed.error}\n" + "\n".join(tail))
        return [summary.outcomes[cell.name].result for cell in cells]


def run_one(run: AdaptationRun, config: AdaptationConfig, module, device: str, progress: Path | None) -> AdaptationResult:
    """The function of a cell: one adaptation on a copy of `module`, its progress written to the
    file `progress` (None: not shown)."""
    model = copy.deepcopy(module) if module is not None else None
    shown = ProgressFile(progress, config.env_steps) if progress is not None else None
    result = adapt(run.target, config, model, run.use_model, run.seed, progress=False, device=device, on_progress=shown)
    return dataclasses.replace(result, agent=None)  # the policy stays here: what travels back is small


class ProgressFile:
    """`adapt`'s `on_progress`: "<steps> <score>" written to `path` for `AdaptationProgress` to read,
    at most every half second, and whenever the score changes or the run reaches its `total` steps."""

    def __init__(self, path: Path, total: int):
        self.path, self.total, self.steps, self.score, self.written = path, total, 0, math.nan, 0.0

    def __call__(self, steps: int, score: float) -> None:
        new_score = not (score == self.score or (math.isnan(score) and math.isnan(self.score)))
        self.steps, self.score = steps, float(score)
        if new_score or steps >= self.total or time.monotonic() - self.written >= WRITE_EVERY_S:
            self.write()

    def write(self) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(f"{self.steps} {self.score}\n")
        os.replace(partial, self.path)
        self.written = time.monotonic()


def read_progress(path: Path) -> tuple[int, float]:
    try:
        steps, score = path.read_text().split()
        return int(steps), float(score)
    except (OSError, ValueError):
        return 0, math.nan


class AdaptationProgress:
    """One bar over every run, like the training bar: real steps done of all runs' total, elapsed
    time, time left, and the newest evaluation score (with its run). Read from the cells' progress
    files by a thread of this process; nothing is shown when `enabled` is false."""

    def __init__(self, cells: list[Cell], steps: int, workers: int, enabled: bool = True, stream=None):
        self.cells, self.enabled, self.stream = cells, enabled, stream
        self.total = steps * len(cells)
        self.description = f"Adaptation ({len(cells)} runs, {workers} at a time)"
        self.scores = {cell.name: math.nan for cell in cells}
        self.stop = threading.Event()

    def __enter__(self) -> "AdaptationProgress":
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.description, unit="step", dynamic_ncols=True, leave=True,
                            file=self.stream or sys.stdout, smoothing=0.1)  # fmt: skip
            self.thread = threading.Thread(target=self.follow, name="adaptation-progress", daemon=True)
            self.thread.start()
        return self

    def follow(self) -> None:
        while not self.stop.wait(SHOW_EVERY_S):
            self.show()

    def show(self) -> None:
        done, newest = 0, None
        for cell in self.cells:
            steps, score = read_progress(cell.folder / PROGRESS)
            done += steps
            if not math.isnan(score) and score != self.scores[cell.name]:
                self.scores[cell.name], newest = score, f"{cell.name} {score:.1f}"
        if newest is not None:
            self.bar.set_postfix_str(f"last score: {newest}", refresh=False)
        self.bar.update(max(0, done - self.bar.n))  # also redraws

    def __exit__(self, *exc) -> bool:
        if self.enabled:
            self.stop.set()
            self.thread.join()
            self.show()
            self.bar.close()
        return False

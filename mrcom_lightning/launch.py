"""One launcher for every grid: `run_cells(cells, fn, workers=..., launcher=...)` calls `fn(*cell.args)`
for each cell not finished yet, in parallel processes on this machine or as Ray tasks (docs/grids.md).

Each cell has its own folder: its output goes to `<folder>/cell.log`, and `<folder>/done.json` (its
result and time) marks it finished, so a re-run skips it. A cell that fails is reported with its log
and does not stop the others. One progress line covers the grid; `run_commands` is the function of
a cell made of commands (`mrcom sweep`, `mrcom study`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

LOG = "cell.log"
DONE = "done.json"
Launcher = Literal["local", "ray"]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # read by torch when it is first imported
RAY_MISSING = "the Ray launcher needs Ray: pip install 'mrcom-lightning[ray]' (or pip install 'ray[default]')"


@dataclass(frozen=True)
class Cell:
    """One cell of a grid: `fn(*args)`, with its output and result in its own folder."""

    name: str  # unique in the grid; the progress line and the summary use it
    folder: Path  # holds `cell.log` and, once finished, `done.json`
    args: tuple = ()  # what `fn` is called with (picklable)
    cpus: int = 1  # its torch threads, and the CPUs a Ray task of it reserves
    gpus: float = 0  # the GPUs a Ray task of it reserves (Ray sets CUDA_VISIBLE_DEVICES; local cells see every GPU)
    group: str = ""  # cells of one group (a variant, a method) take about as long: the time left is estimated per group

    @property
    def log(self) -> Path:
        return self.folder / LOG


@dataclass
class Outcome:
    """What became of a cell: `finished` (with `fn`'s result), `failed` (with the error) or `skipped`."""

    name: str
    status: Literal["finished", "failed", "skipped"]
    seconds: float = 0.0
    result: Any = None
    error: str = ""
    log: Path | None = None


@dataclass
class Summary:
    """The grid's outcomes, cell name -> `Outcome`, in the cells' order."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0
    label: str = "grid"

    def named(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == status]

    @property
    def failed(self) -> list[Outcome]:
        return self.named("failed")

    @property
    def results(self) -> dict[str, Any]:
        """Cell name -> `fn`'s result, for the cells finished now or before (read from `done.json`)."""
        return {name: o.result for name, o in self.outcomes.items() if o.status != "failed"}

    def text(self) -> str:
        counts = ", ".join(f"{len(self.named(s))} {s}" for s in ("finished", "failed", "skipped"))
        lines = [f"{self.label}: {counts} of {len(self.outcomes)} cells in {clock(self.seconds)}"]
        lines += [f"  failed {o.name}: {o.error}; log: {o.log}" for o in self.failed]
        return "\n".join(lines)


def default_workers(cpus: int = 1) -> int:
    """The cells this machine runs at once: its cores (those this process may use) over `cpus`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, cpus))


def run_cells(
    cells: Sequence[Cell],
    fn: Callable[..., Any],
    *,
    workers: int | None = None,
    launcher: Launcher = "local",
    address: str | None = None,
    start_method: str = "spawn",
    skip_done: bool = True,
    progress: bool = True,
    label: str = "grid",
) -> Summary:
    """Calls `fn(*cell.args)` for every cell without a `done.json`, `workers` at a time; never raises
    for a cell.

    `launcher="local"`: `workers` processes of this machine (default: its cores over the cells' CPUs;
    1 runs the cells one after another in this process), started by `start_method` (`fork` shares
    the parent's memory, e.g. models built once, but survives neither CUDA nor threads). `"ray"`: Ray
    tasks, each reserving its cell's `cpus` and `gpus`, on the cluster at `address` (`auto`, or
    `ray://host:10001`) or on a local Ray instance of `workers × cpus` CPUs; `workers` then caps the
    cells in flight. `fn` must be importable (or picklable) where it runs. Each cell runs in this
    process's working directory (on a cluster, the same path on a shared file system).

    `progress`: the progress line (on stderr, headed `label`) and the summary (stdout). Returns the
    `Summary`; `fn`'s results are its `results`, also kept in each `done.json`.
    """
    if not cells:
        return Summary(label=label)
    started = time.monotonic()
    summary = Summary({cell.name: Outcome(cell.name, "skipped", log=cell.log) for cell in cells}, label=label)
    if len(summary.outcomes) != len(cells):
        raise ValueError(f"cell names must be unique, got {[c.name for c in cells]}")
    pending = []
    for cell in cells:
        done = cell.folder / DONE
        if skip_done and done.is_file():
            summary.outcomes[cell.name].result = read_done(done).get("result")
        else:
            pending.append(cell)
    cpus = max((c.cpus for c in pending), default=1)
    if launcher == "local":
        slots = workers or default_workers(cpus)
        backend = InlineBackend(fn) if slots == 1 else LocalBackend(fn, min(slots, max(1, len(pending))), start_method)
    elif launcher == "ray":
        slots = workers or (None if address else default_workers(cpus))
        backend = RayBackend(fn, address, num_cpus=None if address else slots * cpus) if pending else None
    else:
        raise ValueError(f"launcher must be 'local' or 'ray', got {launcher!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    display = Progress(len(cells), len(cells) - len(pending), slots, enabled=progress, label=label)
    if pending:  # (a grid of finished cells starts no process, nor Ray)
        with backend:
            schedule(pending, backend, slots or len(pending), summary, display)
    summary.seconds = time.monotonic() - started
    display.close()
    if progress:
        print(summary.text(), flush=True)
    return summary


def schedule(pending: list[Cell], backend, slots: int, summary: Summary, display: Progress) -> None:
    """Keeps `slots` cells in flight until every one has an outcome; writes `done.json` of those finished."""
    queue, flight = list(pending), {}  # handle -> (cell, start time)
    while queue or flight:
        while queue and len(flight) < slots:
            cell = queue.pop(0)
            flight[backend.submit(cell, os.getcwd())] = (cell, time.monotonic())
        display.show(summary, [(start, cell.group) for cell, start in flight.values()], [cell.group for cell in queue])
        for handle in backend.wait(list(flight)):
            cell, _ = flight.pop(handle)
            outcome = backend.outcome(handle, cell)
            summary.outcomes[cell.name] = outcome
            if outcome.status == "finished":
                record = {"name": cell.name, "seconds": round(outcome.seconds, 3), "result": outcome.result}
                (cell.folder / DONE).write_text(json.dumps(record, indent=1, default=str))
            display.durations.setdefault(cell.group, []).append(outcome.seconds)
    display.show(summary, [], [])


def attempt(fn: Callable[..., Any], cell: Cell, cwd: str) -> Outcome:
    """Runs one cell where it was sent: in `cwd`, with `cell.cpus` threads, its output appended to
    its log; an exception (or exit) of `fn` becomes a failed `Outcome` with the traceback in the log."""
    start = time.monotonic()
    with working_directory(cwd), threads(cell.cpus):
        cell.folder.mkdir(parents=True, exist_ok=True)
        with open(cell.log, "a") as log:
            print(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} cell {cell.name} on {os.uname().nodename}", file=log, flush=True)
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    result = fn(*cell.args)
            except (Exception, SystemExit) as err:
                traceback.print_exc(file=log)
                error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                return Outcome(cell.name, "failed", time.monotonic() - start, error=error, log=cell.log)
    return Outcome(cell.name, "finished", time.monotonic() - start, result=result, log=cell.log)


class CommandFailed(RuntimeError):
    """A command of a command cell exited with a non-zero status."""


def run_commands(commands: list[list[str]], env: dict[str, str] | None = None) -> list[list[str]]:
    """The function of a command cell: runs `commands` one after another with `env` added to this
    process's environment, their output to this process's stdout (the cell's log); returns them."""
    for command in commands:
        print("$ " + shlex.join(command), flush=True)
        sys.stderr.flush()
        done = subprocess.run(command, env=dict(os.environ, **(env or {})), stdout=sys.stdout, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise CommandFailed(f"`{command_name(command)}` exited {done.returncode}")
    return commands


def command_name(command: list[str]) -> str:
    """`mrcom fit` for `python -m mrcom_lightning.cli fit ...`, else the program's name."""
    if command[1:3] == ["-m", "mrcom_lightning.cli"] and len(command) > 3:
        return f"mrcom {command[3]}"
    return Path(command[0]).name


def read_done(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) or {}
    except (json.JSONDecodeError, OSError):
        return {}


@contextlib.contextmanager
def working_directory(path: str) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """`count` torch threads while a cell runs (set on torch if already imported, else read at its import)."""
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: str(count) for name in THREAD_VARIABLES})
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if before is not None:
            torch.set_num_threads(before)


class Backend:
    """Where cells run: `submit` one, `wait` (about a second at most) for some to end, read an `outcome`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class InlineBackend(Backend):
    """One cell at a time, in this process: `--workers 1`, the sequential grid."""

    def __init__(self, fn):
        self.fn = fn

    def submit(self, cell: Cell, cwd: str):
        return InlineBackend.Call(cwd)

    def wait(self, handles: list):
        return handles[:1]

    def outcome(self, handle, cell: Cell) -> Outcome:
        return attempt(self.fn, cell, handle.cwd)

    @dataclass(eq=False)
    class Call:
        cwd: str


class LocalBackend(Backend):
    """`slots` worker processes of this machine."""

    def __init__(self, fn, slots: int, start_method: str):
        self.fn, self.slots, self.context = fn, slots, multiprocessing.get_context(start_method)

    def __enter__(self):
        self.pool = concurrent.futures.ProcessPoolExecutor(self.slots, mp_context=self.context)
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True, cancel_futures=True)
        return False

    def submit(self, cell: Cell, cwd: str):
        return self.pool.submit(attempt, self.fn, cell, cwd)

    def wait(self, handles: list):
        done, _ = concurrent.futures.wait(handles, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED)
        return list(done)

    def outcome(self, handle, cell: Cell) -> Outcome:
        try:
            return handle.result()
        except Exception as err:  # the worker process died (killed, out of memory): the pool is rebuilt
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = concurrent.futures.ProcessPoolExecutor(self.slots, mp_context=self.context)
            return Outcome(cell.name, "failed", error=f"its worker process died ({type(err).__name__})", log=cell.log)


class RayBackend(Backend):
    """Ray tasks, each reserving its cell's CPUs and GPUs, on a cluster or a local Ray instance."""

    def __init__(self, fn, address: str | None, num_cpus: int | None):
        try:
            import ray
        except ImportError:
            raise RuntimeError(RAY_MISSING) from None
        self.ray, self.fn, self.address, self.num_cpus = ray, fn, address, num_cpus

    def __enter__(self):
        self.started = not self.ray.is_initialized()
        # A local instance's workers import what this process imports (a script's or a test's modules).
        paths = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}} if not self.address else None
        if self.started:  # the cells write their own logs: nothing of theirs is echoed here
            self.ray.init(address=self.address, num_cpus=self.num_cpus, include_dashboard=False, runtime_env=paths,
                          log_to_driver=False, logging_level="warning", configure_logging=False)  # fmt: skip
        self.task = self.ray.remote(attempt)
        return self

    def __exit__(self, *exc):
        if self.started:
            self.ray.shutdown()
        return False

    def submit(self, cell: Cell, cwd: str):
        options = self.task.options(num_cpus=cell.cpus, num_gpus=cell.gpus, max_retries=0, name=cell.name)
        return options.remote(self.fn, cell, cwd)

    def wait(self, handles: list):
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=1.0)
        return ready

    def outcome(self, handle, cell: Cell) -> Outcome:
        try:
            return self.ray.get(handle)
        except Exception as err:  # the task's worker died, or its node left the cluster
            error = f"its Ray task failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            return Outcome(cell.name, "failed", error=error, log=cell.log)


class Progress:
    """One line over the grid, redrawn on a terminal (else printed when it changes): cells finished,
    running, failed and skipped, the time elapsed and an estimate of the time left."""

    def __init__(self, total: int, skipped: int, slots: int | None, enabled: bool = True, label: str = "grid", stream=None):
        self.total, self.skipped, self.slots, self.enabled, self.label = total, skipped, slots, enabled, label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start, self.last = time.monotonic(), ""
        self.durations: dict[str, list[float]] = {}  # group -> the times of its ended cells

    def show(self, summary: Summary, running: list[tuple[float, str]], waiting: list[str]) -> None:
        """`running`: (start time, group) of each cell in flight; `waiting`: the group of each cell not started."""
        if not self.enabled:
            return
        finished, failed = len(summary.named("finished")), len(summary.named("failed"))
        counts = f"{finished + failed + self.skipped}/{self.total} cells: {finished} finished, {len(running)} running, " \
                 f"{failed} failed, {self.skipped} skipped"  # fmt: skip
        if counts == self.last and not self.tty:
            return
        self.last = counts
        now = time.monotonic()
        line = f"{self.label} {counts} | {clock(now - self.start)} elapsed{self.left(now, running, waiting)}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def left(self, now: float, running: list[tuple[float, str]], waiting: list[str]) -> str:
        """`, ~T left`: for each cell not started its group's mean time (the mean over every group until
        one of its own has ended), for each cell running the rest of it, shared over the slots."""
        times = [t for group in self.durations.values() for t in group]
        if not times:
            return ""
        overall = sum(times) / len(times)

        def mean(group: str) -> float:
            own = self.durations.get(group)
            return sum(own) / len(own) if own else overall

        work = sum(mean(g) for g in waiting) + sum(max(mean(g) - (now - start), 0.0) for start, g in running)
        width = max(1, min(self.slots or len(running) or 1, len(waiting) + len(running)))
        return f", ~{clock(work / width)} left"

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"

"""How many torch CPU threads a process uses: `--threads auto` (the default of `mrcom fit/test/adapt`).

A run alone on the machine gets every core it may use; a worker of a parallel launcher gets the
threads that launcher gave it, so that its workers together fill the cores without oversubscribing
them.
"""

from __future__ import annotations

import os
from typing import Literal, Union

AUTO = "auto"
Threads = Union[int, Literal["auto"]]
# Set (to 1) by a launcher for the processes it runs side by side: `auto` then means one thread each.
PARALLEL_WORKER_ENV = "MRCOM_PARALLEL_WORKER"
# Read by torch at import; a launcher that gives each worker N cores sets it to N.
THREADS_ENV = "OMP_NUM_THREADS"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under `taskset` or a scheduler)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def in_parallel_worker() -> bool:
    """Whether a launcher runs this process beside others (`$MRCOM_PARALLEL_WORKER` set, not 0)."""
    return os.environ.get(PARALLEL_WORKER_ENV, "") not in ("", "0")


def given_cores() -> int:
    """The cores this process may keep busy: `$OMP_NUM_THREADS` when a launcher set it (its share of
    the machine), else 1 in a parallel worker, else every available core."""
    given = os.environ.get(THREADS_ENV, "")
    if given.isdigit() and int(given) >= 1:
        return int(given)
    return 1 if in_parallel_worker() else available_cores()


def resolve_threads(threads: Threads) -> int:
    """`threads` as a number; `auto` is `given_cores()`."""
    if threads == AUTO:
        return given_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be 'auto' or an integer >= 1, got {threads!r}")
    return threads


def resolve_workers(workers: Threads, cells: int) -> int:
    """Processes for `cells` independent jobs of one thread each: `auto` is one per core given
    (`given_cores()`), at most one per cell."""
    if workers == AUTO:
        return max(1, min(cells, given_cores()))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be 'auto' or an integer >= 1, got {workers!r}")
    return min(workers, max(1, cells))

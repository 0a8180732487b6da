"""Function cells for tests/test_launch.py, in a module of their own: a worker process or Ray task
imports it to run them, and it imports nothing heavy."""

from __future__ import annotations

import os
import time


def square(x: int) -> dict:
    """Prints, fails on 3, returns its square, its process and its thread setting."""
    print(f"squaring {x}")
    time.sleep(0.2)
    if x == 3:
        raise ValueError("3 is not allowed here")
    return {"square": x * x, "pid": os.getpid(), "threads": os.environ.get("OMP_NUM_THREADS")}

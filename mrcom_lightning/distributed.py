"""A clean exit for CPU (gloo) process groups.

Lightning destroys NCCL process groups at exit but leaves gloo ones to the interpreter's
finalisation. There, a rank whose peer has already gone can abort in gloo's C++ threads
("terminate called without an active exception", SIGABRT) after a run that succeeded. Each
rank therefore waits for the others at exit and destroys its process group itself.
"""

from __future__ import annotations

import atexit
from datetime import timedelta

import torch.distributed as dist

EXIT_TIMEOUT = timedelta(seconds=60)
_registered = False


def _destroy_gloo_group() -> None:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_backend() != dist.Backend.GLOO:
        return
    try:  # every rank reaches its exit before any closes its connections
        dist.monitored_barrier(timeout=EXIT_TIMEOUT)
    except RuntimeError:  # a peer died or hangs: nothing to wait for, close ours anyway
        pass
    dist.destroy_process_group()


def exit_cleanly() -> None:
    """Registers (once per process) the synchronised destruction of a gloo process group at exit."""
    global _registered
    if not _registered and dist.is_available() and dist.is_initialized() and dist.get_backend() == dist.Backend.GLOO:
        atexit.register(_destroy_gloo_group)
        _registered = True

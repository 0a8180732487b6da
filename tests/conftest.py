"""Test-wide settings: no rendering backend, one CPU thread, and DDP on the loopback interface."""

import os

os.environ.setdefault("MUJOCO_GL", "disable")
# The CPU DDP tests (gloo) rendezvous on this machine only: pin them to the loopback interface so
# that the host name's resolution plays no part (inherited by the subprocesses the tests start).
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
# Under pytest-xdist (`pytest -n 2`) each worker gets one core: so do the commands it starts, whose
# `threads: auto` reads $OMP_NUM_THREADS (two workers × two threads would run several times slower).
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch
except ImportError:  # the scenario suite does not need torch
    torch = None

if torch is not None:
    torch.set_num_threads(1)

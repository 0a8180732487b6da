"""Test-wide settings: no rendering backend, one CPU thread, and DDP on the loopback interface."""

import os

os.environ.setdefault("MUJOCO_GL", "disable")
# The CPU DDP tests (gloo) rendezvous on this machine only: pin them to the loopback interface so
# that the host name's resolution plays no part (inherited by the subprocesses the tests start).
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

try:
    import torch
except ImportError:  # the scenario suite does not need torch
    torch = None

if torch is not None:
    torch.set_num_threads(1)

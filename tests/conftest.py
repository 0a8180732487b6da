"""Test-wide settings: no rendering backend and one CPU thread, so tests run anywhere and fast."""

import os

os.environ.setdefault("MUJOCO_GL", "disable")

try:
    import torch
except ImportError:  # the scenario suite does not need torch
    torch = None

if torch is not None:
    torch.set_num_threads(1)

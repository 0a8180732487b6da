"""MrCoM on PyTorch Lightning: a meta-regularized world model across MuJoCo scenarios."""

import os

# Nothing here renders; without this, importing dm_control on a headless machine warns about GLFW.
os.environ.setdefault("MUJOCO_GL", "disable")

__version__ = "0.1.0"

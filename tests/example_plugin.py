"""The example plugin (examples/quadruped_plugin) in tests: imported afresh, registry restored after.

Importing `mrcom_quadruped.domains` registers `quadruped`; `registered_example()` imports it
anew (so that it registers again) and leaves the registry and `sys.modules` as it found them.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

from mrcom_lightning.scenarios import DOMAINS

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quadruped_plugin"
MODULE = "mrcom_quadruped.domains"


@contextlib.contextmanager
def fresh_registry():
    """Restores `DOMAINS` and forgets the example's modules on exit."""
    saved = dict(DOMAINS)
    try:
        yield
    finally:
        DOMAINS.clear()
        DOMAINS.update(saved)
        for name in [m for m in sys.modules if m == "mrcom_quadruped" or m.startswith("mrcom_quadruped.")]:
            del sys.modules[name]


@contextlib.contextmanager
def registered_example():
    """The example's domains module, freshly imported (so `quadruped` is registered)."""
    path = str(EXAMPLE)
    sys.path.insert(0, path)
    try:
        with fresh_registry():
            for name in [m for m in sys.modules if m == "mrcom_quadruped" or m.startswith("mrcom_quadruped.")]:
                del sys.modules[name]
            yield importlib.import_module(MODULE)
    finally:
        sys.path.remove(path)

"""Loading checkpoints and agent files without running code from them.

The threat: a Lightning checkpoint (`best.ckpt`) or a behaviour agent file is a zip archive
holding a pickle, and Python's unpickler calls whatever the pickle names. A file that someone
else wrote (downloaded, shared, or swapped on a shared disk) can therefore run any command the
moment it is loaded with the full unpickler (`torch.load` with `weights_only` off): an object
whose `__reduce__` returns `(os.system, ("...",))` is enough.

The defence: every file is read by torch's weights-only unpickler, which rebuilds tensors,
numbers, strings and plain containers, and otherwise only the globals it is told are safe.
`SAFE_GLOBALS` is that allow-list: the plain settings dataclasses that this project's
checkpoints legitimately carry in their hyperparameters (a fit's model and datamodule
settings). Anything else in a file is refused before it is built, with `UnsafeCheckpointError`
naming the file and the type; a truncated or foreign file gives `CorruptCheckpointError`; a
missing one `CheckpointNotFoundError`. There is no switch to unpickle arbitrary objects.

`load_checkpoint` is the one place the project reads such a file itself; Lightning reads
`--ckpt_path` on its own, and the CLI runs it inside `allow_project_globals()`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import pickle
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

# Where each class was defined when checkpoints were written ("module.Class"): the name the
# pickle holds. A class that has since moved is looked up under this name (its old module
# re-exports it) and accepted under both names.
SAFE_GLOBALS: tuple[str, ...] = (
    "mrcom_lightning.models.world_model.WorldModelConfig",  # hyper_parameters["world_model"]
    "mrcom_lightning.data.collect.DatasetConfig",  # datamodule_hyper_parameters["dataset"]
    "mrcom_lightning.scenarios.meta_set.MetaScenarioSet",  # DatasetConfig.scenarios
    "mrcom_lightning.scenarios.spec.ScenarioSpec",  # a scenario, wherever settings name one
    "mrcom_lightning.agents.sac.SACConfig",  # DatasetConfig.sac
)

_GLOBAL_NAME = re.compile(r"GLOBAL (\S+)")  # "Unsupported global: GLOBAL posix.system was not ..."
_GOT_TYPE = re.compile(r"but got (.+?)\s*$", re.MULTILINE)  # "Can only build ... but got <class 'x.Y'>"
_REASON = re.compile(r"(Trying to load.*|Unsupported.*|Can only.*)")


class CheckpointError(Exception):
    """A checkpoint or agent file that cannot be loaded; the message names the file."""


class UnsafeCheckpointError(CheckpointError, ValueError):
    """The file holds an object outside the allow-list; it was refused, not built."""


class CorruptCheckpointError(CheckpointError, ValueError):
    """The file is truncated, damaged, or not a torch checkpoint at all."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file at the given path."""


@functools.cache
def project_safe_globals() -> tuple:
    """`SAFE_GLOBALS` as objects, in the form `torch.serialization.add_safe_globals` takes.

    Imported here, on first use, rather than at module import: the config classes live in
    modules that import much of the project, and this module must be importable from any of them.
    """
    allowed = []
    for name in SAFE_GLOBALS:
        module, _, attribute = name.rpartition(".")
        cls = getattr(importlib.import_module(module), attribute)
        allowed.append(cls)
        if f"{cls.__module__}.{cls.__qualname__}" != name:
            allowed.append((cls, name))  # checkpoints written before the class moved
    return tuple(allowed)


@contextlib.contextmanager
def allow_project_globals() -> Iterator[None]:
    """A context in which weights-only loads (torch's, and Lightning's `ckpt_path`) accept `SAFE_GLOBALS`.

    Scoped to the load rather than registered process-wide, so that importing the project does
    not widen what every other load in the process accepts. Unlike `torch.serialization.safe_globals`,
    whose exit also drops classes registered process-wide before it, this removes on exit
    only what it added.
    """
    before = torch.serialization.get_safe_globals()
    added = [entry for entry in project_safe_globals() if entry not in before]
    torch.serialization.add_safe_globals(added)
    try:
        yield
    finally:
        remaining = [entry for entry in torch.serialization.get_safe_globals() if entry not in added]
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(remaining)


def _refused_type(message: str) -> str:
    """The global or type torch's weights-only unpickler refused, from its error message."""
    for pattern in (_GLOBAL_NAME, _GOT_TYPE, _REASON):
        found = pattern.search(message)
        if found:
            return found.group(1).rstrip(".")
    return message.strip().splitlines()[-1] if message.strip() else "an object it does not allow"


def _is_zip(path: Path) -> bool:
    """Whether `path` is a complete zip archive, as every checkpoint `torch.save` writes is."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _damaged(path: str | Path, detail: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"checkpoint {path} is {detail}: truncated, damaged or another format; copy it again or point at another file"
    )


def _file_problem(path: str | Path) -> CheckpointError | None:
    """What is wrong with `path` before unpickling: missing, or not a complete zip archive.

    torch would try its legacy format on a non-zip file and fail with a bare KeyError.
    A remote path (Lightning reads URLs too) cannot be inspected here.
    """
    if "://" in str(path):
        return None
    if not Path(path).is_file():
        return CheckpointNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    if not _is_zip(Path(path)):
        return _damaged(path, "not a torch checkpoint (not a complete zip archive)")
    return None


def load_error(path: str | Path, err: BaseException) -> CheckpointError | None:
    """The `CheckpointError` that `err`, raised while torch loaded `path`, stands for; None if none.

    torch's own messages never name the file, and for a refused object they suggest turning
    `weights_only` off, which is exactly what must not be done with an untrusted file.
    """
    if isinstance(err, CheckpointError):
        return err
    problem = _file_problem(path)
    if problem is not None:
        return problem
    if isinstance(err, pickle.UnpicklingError):
        return UnsafeCheckpointError(
            f"checkpoint {path} refused: it holds {_refused_type(str(err))}, which is not one of the types "
            "checkpoints of this project carry (nothing in it was built or run); use only files you trust"
        )
    if isinstance(err, (RuntimeError, EOFError, KeyError, ValueError)):
        return _damaged(path, f"not a readable torch checkpoint ({str(err).splitlines()[0][:160]})")
    return None


def load_checkpoint(path: str | Path) -> dict:
    """The dict saved at `path` (a Lightning checkpoint or a SAC agent file), tensors on the CPU.

    Loaded weights-only with `SAFE_GLOBALS` allowed. Raises `UnsafeCheckpointError` for any
    other object, `CorruptCheckpointError` for a damaged or foreign file and
    `CheckpointNotFoundError` (a FileNotFoundError) for a missing one; each names the file.
    """
    problem = _file_problem(path)
    if problem is not None:
        raise problem
    try:
        with allow_project_globals():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError) as err:
        raise load_error(path, err) from None
    if not isinstance(checkpoint, dict):
        raise _damaged(path, f"a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def load_module(path: str | Path):
    """The MrCoM saved in the Lightning checkpoint at `path`, rebuilt by Lightning, on the CPU.

    The file is checked by `load_checkpoint` first (the same errors, each naming the file); Lightning
    then reads it weights-only with the same allow-list, so that the module is restored exactly as
    Lightning restores it, hooks included.
    """
    from mrcom_lightning.module import MrCoM

    load_checkpoint(path)
    with allow_project_globals():
        return MrCoM.load_from_checkpoint(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def exit_on_checkpoint_error(command: str) -> Iterator[None]:
    """Ends a command line tool with one line on stderr and exit status 2 if a checkpoint fails to load.

    A refused or damaged file is a problem with the input, not a bug: a traceback would only
    bury the file's name.
    """
    try:
        yield
    except CheckpointError as err:
        print(f"{command}: {err}", file=sys.stderr)
        raise SystemExit(2) from None

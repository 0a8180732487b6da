"""Domains of one's own: registering, checking and loading them (docs/extending.md).

A domain other than the paper's three comes from a module that calls `register_domain(entry)`
when it is imported. Such a module reaches a run in one of two ways:

* an installed package declares it as an entry point of the group `mrcom.domains`
  (`[project.entry-points."mrcom.domains"] quadruped = "mrcom_quadruped.domains"`);
* any `mrcom` command is given `--domains_module my_pkg.domains` (several: repeat it or separate
  them by commas), which imports it and adds it to the environment variable
  `MRCOM_DOMAINS_MODULES`, inherited by every child process.

Importing `mrcom_lightning.scenarios` runs `load_plugins()`, which imports both kinds. Every
process of a run imports that package before it reads the registry (collection workers started
with `spawn`, DDP ranks, dataloader workers), so each sees the domains of the command that
started it. A script can also call `register_domain` itself; `mrcom collect`'s workers are then
sent the entries of the domains they collect.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
from typing import Callable, Iterable

import numpy as np

from mrcom_lightning.scenarios.domains import DOMAINS, Domain, draw_key

GROUP = "mrcom.domains"
ENV_VAR = "MRCOM_DOMAINS_MODULES"
_NAME = re.compile(r"[a-z][a-z0-9_]*")  # part of scenario ids, file and metric names


def register_domain(entry: Domain, check: bool = True) -> Domain:
    """Adds `entry` to the registry, after `check_domain(entry)` unless `check` is false.

    Registering an equal entry again does nothing; another entry under a registered name is
    refused. Returns the registered entry.
    """
    name = entry.name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"domain name must be lower-case letters, digits and '_', starting with a letter, got {name!r}")
    if name in DOMAINS:
        if DOMAINS[name] == entry:
            return DOMAINS[name]
        raise ValueError(
            f"domain {name!r} is already registered (task {_qualname(DOMAINS[name].task)}); "
            f"the entry with task {_qualname(entry.task)} needs another name"
        )
    clash = [other for other in DOMAINS if draw_key(other) == draw_key(name)]
    if clash:  # a CRC-32 collision would give two domains one scenario stream
        raise ValueError(f"domain {name!r} would draw its scenarios from the stream of {clash[0]!r}; choose another name")
    DOMAINS[name] = entry
    try:
        if check:
            check_domain(entry)
    except BaseException:
        del DOMAINS[name]
        raise
    return entry


def check_domain(entry: Domain) -> None:
    """Builds `entry`'s environment once, before any data depend on it, and raises a ValueError
    naming the domain and the problem: the MJCF edits' body and geoms (`mjcf.scaled_model`), the
    model compiled at default and changed scales, the task's signature, the observation and
    action sizes after one reset and one step's reward. `entry` must be in the
    registry (`register_domain` puts it there first)."""
    from mrcom_lightning.scenarios.env import make_env
    from mrcom_lightning.scenarios.mjcf import scaled_model
    from mrcom_lightning.scenarios.spec import ScenarioSpec

    name = entry.name
    try:
        for length_scale, size_scale in ((1.3, 0.7), (0.7, 1.3)):
            entry.physics.from_xml_string(*scaled_model(entry, length_scale, size_scale))
        env = make_env(ScenarioSpec(name, target_speed=0.5), episode_steps=2)
        environment = env.environment
        observation = environment.reset().observation
    except Exception as err:
        if isinstance(err, ValueError) and repr(name) in str(err):
            raise
        raise ValueError(f"domain {name!r}: building its environment failed: {type(err).__name__}: {err}") from err
    sizes = {key: int(np.asarray(value).size) for key, value in observation.items()}
    if sum(sizes.values()) != entry.obs_dim:
        parts = " + ".join(f"{key} {size}" for key, size in sizes.items())
        raise ValueError(
            f"domain {name!r}: obs_dim={entry.obs_dim}, but one reset observes {sum(sizes.values())} values "
            f"({parts}); set obs_dim={sum(sizes.values())}"
        )
    spec = environment.action_spec()
    if spec.shape != (entry.act_dim,):
        raise ValueError(f"domain {name!r}: act_dim={entry.act_dim}, but the model has {spec.shape[0]} actuators; set act_dim={spec.shape[0]}")
    reward = environment.step(np.zeros(entry.act_dim)).reward
    if reward is None or not 0.0 <= float(reward) <= 1.0:
        raise ValueError(f"domain {name!r}: the task's reward must lie in [0, 1], got {reward!r} after one step")


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def environment_modules() -> list[str]:
    """The modules named in `MRCOM_DOMAINS_MODULES` (comma-separated)."""
    return [name.strip() for name in os.environ.get(ENV_VAR, "").split(",") if name.strip()]


def _load(what: str, source: str, load: Callable[[], object]) -> None:
    try:
        load()
    except ImportError as err:
        raise ImportError(f"the domains module {what} ({source}) cannot be imported: {err}") from err


def load_plugins() -> None:
    """Imports the modules of the installed `mrcom.domains` entry points and those named in
    `MRCOM_DOMAINS_MODULES`; each registers its domains. Modules already imported are not run again."""
    for entry_point in importlib.metadata.entry_points(group=GROUP):
        _load(entry_point.value, f"entry point {entry_point.name!r} of group {GROUP!r}", entry_point.load)
    for module in environment_modules():
        _load(module, ENV_VAR, lambda: importlib.import_module(module))


def add_domains_modules(modules: Iterable[str]) -> None:
    """Imports each module (registering its domains) and adds it to `MRCOM_DOMAINS_MODULES`, so
    that every child process of this one imports it too (`--domains_module`)."""
    modules = [name.strip() for text in modules for name in text.split(",") if name.strip()]
    for module in modules:
        _load(module, "--domains_module", lambda: importlib.import_module(module))
    known = environment_modules()
    os.environ[ENV_VAR] = ",".join(known + [m for m in modules if m not in known])

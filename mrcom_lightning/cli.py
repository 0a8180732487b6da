"""`mrcom`: one command for the whole workflow.

`fit`, `validate`, `test` and `predict` are the LightningCLI of the world model; `collect`,
`adapt`, `compare`, `sweep` and `study` are tools with jsonargparse command lines of their own. Each is
imported only when asked for, so `mrcom collect` (and the processes it spawns) never pay for
importing Lightning.

`--domains_module my_pkg.domains`, accepted by every subcommand, imports a module that registers
domains of one's own before anything else runs, and passes it on to every child process
(`mrcom_lightning.scenarios.plugins`, docs/extending.md).
"""

from __future__ import annotations

import importlib
import importlib.resources
import sys
from pathlib import Path

TOOLS = {
    "collect": ("mrcom_lightning.data.cli", "collect_main"),
    "adapt": ("mrcom_lightning.adaptation.cli", "adapt_main"),
    "compare": ("mrcom_lightning.compare", "compare_main"),
    "sweep": ("mrcom_lightning.sweep", "sweep_main"),
    "study": ("mrcom_lightning.study", "study_main"),
}
USAGE = """usage: mrcom {fit,validate,test,predict,collect,adapt,compare,sweep,study} [options]

  fit        train the world model (collects the dataset if it is missing)
  validate   validation metrics of a checkpoint
  test       in- and out-of-distribution prediction errors (and adaptation scores) of a checkpoint
  predict    predictions of a checkpoint
  collect    collect behaviour episodes (resumable)
  adapt      adapt a trained world model to target scenarios, against plain SAC
  compare    MLflow runs as the paper's tables and plots
  sweep      a grid of config variants x seeds, fitted and tested
  study      the generalisation study: every variant x seed on one dataset, ID and OOD-kind tables

`mrcom SUBCOMMAND --help` lists every option. A `--config` file is read from the working
directory if it is there, else from the configs shipped with the package (`configs/quick.yaml`).
`--domains_module MODULE` (any subcommand, repeatable) imports a module that registers domains of
your own; installed plugins (entry point group `mrcom.domains`) need no option. See docs/extending.md."""
DOMAINS_OPTION = "--domains_module"

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def resolve_configs(argv: list[str]) -> list[str]:
    """`argv` with each `--config PATH` (or `--config=PATH`) pointing at a file that exists.

    PATH is kept when it exists relative to the working directory; otherwise it names the config
    of that path among the ones shipped with the package (`mrcom_lightning/configs`, the
    repository's `configs/` folder), with or without the leading `configs/`. A config found in
    neither place ends the command with one line saying where it looked. Values that do not end
    in .yaml/.yml/.json (inline YAML) are left to the parser.
    """
    resolved = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            prefix, path = "--config=", arg.removeprefix("--config=")
        elif i > 0 and argv[i - 1] == "--config":
            prefix, path = "", arg
        else:
            continue
        given = Path(path)
        if given.exists() or given.suffix not in CONFIG_SUFFIXES:
            continue
        packaged = importlib.resources.files("mrcom_lightning.configs")
        parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
        if not given.is_absolute() and parts and packaged.joinpath(*parts).is_file():
            resolved[i] = prefix + str(packaged.joinpath(*parts))
            continue
        print(f"mrcom: config file {path} not found in the working directory ({Path.cwd()}) "
              f"nor among the packaged configs ({packaged})", file=sys.stderr)
        raise SystemExit(2)
    return resolved


def take_domains_modules(argv: list[str]) -> tuple[list[str], list[str]]:
    """`argv` without its `--domains_module MODULE` (or `--domains_module=MODULE`) options, and the
    modules they name."""
    rest, modules = [], []
    args = iter(argv)
    for arg in args:
        if arg == DOMAINS_OPTION:
            module = next(args, None)
            if module is None or module.startswith("-"):
                print(f"mrcom: {DOMAINS_OPTION} needs a module name (e.g. {DOMAINS_OPTION} my_pkg.domains)", file=sys.stderr)
                raise SystemExit(2)
            modules.append(module)
        elif arg.startswith(DOMAINS_OPTION + "="):
            modules.append(arg.removeprefix(DOMAINS_OPTION + "="))
        else:
            rest.append(arg)
    return rest, modules


def load_domains_modules(modules: list[str]) -> None:
    """Registers the domains of `modules` here and in every child process; a module that cannot be
    imported, or whose domain fails its check, ends the command with one line saying so."""
    from mrcom_lightning.scenarios.plugins import add_domains_modules

    try:
        add_domains_modules(modules)
    except (ImportError, ValueError) as err:
        print(f"mrcom: {DOMAINS_OPTION}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    argv, modules = take_domains_modules(list(sys.argv[1:] if argv is None else argv))
    if modules:
        load_domains_modules(modules)
    argv = resolve_configs(argv)
    if argv and argv[0] in TOOLS:
        module, function = TOOLS[argv[0]]
        return getattr(importlib.import_module(module), function)(argv[1:])
    if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        print(USAGE)
        return
    from mrcom_lightning.lightning_cli import run

    run(argv)


if __name__ == "__main__":
    main()

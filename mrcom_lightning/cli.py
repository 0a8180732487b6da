"""`mrcom`: one command for the whole workflow.

`fit`, `validate`, `test` and `predict` are the LightningCLI of the world model; `collect`,
`adapt`, `compare` and `sweep` are tools with jsonargparse command lines of their own. Each is
imported only when asked for, so `mrcom collect` (and the processes it spawns) never pay for
importing Lightning.
"""

from __future__ import annotations

import importlib
import sys

TOOLS = {
    "collect": ("mrcom_lightning.data.cli", "collect_main"),
    "adapt": ("mrcom_lightning.adaptation.cli", "adapt_main"),
    "compare": ("mrcom_lightning.compare", "compare_main"),
    "sweep": ("mrcom_lightning.sweep", "sweep_main"),
}
USAGE = """usage: mrcom {fit,validate,test,predict,collect,adapt,compare,sweep} [options]

  fit        train the world model (collects the dataset if it is missing)
  validate   validation metrics of a checkpoint
  test       in- and out-of-distribution prediction errors (and adaptation scores) of a checkpoint
  predict    predictions of a checkpoint
  collect    collect behaviour episodes (resumable)
  adapt      adapt a trained world model to target scenarios, against plain SAC
  compare    MLflow runs as the paper's tables and plots
  sweep      a grid of config variants x seeds, fitted and tested

`mrcom SUBCOMMAND --help` lists every option."""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
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

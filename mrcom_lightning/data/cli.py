"""`mrcom collect`: the collection tool's command line, in jsonargparse style like the rest of `mrcom`."""

from __future__ import annotations

import sys

from jsonargparse import ActionConfigFile, ArgumentParser

from mrcom_lightning.data.collect import DatasetConfig, collect, dataset_scores, format_scores


def collect_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="mrcom collect",
        description="Collect behaviour episodes for a meta-scenario set (resumable: re-run to finish).",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with the options below")
    parser.add_class_arguments(DatasetConfig, "dataset", help="what to collect and where")
    parser.add_argument("--workers", type=int, default=1, help="parallel collection processes")
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar")
    return parser


def collect_main(argv: list[str]) -> None:
    parser = collect_parser()
    config = parser.parse_args(argv)
    if config.workers < 1:
        parser.error(f"workers must be >= 1, got {config.workers}")
    try:
        dataset = parser.instantiate(config).dataset
    except ValueError as err:  # a value the types allow but the settings reject
        parser.error(str(err))
    try:
        root = collect(dataset, workers=config.workers, progress=config.progress)
    except (ValueError, FileNotFoundError) as err:  # settings the dataset on disk or the shipped agents refuse
        print(f"mrcom collect: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_scores(dataset_scores(root)))
    print(f"dataset complete: {root}")

"""The multi-scenario LightningDataModule and its streams (DESIGN.md §3)."""

from datamodules.multi_scenario import MultiScenarioDataModule
from datamodules.streams import ResumableDataLoader, SplitEpisodes, TrainStream, WindowSet

__all__ = ["MultiScenarioDataModule", "ResumableDataLoader", "SplitEpisodes", "TrainStream", "WindowSet"]

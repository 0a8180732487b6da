"""The multi-scenario LightningDataModule and its streams (DESIGN.md §3)."""

from mrcom_lightning.datamodules.multi_scenario import MultiScenarioDataModule
from mrcom_lightning.datamodules.streams import ResumableDataLoader, SplitEpisodes, TrainStream, WindowSet

__all__ = ["MultiScenarioDataModule", "ResumableDataLoader", "SplitEpisodes", "TrainStream", "WindowSet"]

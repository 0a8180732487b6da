"""The multi-scenario LightningDataModule and its streams (DESIGN.md §3)."""

from mrcom_lightning.datamodules.meta_episodes import join_episodes, meta_episode_batch
from mrcom_lightning.datamodules.multi_scenario import MultiScenarioDataModule
from mrcom_lightning.datamodules.streams import ResumableDataLoader, SplitEpisodes, TrainStream, WindowSet

__all__ = ["MultiScenarioDataModule", "join_episodes", "meta_episode_batch", "ResumableDataLoader", "SplitEpisodes", "TrainStream", "WindowSet"]

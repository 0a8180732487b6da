"""Behaviour data: the episode store and its collection (DESIGN.md §3)."""

from mrcom_lightning.data.episodes import (
    POLICIES,
    CorruptEpisodeError,
    Episode,
    EpisodeInfo,
    EpisodeStore,
)

__all__ = ["POLICIES", "CorruptEpisodeError", "Episode", "EpisodeInfo", "EpisodeStore"]

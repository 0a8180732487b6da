"""Scenario adaptation: policy learning in imagination (Algorithm 2, DESIGN.md §5)."""

from mrcom_lightning.adaptation.history import RealHistory
from mrcom_lightning.adaptation.imagination import imagine
from mrcom_lightning.adaptation.loop import AdaptationResult, adapt, score_of
from mrcom_lightning.adaptation.settings import (
    AdaptationConfig,
    FineTuneSettings,
    ReplaySettings,
    RolloutSettings,
    SafeguardSettings,
)
from mrcom_lightning.adaptation.targets import resolve_targets

__all__ = [
    "AdaptationConfig",
    "AdaptationResult",
    "FineTuneSettings",
    "ReplaySettings",
    "RolloutSettings",
    "SafeguardSettings",
    "RealHistory",
    "adapt",
    "imagine",
    "resolve_targets",
    "score_of",
]

"""Scenario adaptation: policy learning in imagination (Algorithm 2, DESIGN.md §5)."""

from mrcom_lightning.adaptation.history import RealHistory
from mrcom_lightning.adaptation.imagination import imagine
from mrcom_lightning.adaptation.loop import AdaptationConfig, AdaptationResult, adapt, score_of
from mrcom_lightning.adaptation.targets import resolve_targets

__all__ = [
    "AdaptationConfig",
    "AdaptationResult",
    "RealHistory",
    "adapt",
    "imagine",
    "resolve_targets",
    "score_of",
]

"""Lightning callbacks of mrcom-lightning."""

from mrcom_lightning.callbacks.adaptation import ScenarioAdaptation

__all__ = ["ScenarioAdaptation"]

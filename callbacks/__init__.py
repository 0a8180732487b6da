"""Lightning callbacks of mrcom-lightning."""

from callbacks.adaptation import ScenarioAdaptation

__all__ = ["ScenarioAdaptation"]

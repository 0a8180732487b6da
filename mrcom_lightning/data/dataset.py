"""The dataset's settings: which behaviour data to collect for a meta-scenario set, and where."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

from mrcom_lightning.agents import SACConfig
from mrcom_lightning.scenarios import MetaScenarioSet


@dataclasses.dataclass
class DatasetConfig:
    """Which behaviour data to collect, and where.

    Attributes:
        root: dataset directory.
        scenarios: the meta-scenario set whose train, test_id and test_ood scenarios are collected.
        behaviour: `random`, or `sac` (yields the `expert`, `medium` and `mix` policies).
        episodes_per_scenario: episodes per training scenario and policy.
        test_episodes_per_scenario: episodes per validation and test scenario (ID and OOD) and policy.
        episode_steps: steps per episode (dm_control's default is 1000).
        train_agents: behaviour `sac`: train the behaviour agents here (`sac_steps`, `sac`) instead of
            using the agents shipped with the package, which were trained for the scenario set of
            `configs/multi.yaml` (a dataset with other scenario settings is refused without this).
        sac_steps: environment steps of SAC training per domain (with `train_agents`).
        sac: SAC settings of the behaviour agents (with `train_agents`).
        seed: seeds every episode and agent.
    """

    root: str = "data/multi"
    scenarios: MetaScenarioSet = dataclasses.field(default_factory=MetaScenarioSet)
    behaviour: Literal["random", "sac"] = "random"
    episodes_per_scenario: int = 4
    test_episodes_per_scenario: int = 2
    episode_steps: int = 500
    train_agents: bool = False
    sac_steps: int = 100_000
    sac: SACConfig = dataclasses.field(default_factory=SACConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("episodes_per_scenario", "test_episodes_per_scenario", "episode_steps", "sac_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def policies(self) -> tuple[str, ...]:
        return ("random",) if self.behaviour == "random" else ("expert", "medium", "mix")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

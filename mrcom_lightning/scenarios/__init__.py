"""The meta-scenario suite (DESIGN.md §2): specs, domains, environments and seeded scenario sets."""

from mrcom_lightning.scenarios.domains import DOMAINS, Domain, get_domain
from mrcom_lightning.scenarios.env import ScenarioEnv, make_env
from mrcom_lightning.scenarios.meta_set import SPLITS, TEST_SPLITS, MetaScenarioSet
from mrcom_lightning.scenarios.observation import observed_dim
from mrcom_lightning.scenarios.spec import OBS_FNS, ScenarioSpec

__all__ = [
    "DOMAINS",
    "Domain",
    "MetaScenarioSet",
    "OBS_FNS",
    "SPLITS",
    "TEST_SPLITS",
    "ScenarioEnv",
    "ScenarioSpec",
    "get_domain",
    "make_env",
    "observed_dim",
]

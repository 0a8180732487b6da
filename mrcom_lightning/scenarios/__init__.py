"""The meta-scenario suite (DESIGN.md §2): specs, domains, environments and seeded scenario sets."""

from mrcom_lightning.scenarios.domains import DOMAINS, Domain, draw_key, get_domain
from mrcom_lightning.scenarios.env import ScenarioEnv, make_env
from mrcom_lightning.scenarios.meta_set import SPLITS, TEST_SPLITS, MetaScenarioSet
from mrcom_lightning.scenarios.observation import observed_dim
from mrcom_lightning.scenarios.spec import OBS_FNS, ScenarioSpec
from mrcom_lightning.scenarios.plugins import check_domain, load_plugins, register_domain

__all__ = [
    "DOMAINS",
    "Domain",
    "MetaScenarioSet",
    "OBS_FNS",
    "SPLITS",
    "TEST_SPLITS",
    "ScenarioEnv",
    "ScenarioSpec",
    "check_domain",
    "draw_key",
    "get_domain",
    "load_plugins",
    "make_env",
    "observed_dim",
    "register_domain",
]

# Every process that reads the registry imports this package first: the domains of installed
# plugins and of MRCOM_DOMAINS_MODULES are registered here (plugins.py).
load_plugins()

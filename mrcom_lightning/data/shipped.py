"""Behaviour agents shipped with the package, trained for the main job's scenario set.

Experts of the main job's scenarios (`configs/multi.yaml`) take SAC hours of training on a
2-core CPU, far beyond the job's half hour, so the package carries them: for each domain a
`summary.json` (the settings they were trained for, their training log, every snapshot's
returns on every training scenario, and the selection) and the policy files it names
(`SAC.policy_checkpoint()`, actor weights only, read weights-only). `mrcom collect` (and
`mrcom fit`) use them unless `data.dataset.train_agents` is true; a dataset whose settings
differ from theirs is refused, naming the setting. They are produced by
`python benchmarks/train_behaviour_agents.py` (see benchmarks/LOG.md, "Behaviour agents").
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mrcom_lightning.data.behaviour import SUMMARY, agent_folder, agent_settings, write_json
from mrcom_lightning.data.dataset import DatasetConfig
from mrcom_lightning.data.episodes import atomic_write
from mrcom_lightning.scenarios import MetaScenarioSet

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "behaviour_agents"


def shipped_folder(domain: str) -> Path:
    return SHIPPED_DIR / domain


def dataset_settings(path: str | Path) -> DatasetConfig:
    """The `data.dataset` section of a fit config such as `configs/multi.yaml`, without its SAC settings."""
    section = yaml.safe_load(Path(path).read_text())["data"]["dataset"]
    scenarios = MetaScenarioSet(**section.get("scenarios", {}))
    return DatasetConfig(**{k: v for k, v in section.items() if k not in ("sac", "scenarios")}, scenarios=scenarios)


def check_settings(found: dict, config: DatasetConfig, domain: str, where: Path) -> None:
    """Raises a ValueError naming the first setting in which `found` differs from `config`'s for `domain`."""
    for key, wanted in agent_settings(config, domain).items():
        if found.get(key) != wanted:
            raise ValueError(
                f"the shipped {domain} behaviour agent ({where}) was trained for data.dataset.{key}="
                f"{found.get(key)!r}, this dataset has {wanted!r}: set data.dataset.train_agents true "
                "to train agents for these settings (experts take hours on a CPU; see benchmarks/LOG.md)"
            )


def referenced_files(summary: dict) -> list[str]:
    """The snapshot files a summary's selection names (what a dataset needs of a shipped agent)."""
    picks = [p["file"] for scenario in summary["scenarios"].values() for p in scenario.values()]
    picks += [p["file"] for p in summary["held_out"].values()] + summary["mix_snapshots"]
    return sorted(set(picks))


def shipped_summary(config: DatasetConfig, domain: str) -> dict:
    """The summary of the shipped agent of `domain`, once its settings are checked against `config`'s."""
    source = shipped_folder(domain)
    if not (source / SUMMARY).is_file():
        raise FileNotFoundError(
            f"no behaviour agent for domain {domain!r} is shipped (looked in {source}): "
            "set data.dataset.train_agents true to train one"
        )
    summary = json.loads((source / SUMMARY).read_text())
    check_settings(summary["settings"], config, domain, source)
    return summary


def install_shipped(config: DatasetConfig, domain: str) -> dict:
    """Copies the shipped agent of `domain` into the dataset (after checking its settings); returns its summary."""
    folder = agent_folder(config.root, domain)
    if (folder / SUMMARY).exists():  # written last: the copy is complete
        return json.loads((folder / SUMMARY).read_text())
    source = shipped_folder(domain)
    summary = shipped_summary(config, domain)
    for name in referenced_files(summary):
        payload = (source / name).read_bytes()
        atomic_write(folder / name, lambda f: f.write(payload))
    summary["source"] = "shipped"
    write_json(folder / SUMMARY, summary)
    return summary

"""The episode store: one file per episode, atomic writes, an index read from the layout.

Layout under the dataset root::

    <scenario id>/spec.json                         the scenario spec
    <scenario id>/<policy>/ep-<index>-T<steps>.npz  one episode

The index of a dataset (which scenarios, which policies, how many steps each) comes from
directory and file names alone, so listing a dataset opens no episode. An episode file is
written to a temporary name and renamed, so a killed writer never leaves a half episode
under a real name; leftovers are removed by `EpisodeStore.clean()`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from mrcom_lightning.scenarios import ScenarioSpec

# Behaviour policies from best to worst: prompts use the first one a scenario has.
POLICIES = ("expert", "medium", "mix", "random")
_EPISODE = re.compile(r"^ep-(\d{6})-T(\d+)\.npz$")
_TMP_SUFFIX = ".partial"


class CorruptEpisodeError(RuntimeError):
    """An episode file that cannot be read back whole."""


@dataclasses.dataclass(frozen=True)
class Episode:
    """One episode: `obs [T+1, obs_dim]`, `action [T, act_dim]`, `reward [T]`, `terminal [T]`."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminal: np.ndarray
    spec: ScenarioSpec
    policy: str
    seed: int

    def __post_init__(self) -> None:
        steps = len(self.action)
        if self.obs.shape[0] != steps + 1 or self.reward.shape != (steps,) or self.terminal.shape != (steps,):
            raise ValueError(
                f"episode arrays disagree: obs {self.obs.shape}, action {self.action.shape}, "
                f"reward {self.reward.shape}, terminal {self.terminal.shape} (want T+1, T, T, T)"
            )
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {list(POLICIES)}, got {self.policy!r}")

    @property
    def steps(self) -> int:
        return len(self.action)

    @property
    def episode_return(self) -> float:
        return float(self.reward.sum())


@dataclasses.dataclass(frozen=True)
class EpisodeInfo:
    """An index entry: where an episode lies and what it is, read from its path only."""

    path: Path
    scenario_id: str
    policy: str
    index: int
    steps: int


def atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EpisodeStore:
    """Reads and writes the episodes of one dataset directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # --- writing -------------------------------------------------------------------------
    def write_spec(self, spec: ScenarioSpec) -> None:
        path = self.root / spec.id / "spec.json"
        if not path.exists():
            payload = json.dumps(spec.to_dict(), indent=1, sort_keys=True).encode()
            atomic_write(path, lambda f: f.write(payload))

    def episode_path(self, spec: ScenarioSpec, policy: str, index: int, steps: int) -> Path:
        return self.root / spec.id / policy / f"ep-{index:06d}-T{steps}.npz"

    def write(self, episode: Episode, index: int) -> Path:
        """Writes `episode` as number `index` of its scenario and policy, atomically."""
        self.write_spec(episode.spec)
        path = self.episode_path(episode.spec, episode.policy, index, episode.steps)
        meta = json.dumps(
            {"spec": episode.spec.to_dict(), "policy": episode.policy, "seed": int(episode.seed), "index": index}
        )
        arrays = dict(
            obs=episode.obs.astype(np.float32),
            action=episode.action.astype(np.float32),
            reward=episode.reward.astype(np.float32),
            terminal=episode.terminal.astype(bool),
            meta=np.array(meta),
        )
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    def clean(self) -> int:
        """Removes temporary files left by killed writers; returns how many."""
        leftovers = list(self.root.rglob(f"*{_TMP_SUFFIX}")) if self.root.exists() else []
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    # --- the index -----------------------------------------------------------------------
    def specs(self) -> dict[str, ScenarioSpec]:
        """Scenario id -> spec, for every scenario in the dataset."""
        specs = {}
        for path in sorted(self.root.glob("*/spec.json")):
            try:
                specs[path.parent.name] = ScenarioSpec.from_dict(json.loads(path.read_text()))
            except (json.JSONDecodeError, TypeError, ValueError) as err:
                raise CorruptEpisodeError(f"corrupt scenario file {path}: {err}") from err
        return specs

    def index(self, scenario_id: str | None = None, policy: str | None = None) -> list[EpisodeInfo]:
        """The episodes of the dataset, optionally of one scenario and/or policy, in order."""
        infos = []
        scenario_dirs = [self.root / scenario_id] if scenario_id else sorted(p.parent for p in self.root.glob("*/spec.json"))
        for scenario_dir in scenario_dirs:
            for policy_name in POLICIES if policy is None else (policy,):
                folder = scenario_dir / policy_name
                if not folder.is_dir():
                    continue
                for name in sorted(os.listdir(folder)):
                    match = _EPISODE.match(name)
                    if match:
                        infos.append(
                            EpisodeInfo(folder / name, scenario_dir.name, policy_name, int(match[1]), int(match[2]))
                        )
        return infos

    def count(self, spec: ScenarioSpec, policy: str) -> int:
        return len(self.index(spec.id, policy))

    def existing_indices(self, spec: ScenarioSpec, policy: str) -> set[int]:
        return {info.index for info in self.index(spec.id, policy)}

    # --- reading -------------------------------------------------------------------------
    @staticmethod
    def read(path: str | os.PathLike) -> Episode:
        """Reads one episode; a corrupt or truncated file raises `CorruptEpisodeError` naming it."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                return Episode(
                    obs=data["obs"],
                    action=data["action"],
                    reward=data["reward"],
                    terminal=data["terminal"],
                    spec=ScenarioSpec.from_dict(meta["spec"]),
                    policy=meta["policy"],
                    seed=meta["seed"],
                )
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
            raise CorruptEpisodeError(
                f"corrupt or truncated episode file {path} ({type(err).__name__}: {err}); "
                "delete it and re-run `mrcom collect` to replace it"
            ) from err

    def read_all(self, infos: Iterable[EpisodeInfo]) -> list[Episode]:
        return [self.read(info.path) for info in infos]

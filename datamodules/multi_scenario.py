"""The multi-scenario datamodule: windows with prompts across domains (DESIGN.md §3, §4).

The batch is the contract with the model, defined in `mrcom_lightning.batch`: domains mixed
in one batch, observations and actions zero-padded to the largest sizes, a domain id per row,
and a prompt per window cut from another episode of the row's own scenario, by the best
policy the dataset has for it. A window starts at s uniform in [0, steps - T].

Training draws an infinite stream (`streams.TrainStream`): each batch has B // n_domains rows
of every domain (the remainder rotates through the domains), scenarios uniform within a
domain, then episodes, then starts; every (rank, worker) pair draws its own seeded stream, and
the loader's position is saved in checkpoints. Validation and test iterate fixed,
non-overlapping windows of every episode of their scenarios, each with a seeded prompt.
"""

from __future__ import annotations

from typing import Literal, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from mrcom_lightning.agents import SACConfig
from mrcom_lightning.data.collect import (
    DatasetConfig,
    check_manifest,
    collect,
    dataset_scores,
    format_scores,
    is_complete,
)
from mrcom_lightning.scenarios import DOMAINS, SPLITS, TEST_SPLITS, MetaScenarioSet, ScenarioSpec, observed_dim

from mrcom_lightning.datamodules.streams import ResumableDataLoader, SplitEpisodes, TrainStream, WindowSet, init_worker

# Checkpoints carry these settings (`datamodule_hyper_parameters`); resuming a fit loads them
# with torch's weights-only unpickler, which rebuilds only classes it was told are safe.
torch.serialization.add_safe_globals([DatasetConfig, MetaScenarioSet, SACConfig])

Behaviour = Literal["expert", "medium", "mix", "random"]
_STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": TEST_SPLITS,
    "predict": ("test_id",),
}


class MultiScenarioDataModule(L.LightningDataModule):
    """Windows of behaviour episodes from every scenario of a meta-scenario set, each with a prompt.

    The training stream is infinite and split by (global rank, worker) here, since Lightning
    gives an IterableDataset no DistributedSampler: train with `max_steps`, an integer
    `val_check_interval` and `check_val_every_n_epoch=None`. Its position is saved in
    checkpoints and restored on resume, with Lightning's caveats (see `ResumableDataLoader`).

    Args:
        dataset: the behaviour dataset (collected by `prepare_data` when missing or incomplete).
        behaviour: train only on this policy's episodes; null trains on every policy the dataset
            has. Validation and test always use every policy, so runs are scored on the same windows.
        sequence_length: transitions per training window (T).
        prompt_length: transitions per prompt (L), cut from the scenario's best available policy;
            0 gives empty prompts.
        batch_size: windows per batch, on every device.
        num_workers: DataLoader worker processes per device (0 loads in the main process).
        collect_workers: processes that collect missing episodes in `prepare_data`.
        seed: seeds the training stream and the prompts of validation and test windows.
        meta_episodes: 0 or 1: training windows of one episode; n >= 2: MAMBA's meta-episodes, each
            training sequence cut from n joined episodes of one scenario so that it spans an episode
            boundary, with the `reset` flag at each episode's first observation (`meta_episodes.py`).
            Validation and test windows stay single-episode, the same for every model.
    """

    def __init__(
        self,
        dataset: DatasetConfig = DatasetConfig(),
        behaviour: Optional[Behaviour] = None,
        sequence_length: int = 64,
        prompt_length: int = 20,
        batch_size: int = 32,
        num_workers: int = 0,
        collect_workers: int = 1,
        seed: int = 0,
        meta_episodes: int = 0,
    ):
        super().__init__()
        for name, value, low in (
            ("sequence_length", sequence_length, 1),
            ("prompt_length", prompt_length, 0),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("collect_workers", collect_workers, 1),
            ("meta_episodes", meta_episodes, 0),
        ):
            if value < low:
                raise ValueError(f"data.{name} must be {'> 0' if low else '>= 0'}, got {value!r}")
        if behaviour is not None and behaviour not in dataset.policies:
            raise ValueError(
                f"data.behaviour must be null or one of the dataset's policies {list(dataset.policies)} "
                f"(data.dataset.behaviour={dataset.behaviour!r}), got {behaviour!r}"
            )
        self.save_hyperparameters()
        self._train_scenarios = dataset.scenarios.draw("train")
        self._episodes: dict[str, SplitEpisodes] = {}

    # --- what the model is built from (no data needed) ------------------------------------
    @property
    def domains(self) -> list[str]:
        """The configured domains, sorted; a domain's id is its position here."""
        return sorted(self.hparams.dataset.scenarios.domains)

    @property
    def domain_dims(self) -> dict[str, tuple[int, int]]:
        """Domain -> (observed observation size, including the obs_fn, action size), in domain-id order."""
        obs_fn = self.hparams.dataset.scenarios.obs_fn
        return {d: (observed_dim(obs_fn, DOMAINS[d].obs_dim), DOMAINS[d].act_dim) for d in self.domains}

    @property
    def train_scenarios(self) -> list[ScenarioSpec]:
        """The training scenarios; a scenario's id is its position here."""
        return list(self._train_scenarios)

    @property
    def num_scenarios(self) -> int:
        return len(self._train_scenarios)

    # --- Lightning hooks -----------------------------------------------------------------
    def prepare_data(self) -> None:
        dataset = self.hparams.dataset
        if is_complete(dataset.root):
            check_manifest(dataset)  # refuses a dataset collected with other settings, naming them
        else:
            collect(dataset, workers=self.hparams.collect_workers)
            if is_complete(dataset.root):
                print(format_scores(dataset_scores(dataset.root)))  # what the data is, at a glance

    def setup(self, stage: Optional[str] = None) -> None:
        for split in _STAGE_SPLITS.get(stage, SPLITS):
            self.episodes(split)

    def episodes(self, split: str) -> SplitEpisodes:
        """The episodes of `split` in memory (read on first use)."""
        if split not in self._episodes:
            self._episodes[split] = self._load(split)
        return self._episodes[split]

    def _load(self, split: str) -> SplitEpisodes:
        hp = self.hparams
        specs = hp.dataset.scenarios.draw(split)
        if split == "train" and not specs:
            raise ValueError("data.dataset.scenarios.num_train must be > 0 to train, got 0")
        return SplitEpisodes.load(
            root=hp.dataset.root,
            split=split,
            specs=specs,
            labels=list(range(len(specs))) if split == "train" else [-1] * len(specs),
            domains=self.domains,
            domain_dims=list(self.domain_dims.values()),
            window_policy=hp.behaviour if split == "train" else None,
            sequence_length=hp.sequence_length,
            prompt_length=hp.prompt_length,
        )

    def observation_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of every observation dim over each domain's training episodes, `[domains, O_max]`
        in domain-id order (0 and 1 on padding). Every rank computes the same from the same files."""
        train = self.episodes("train")
        mean = np.zeros((len(train.domain_dims), train.obs_max), np.float64)
        std = np.ones_like(mean)
        for d, scenarios in enumerate(train.domain_scenarios):
            episodes = sorted({int(e) for s in scenarios for e in train.windows[s]})
            obs = np.concatenate([train.obs[e] for e in episodes])[:, : train.domain_dims[d][0]]
            mean[d, : obs.shape[1]] = obs.mean(0)
            std[d, : obs.shape[1]] = obs.std(0)
        return mean.astype(np.float32), std.astype(np.float32)

    def train_stream(self, rank: int = 0, world_size: int = 1) -> TrainStream:
        """The training stream of one rank (the loader's dataset)."""
        hp = self.hparams
        return TrainStream(
            self.episodes("train"), hp.batch_size, hp.sequence_length, hp.prompt_length, hp.seed, rank, world_size,
            hp.meta_episodes,
        )

    def train_dataloader(self) -> ResumableDataLoader:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return ResumableDataLoader(self.train_stream(rank, world_size), **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    @property
    def test_splits(self) -> tuple[str, ...]:
        """The test splits, one dataloader each in this order: `test_id`, `test_ood`, and the
        single-kind OOD splits the scenario set draws (`num_test_ood_dynamics`, `..._objective`)."""
        scenarios = self.hparams.dataset.scenarios
        return tuple(s for s in TEST_SPLITS if s in ("test_id", "test_ood") or getattr(scenarios, f"num_{s}") > 0)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(split) for split in self.test_splits]

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test_id")

    def _eval_loader(self, split: str) -> DataLoader:
        hp = self.hparams
        windows = WindowSet(
            self.episodes(split), hp.sequence_length, hp.prompt_length, seed=[hp.seed, SPLITS.index(split)]
        )
        return DataLoader(
            windows, batch_size=hp.batch_size, shuffle=False, collate_fn=windows.collate, **self._loader_kwargs()
        )

    def _loader_kwargs(self) -> dict:
        workers = self.hparams.num_workers
        return dict(
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            worker_init_fn=init_worker if workers > 0 else None,
        )

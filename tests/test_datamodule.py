"""The multi-scenario datamodule: batch contract, per-rank/worker streams, prompts, resume, errors, DDP."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
import numpy as np
import pytest
import torch

from mrcom_lightning.batch import Batch
from mrcom_lightning.datamodules import MultiScenarioDataModule, SplitEpisodes
from mrcom_lightning.data import CorruptEpisodeError, Episode, EpisodeStore
from mrcom_lightning.data.collect import DatasetConfig
from mrcom_lightning.distributed import exit_cleanly
from mrcom_lightning.scenarios import SPLITS, MetaScenarioSet

torch.set_num_threads(1)

SCENARIOS = MetaScenarioSet(domains=("hopper", "cheetah"), num_train=2, num_val=1, num_test_id=1, num_test_ood=1)
STEPS = 60
SETTINGS = dict(sequence_length=16, prompt_length=5, batch_size=5)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> DatasetConfig:
    """A random-behaviour dataset, collected once by the datamodule's own `prepare_data`."""
    config = DatasetConfig(
        root=str(tmp_path_factory.mktemp("data") / "random"),
        scenarios=SCENARIOS,
        behaviour="random",
        episodes_per_scenario=2,
        test_episodes_per_scenario=2,
        episode_steps=STEPS,
    )
    MultiScenarioDataModule(config, **SETTINGS).prepare_data()
    return config


@pytest.fixture(scope="session")
def two_policies(dataset, tmp_path_factory) -> DatasetConfig:
    """The dataset plus two synthetic `expert` episodes per scenario (obs offset by 100)."""
    config = DatasetConfig(**{**vars(dataset), "root": str(tmp_path_factory.mktemp("data") / "two")})
    shutil.copytree(dataset.root, config.root)
    store, rng = EpisodeStore(config.root), np.random.default_rng(0)
    for split in SPLITS:
        for spec in SCENARIOS.draw(split):
            template = store.read(store.index(spec.id)[0].path)
            for index in range(2):
                obs = 100 + rng.normal(size=template.obs.shape).astype(np.float32)
                action = rng.uniform(-1, 1, template.action.shape).astype(np.float32)
                reward = rng.uniform(size=STEPS).astype(np.float32)
                store.write(Episode(obs, action, reward, np.zeros(STEPS, bool), spec, "expert", index), index)
    return config


def make(config: DatasetConfig, **kwargs) -> MultiScenarioDataModule:
    return MultiScenarioDataModule(config, **{**SETTINGS, **kwargs})


def take(loader, n: int) -> list[dict]:
    iterator = iter(loader)
    return [next(iterator) for _ in range(n)]


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def locate(root: str, sequence: np.ndarray) -> set[tuple[str, str]]:
    """(scenario id, policy) of every episode under `root` whose obs contain `sequence` contiguously."""
    found = set()
    for info in EpisodeStore(root).index():
        obs = EpisodeStore.read(info.path).obs
        if obs.shape[1] != sequence.shape[1]:
            continue
        for t in np.flatnonzero((obs == sequence[0]).all(1)):
            if t + len(sequence) <= len(obs) and np.array_equal(obs[t : t + len(sequence)], sequence):
                found.add((info.scenario_id, info.policy))
    return found


def test_properties_need_no_data(tmp_path):
    scenarios = MetaScenarioSet(domains=("walker", "hopper"), obs_fn="add_dims", num_train=3)
    dm = MultiScenarioDataModule(DatasetConfig(root=str(tmp_path / "absent"), scenarios=scenarios))
    assert dm.domains == ["hopper", "walker"]
    assert dm.domain_dims == {"hopper": (15 + 2, 4), "walker": (24 + 3, 6)}
    assert dm.num_scenarios == 6 and dm.train_scenarios == scenarios.train
    assert dm.hparams.sequence_length == 64 and dm.hparams.dataset.scenarios == scenarios
    assert not (tmp_path / "absent").exists()


def test_batch_format_and_masks(dataset):
    dm = make(dataset)
    dm.setup("fit")
    store = EpisodeStore(dataset.root)
    for d, (o, a) in dm.domain_dims.items():  # the real data has the announced sizes
        spec = next(s for s in dm.train_scenarios if s.domain == d)
        episode = store.read(store.index(spec.id)[0].path)
        assert (episode.obs.shape[1], episode.action.shape[1]) == (o, a)
    B, T, Lp, O, A = 5, 16, 5, 17, 6
    shapes = dict(
        obs=(B, T + 1, O), action=(B, T, A), reward=(B, T), terminal=(B, T), domain=(B,), scenario=(B,),
        prompt_obs=(B, Lp, O), prompt_action=(B, Lp, A), prompt_reward=(B, Lp),
    )
    assert set(shapes) == set(Batch.__annotations__)  # the one batch contract
    dtypes = dict(terminal=torch.bool, domain=torch.int64, scenario=torch.int64)
    train = take(dm.train_dataloader(), 4)
    val = take(dm.val_dataloader(), 1)
    for batch in train + val:
        assert set(batch) == set(shapes)
        for key, shape in shapes.items():
            assert tuple(batch[key].shape) == shape, key
            assert batch[key].dtype == dtypes.get(key, torch.float32), key
        for row in range(B):
            o, a = list(dm.domain_dims.values())[int(batch["domain"][row])]
            for key, dim in (("obs", o), ("prompt_obs", o), ("action", a), ("prompt_action", a)):
                assert not batch[key][row, ..., dim:].any(), key
                assert batch[key][row, ..., :dim].abs().sum() > 0, key
    for batch in train:
        labels = batch["scenario"].tolist()
        assert all(dm.train_scenarios[k].domain == dm.domains[d] for k, d in zip(labels, batch["domain"].tolist()))
    assert (val[0]["scenario"] == -1).all()


def test_windows_and_prompts_come_from_the_rows_scenario(two_policies):
    dm = make(two_policies, behaviour="random")
    dm.setup("fit")
    ids = [spec.id for spec in dm.train_scenarios]
    for split, batch in (("train", next(iter(dm.train_dataloader()))), ("val", next(iter(dm.val_dataloader())))):
        for row in range(len(batch["obs"])):
            o = list(dm.domain_dims.values())[int(batch["domain"][row])][0]
            window = locate(two_policies.root, batch["obs"][row, :, :o].numpy())
            prompt = locate(two_policies.root, batch["prompt_obs"][row, :, :o].numpy())
            assert len(window) == 1 and len(prompt) == 1, (split, window, prompt)
            (window_scenario, window_policy), (prompt_scenario, prompt_policy) = window.pop(), prompt.pop()
            assert prompt_scenario == window_scenario and prompt_policy == "expert"
            if split == "train":  # behaviour="random" trains on random windows only
                assert window_policy == "random" and ids[int(batch["scenario"][row])] == window_scenario


def test_a_prompt_never_comes_from_the_windows_own_episode(two_policies):
    """With two expert episodes per scenario and every policy in training, windows cut from an
    expert episode get their prompt from the other one; validation's fixed windows too."""
    dm = make(two_policies)
    dm.setup("fit")
    train, val = dm.episodes("train"), dm.episodes("val")
    rows = np.concatenate([train.draw_rows(np.random.default_rng(i), np.arange(32) % 2, 16, 5) for i in range(20)])
    fixed = val.fixed_rows(np.random.default_rng(0), 16, 5)
    for split, r in ((train, rows), (val, fixed)):
        assert (r[:, 3] != r[:, 1]).all()
        experts = np.concatenate([p[rank == 0] for p, rank in zip(split.prompts, split.prompt_ranks)])
        expert_windows = np.isin(r[:, 1], experts)
        assert expert_windows.any() and (~expert_windows).any()  # both kinds of window were drawn


def test_a_single_prompt_episode_falls_back_to_the_next_policy(dataset, tmp_path):
    """One expert episode per scenario: random windows get it as their prompt, and the expert
    episode's own windows get a random episode's; one episode in all is refused."""
    root = tmp_path / "one_expert"
    shutil.copytree(dataset.root, root)
    store = EpisodeStore(root)
    for spec in SCENARIOS.draw("train"):
        template = store.read(store.index(spec.id)[0].path)
        store.write(dataclasses.replace(template, policy="expert"), 0)
    specs = SCENARIOS.draw("train")
    domains, dims = ["cheetah", "hopper"], [(17, 6), (15, 4)]
    split = SplitEpisodes.load(root, "train", specs, list(range(len(specs))), domains, dims, None, 16, 5)
    for k in range(len(specs)):
        expert = split.prompts[k][split.prompt_ranks[k] == 0]
        assert len(expert) == 1
        for e in split.windows[k]:
            pool = split.prompt_pool(k, int(e))
            assert int(e) not in pool.tolist() and len(pool)
            assert pool.tolist() == expert.tolist() or e == expert[0]
    lonely = tmp_path / "lonely"
    spec = specs[0]
    EpisodeStore(lonely).write(store.read(store.index(spec.id, "random")[0].path), 0)
    with pytest.raises(ValueError, match="a prompt must come from another episode"):
        SplitEpisodes.load(lonely, "train", [spec], [0], domains, dims, None, 16, 5)


def test_behaviour_none_trains_on_every_policy(two_policies):
    dm = make(two_policies, batch_size=32)
    stream = dm.train_stream()
    obs = torch.cat([stream.batch(0, i)["obs"] for i in range(4)])
    expert = (obs[:, 0, 0] > 50).float().mean()  # synthetic expert obs sit near 100
    assert 0.25 < expert < 0.75


def test_streams_differ_per_rank_and_worker_and_are_reproducible(dataset):
    def batches(rank: int, worker: int, n: int = 8) -> list[dict]:
        stream = make(dataset).train_stream(rank=rank, world_size=2)
        return [stream.batch(worker, index, num_workers=2) for index in range(n)]

    def keys(stream: list[dict]) -> set[bytes]:
        return {b["obs"].numpy().tobytes() for b in stream}

    streams = {(r, w): batches(r, w) for r in range(2) for w in range(2)}
    for (r, w), stream in streams.items():
        assert len(keys(stream)) == len(stream)
        assert same(stream, batches(r, w))  # a new construction gives the same stream
        for other, other_stream in streams.items():
            if other != (r, w):
                assert not keys(stream) & keys(other_stream), ((r, w), other)
    # A real DataLoader hands out worker 0's and worker 1's batches in turn.
    loaded = take(make(dataset, num_workers=2).train_dataloader(), 6)
    expected = [streams[0, j % 2][j // 2] for j in range(6)]
    assert same(loaded, expected)


def test_domain_balance(dataset):
    dm = make(dataset)
    stream = dm.train_stream()
    domains = torch.cat([stream.batch(0, i)["domain"] for i in range(200)])
    scenarios = torch.cat([stream.batch(0, i)["scenario"] for i in range(200)])
    assert domains.bincount().tolist() == [500, 500]  # 2 + 2 rows per batch, the fifth alternates
    for i in range(10):
        assert stream.batch(0, i)["domain"].bincount(minlength=2).min() >= 2
    per_scenario = scenarios.bincount(minlength=4)
    assert ((per_scenario - 250).abs() < 60).all(), per_scenario


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_the_stream(dataset, num_workers):
    first = make(dataset, num_workers=num_workers).train_dataloader()
    iterator = iter(first)
    [next(iterator) for _ in range(3)]
    state = first.state_dict()
    assert state == {"batches": 3}
    following = [next(iterator) for _ in range(4)]
    resumed = make(dataset, num_workers=num_workers).train_dataloader()
    resumed.load_state_dict(state)
    assert same(take(resumed, 4), following)
    # Iterating the same loader again continues too (persistent workers are restarted at the new start).
    assert same(take(first, 1), take(make(dataset, num_workers=num_workers).train_dataloader(), 8)[7:])


def test_validation_and_test_windows_are_fixed(dataset):
    dm = make(dataset, batch_size=4)
    dm.setup("validate")
    dm.setup("test")
    windows_per_episode = STEPS // 16
    assert len(dm.val_dataloader().dataset) == 2 * 1 * 2 * windows_per_episode
    assert same(list(dm.val_dataloader()), list(make(dataset, batch_size=4).val_dataloader()))
    test_id, test_ood = dm.test_dataloader()
    assert len(test_id.dataset) == len(test_ood.dataset) == 2 * 1 * 2 * windows_per_episode
    starts = [b["obs"] for b in test_id]
    assert not torch.equal(starts[0], starts[-1])


def test_prepare_data_collects_only_when_incomplete(dataset, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("mrcom_lightning.datamodules.multi_scenario.collect", lambda config, **kw: calls.append(config))
    make(dataset).prepare_data()
    assert calls == []  # complete: nothing to collect
    missing = DatasetConfig(**{**vars(dataset), "root": str(tmp_path / "missing")})
    make(missing).prepare_data()
    assert calls == [missing]


def test_prepare_data_refuses_a_complete_dataset_of_other_settings(dataset, tmp_path):
    moved = DatasetConfig(**{**vars(dataset), "root": str(tmp_path / "moved")})
    shutil.copytree(dataset.root, moved.root)
    make(moved).prepare_data()  # where it lies is not a setting
    other = DatasetConfig(**{**vars(moved), "episode_steps": STEPS + 1})
    with pytest.raises(ValueError, match="episode_steps differ"):
        make(other).prepare_data()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sequence_length", 0, "data.sequence_length must be > 0, got 0"),
        ("batch_size", -2, "data.batch_size must be > 0, got -2"),
        ("prompt_length", -1, "data.prompt_length must be >= 0, got -1"),
        ("num_workers", -1, "data.num_workers must be >= 0, got -1"),
        ("behaviour", "expert", "data.behaviour must be null or one of the dataset's policies"),
    ],
)
def test_bad_settings_name_the_key(dataset, key, value, message):
    with pytest.raises(ValueError, match=message):
        make(dataset, **{key: value})


def test_missing_domain_names_domain_and_directory(dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(dataset.root, root)
    for spec in SCENARIOS.draw("train"):
        if spec.domain == "hopper":
            shutil.rmtree(root / spec.id)
    dm = make(DatasetConfig(**{**vars(dataset), "root": str(root)}))
    with pytest.raises(ValueError, match=rf"domain 'hopper'.*{root}"):
        dm.setup("fit")


def test_sequence_longer_than_every_episode(dataset):
    with pytest.raises(ValueError, match=rf"sequence_length=61 .* domain 'cheetah' .*longest: {STEPS} steps"):
        make(dataset, sequence_length=61).setup("fit")


def test_corrupt_episode_names_the_file(dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(dataset.root, root)
    victim = EpisodeStore(root).index(SCENARIOS.train[1].id)[0].path
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(CorruptEpisodeError, match=str(victim)):
        make(DatasetConfig(**{**vars(dataset), "root": str(root)})).setup("fit")


class TinyModel(L.LightningModule):
    """A stand-in for the world model: a linear map of the masked observations."""

    def __init__(self, obs_dim: int, log_dir: str = ""):
        super().__init__()
        self.layer = torch.nn.Linear(obs_dim, 1)
        self.log_dir = log_dir
        self.seen: list[float] = []

    def setup(self, stage: str) -> None:
        exit_cleanly()  # as the world model does

    def loss(self, batch: dict) -> torch.Tensor:
        obs = batch["obs"]
        return (self.layer(obs).squeeze(-1)[:, 1:] - batch["reward"]).pow(2).mean()

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["obs"].sum().item())
        if self.trainer.world_size > 1:  # every rank must see its own batch
            sums = self.all_gather(batch["obs"].sum())
            assert sums.unique().numel() == self.trainer.world_size, sums
        return self.loss(batch)

    def validation_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("val/loss", loss, sync_dist=True)
        if self.log_dir:
            (Path(self.log_dir) / f"val-rank{self.global_rank}-step{self.global_step}-{batch_idx}").touch()
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def trainer(**kwargs) -> L.Trainer:
    settings = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )
    return L.Trainer(**{**settings, **kwargs})


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_fit_resume_continues_the_stream(dataset, tmp_path):
    """Lightning restores the loader's position: the resumed run sees no batch twice."""
    whole = TinyModel(17)
    trainer(max_steps=7).fit(whole, datamodule=make(dataset))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3)
    first = TinyModel(17)
    trainer(max_steps=3, callbacks=[checkpoint], enable_checkpointing=True).fit(first, datamodule=make(dataset))
    path = next(tmp_path.glob("*.ckpt"))
    from mrcom_lightning.checkpoints import load_checkpoint

    saved = load_checkpoint(path)  # as `mrcom` reads it: weights-only, with the project's allow-list
    assert saved["datamodule_hyper_parameters"]["sequence_length"] == 16
    resumed = TinyModel(17)
    trainer(max_steps=6).fit(resumed, datamodule=make(dataset), ckpt_path=path)
    assert first.seen == whole.seen[:3]
    # Lightning had fetched batch 3 ahead of the checkpoint, so the resumed run starts at batch 4.
    assert resumed.seen == whole.seen[4:7]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ddp_two_processes_train_and_validate(dataset, tmp_path, monkeypatch):
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))  # a fresh port for this run only
    fit = trainer(
        strategy="ddp_spawn", devices=2, max_steps=3, val_check_interval=2, limit_val_batches=2,
        check_val_every_n_epoch=None,
    )
    fit.fit(TinyModel(17, str(tmp_path)), datamodule=make(dataset))
    markers = sorted(p.name for p in tmp_path.iterdir())
    assert markers == [f"val-rank{r}-step2-{i}" for r in range(2) for i in range(2)], markers


def test_observation_statistics_reach_a_standardizing_model(dataset, tmp_path):
    from mrcom_lightning.models import WorldModelConfig
    from mrcom_lightning.module import MrCoM

    dm = make(dataset)
    dm.setup("fit")
    mean, std = dm.observation_statistics()
    train = dm.episodes("train")
    for d, (obs_dim, _) in enumerate(train.domain_dims):
        episodes = sorted({int(e) for s in train.domain_scenarios[d] for e in train.windows[s]})
        obs = np.concatenate([train.obs[e] for e in episodes])[:, :obs_dim]
        assert np.allclose(mean[d, :obs_dim], obs.mean(0), atol=1e-5)
        assert np.allclose(std[d, :obs_dim], obs.std(0), atol=1e-5)
        assert (mean[d, obs_dim:] == 0).all() and (std[d, obs_dim:] == 1).all()
    tiny = WorldModelConfig(embed_dim=16, hidden_dim=32, stochastic_dim=8, deterministic_dim=16, auxiliary_dim=4,
                            context_length=dm.hparams.prompt_length, heads=4, reward_bins=31, obs_normalization="standardize")
    model = MrCoM(world_model=tiny, domain_dims=dm.domain_dims, num_scenarios=dm.num_scenarios)
    trainer(max_steps=1, default_root_dir=tmp_path, limit_val_batches=0).fit(model, datamodule=dm)
    assert bool(model.world_model.obs_statistics_set)
    assert torch.allclose(model.world_model.obs_mean, torch.as_tensor(mean))


def test_same_seed_gives_the_same_losses(dataset, tmp_path):
    from mrcom_lightning.models import WorldModelConfig
    from mrcom_lightning.module import MrCoM

    def fit(seed: int) -> dict[str, torch.Tensor]:
        L.seed_everything(seed)
        dm = make(dataset, seed=seed)
        tiny = WorldModelConfig(embed_dim=16, hidden_dim=32, stochastic_dim=8, deterministic_dim=16, auxiliary_dim=4,
                                context_length=dm.hparams.prompt_length, heads=4, reward_bins=31)
        model = MrCoM(world_model=tiny, domain_dims=dm.domain_dims, num_scenarios=dm.num_scenarios)
        losses = []
        update_targets = model.on_train_batch_end

        def record(outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))
            update_targets(outputs, batch, batch_idx)

        model.on_train_batch_end = record
        trainer(max_steps=5, default_root_dir=tmp_path / str(seed)).fit(model, datamodule=dm)
        return {"losses": torch.tensor(losses), **{k: v.clone() for k, v in model.state_dict().items()}}

    first, again, other = fit(0), fit(0), fit(1)
    assert len(first["losses"]) == 5
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["losses"], other["losses"])


def episode_of(root: str, obs: np.ndarray) -> set[tuple[str, str]]:
    """(scenario id, file) of every episode under `root` whose obs contain `obs` contiguously."""
    found = set()
    for info in EpisodeStore(root).index():
        stored = EpisodeStore.read(info.path).obs
        if stored.shape[1] == obs.shape[1]:
            for t in np.flatnonzero((stored == obs[0]).all(1)):
                if np.array_equal(stored[t : t + len(obs)], obs):
                    found.add((info.scenario_id, str(info.path)))
    return found


def test_meta_episodes_span_two_episodes_of_one_scenario(dataset):
    dm = make(dataset, meta_episodes=2, batch_size=6)
    dm.setup("fit")
    obs_dims = list(dm.domain_dims.values())
    for batch in take(dm.train_stream(), 3):
        T = batch["action"].shape[1]
        assert batch["reset"].shape == (6, T + 1) and batch["reset"].dtype == torch.bool
        for row in range(6):
            flags = np.flatnonzero(batch["reset"][row].numpy())
            assert len(flags) == 1 and 1 <= flags[0] <= T  # one boundary, an observation on each side
            t = int(flags[0])
            dim = obs_dims[int(batch["domain"][row])][0]
            before, after = batch["obs"][row, :t, :dim].numpy(), batch["obs"][row, t:, :dim].numpy()
            first, second = episode_of(dataset.root, before), episode_of(dataset.root, after)
            assert len(first) == 1 and len(second) == 1
            (scenario_a, file_a), (scenario_b, file_b) = first.pop(), second.pop()
            assert scenario_a == scenario_b and file_a != file_b  # two episodes, one scenario
            # The reset transition: no action led to the new episode, no reward came with it.
            assert not batch["action"][row, t - 1].any() and batch["reward"][row, t - 1] == 0
    plain = make(dataset)
    plain.setup("fit")
    assert "reset" not in next(iter(plain.train_stream()))


def test_meta_episodes_need_enough_episodes(dataset):
    dm = make(dataset, meta_episodes=3)
    dm.setup("fit")
    with pytest.raises(ValueError, match="data.meta_episodes=3"):
        dm.train_stream()

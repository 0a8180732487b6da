"""The episode store (DESIGN.md §3): exact round trips, an index from names only, corrupt files named."""

import numpy as np
import pytest

from mrcom_lightning.data import CorruptEpisodeError, Episode, EpisodeStore
from mrcom_lightning.scenarios import ScenarioSpec

HOPPER = ScenarioSpec("hopper", length_scale=1.1, target_speed=0.5, seed=3)
CHEETAH = ScenarioSpec("cheetah", size_scale=0.9, target_speed=0.4, obs_fn="add_gaussian", seed=4)


def make_episode(spec: ScenarioSpec, policy: str = "random", steps: int = 30, seed: int = 7) -> Episode:
    rng = np.random.default_rng(seed)
    obs_dim, act_dim = {"hopper": (15, 4), "cheetah": (17, 6)}[spec.domain]
    terminal = np.zeros(steps, bool)
    terminal[-1] = True
    return Episode(
        obs=rng.standard_normal((steps + 1, obs_dim)).astype(np.float32),
        action=rng.uniform(-1, 1, (steps, act_dim)).astype(np.float32),
        reward=rng.random(steps).astype(np.float32),
        terminal=terminal,
        spec=spec,
        policy=policy,
        seed=seed,
    )


def test_round_trip_is_exact(tmp_path):
    store = EpisodeStore(tmp_path)
    episode = make_episode(HOPPER, "expert", steps=25, seed=123456789)
    path = store.write(episode, index=4)
    assert path == tmp_path / HOPPER.id / "expert" / "ep-000004-T25.npz"

    back = store.read(path)
    for name in ("obs", "action", "reward", "terminal"):
        original, read = getattr(episode, name), getattr(back, name)
        assert read.dtype == original.dtype, name
        assert read.shape == original.shape, name
        assert read.tobytes() == original.tobytes(), name
    assert back.spec == HOPPER
    assert back.policy == "expert"
    assert back.seed == 123456789
    assert back.steps == 25
    assert back.episode_return == pytest.approx(episode.episode_return)


def test_index_lists_by_scenario_and_policy_from_names_only(tmp_path, monkeypatch):
    store = EpisodeStore(tmp_path)
    for index in range(3):
        store.write(make_episode(HOPPER, "random", steps=30, seed=index), index)
    store.write(make_episode(HOPPER, "expert", steps=20), 0)
    store.write(make_episode(CHEETAH, "medium", steps=10), 1)

    def no_reading(*args, **kwargs):
        raise AssertionError("index() must not open episode files")

    monkeypatch.setattr(np, "load", no_reading)

    everything = store.index()
    assert len(everything) == 5
    hopper_random = store.index(HOPPER.id, "random")
    assert [(i.scenario_id, i.policy, i.index, i.steps) for i in hopper_random] == [
        (HOPPER.id, "random", k, 30) for k in range(3)
    ]
    assert [(i.policy, i.steps) for i in store.index(HOPPER.id)] == [("expert", 20)] + [("random", 30)] * 3
    assert [(i.scenario_id, i.index, i.steps) for i in store.index(policy="medium")] == [(CHEETAH.id, 1, 10)]
    assert store.index(CHEETAH.id, "random") == []
    assert store.count(HOPPER, "random") == 3
    assert store.existing_indices(CHEETAH, "medium") == {1}
    assert all(info.path.is_file() for info in everything)


def test_specs_returns_every_scenario(tmp_path):
    store = EpisodeStore(tmp_path)
    store.write(make_episode(HOPPER), 0)
    store.write(make_episode(CHEETAH), 0)
    assert store.specs() == {HOPPER.id: HOPPER, CHEETAH.id: CHEETAH}


def test_truncated_file_is_named_in_the_error(tmp_path):
    store = EpisodeStore(tmp_path)
    path = store.write(make_episode(HOPPER, steps=40), 0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptEpisodeError, match="truncated") as err:
        store.read(path)
    assert str(path) in str(err.value)


def test_garbage_file_is_named_in_the_error(tmp_path):
    store = EpisodeStore(tmp_path)
    path = store.write(make_episode(HOPPER), 0)
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CorruptEpisodeError) as err:
        store.read(path)
    assert str(path) in str(err.value)


def test_leftover_temporary_file_is_not_listed_and_is_cleaned(tmp_path):
    store = EpisodeStore(tmp_path)
    kept = store.write(make_episode(HOPPER), 0)
    # What a writer killed between mkstemp and rename leaves behind.
    leftover = kept.parent / ".ep-000001-T30.npz.k3x9a_q2.partial"
    leftover.write_bytes(kept.read_bytes()[:100])

    assert [info.path for info in store.index()] == [kept]
    assert store.clean() == 1
    assert not leftover.exists()
    assert kept.exists()
    assert store.clean() == 0


def test_inconsistent_arrays_are_rejected():
    episode = make_episode(HOPPER, steps=30)
    with pytest.raises(ValueError, match="T\\+1"):
        Episode(episode.obs[:-1], episode.action, episode.reward, episode.terminal, HOPPER, "random", 0)
    with pytest.raises(ValueError, match="disagree"):
        Episode(episode.obs, episode.action, episode.reward[:-1], episode.terminal, HOPPER, "random", 0)
    with pytest.raises(ValueError, match="policy"):
        Episode(episode.obs, episode.action, episode.reward, episode.terminal, HOPPER, "greedy", 0)

"""Behaviour of the meta-scenario suite (DESIGN.md §2): dynamics, observations, rewards, draws, specs."""

import dataclasses
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from dm_control.suite import cheetah, hopper, humanoid, walker

from mrcom_lightning.scenarios import SPLITS, Domain, MetaScenarioSet, ScenarioSpec, get_domain, make_env
from mrcom_lightning.scenarios.mjcf import scaled_model

DOMAIN_NAMES = ("hopper", "walker", "cheetah")

# Bodies attached to the torso, with the coordinate (along the torso axis) they have by default.
TORSO_CHILDREN = {
    "hopper": {"pelvis": -0.05},
    "walker": {"right_thigh": -0.3, "left_thigh": -0.3},
    "cheetah": {"bthigh": -0.5, "fthigh": 0.5},
}

# dm_control's own tasks, whose speed terms are one-sided at the domain's fastest speed.
STOCK_TASKS = {
    "hopper": lambda: hopper.Hopper(hopping=True),
    "walker": lambda: walker.PlanarWalker(move_speed=walker._RUN_SPEED),
    "cheetah": lambda: cheetah.Cheetah(),
}


def _physics(domain, length_scale=1.0, size_scale=1.0):
    # Keep the physics itself: `physics.named` only holds a weak reference to it.
    return make_env(ScenarioSpec(domain, length_scale=length_scale, size_scale=size_scale)).physics


# --- Dynamics: the torso is edited in the MJCF, so mass and attachments follow. ---


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_default_scales_reproduce_stock_model(domain):
    module = get_domain(domain).module
    stock = module.Physics.from_xml_string(*module.get_model_and_assets()).model
    scenario = _physics(domain).model
    np.testing.assert_allclose(scenario.body_mass.sum(), stock.body_mass.sum(), rtol=1e-6)
    np.testing.assert_allclose(scenario.body_mass, stock.body_mass, rtol=1e-6)
    np.testing.assert_allclose(scenario.body_pos, stock.body_pos, rtol=1e-6)
    np.testing.assert_allclose(scenario.geom_size, stock.geom_size, rtol=1e-6)


def test_scaling_cheetah_compiles_nothing_mujoco_calls_deprecated(caplog):
    """dm_control's cheetah sets `settotalmass`, which MuJoCo 3 warns is deprecated: the scaled model
    replaces it by a density, and measuring the stock geoms drops it (sizes do not depend on it)."""
    from mrcom_lightning.scenarios import mjcf

    with caplog.at_level("WARNING"):
        mjcf._compiled_torso_geoms.__wrapped__(get_domain("cheetah"))  # past the cache: compile again
        scaled_model(get_domain("cheetah"), 1.2, 0.9)
    assert not [r for r in caplog.records if "settotalmass" in r.getMessage()]


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_torso_mass_grows_with_both_scales(domain):
    default = _physics(domain).model.body_mass
    for field in ("size_scale", "length_scale"):
        masses = [_physics(domain, **{field: s}).model.body_mass for s in (0.7, 1.3)]
        torso = [masses[0][1], default[1], masses[1][1]]  # body 0 is the world, 1 the torso
        assert torso[0] < torso[1] < torso[2], f"{domain} torso mass vs {field}: {torso}"
        # Only the torso changes: no total mass is re-normalised (cheetah's settotalmass).
        for scaled in masses:
            np.testing.assert_allclose(scaled[2:], default[2:], rtol=1e-6)
        assert masses[0].sum() < default.sum() < masses[1].sum()


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_torso_radius_follows_size_scale(domain):
    default = _physics(domain).named.model.geom_size["torso"]
    for scale in (0.7, 1.3):
        scaled = _physics(domain, size_scale=scale).named.model.geom_size["torso"]
        assert scaled[0] == pytest.approx(default[0] * scale, rel=1e-5)
        assert scaled[1] == pytest.approx(default[1], rel=1e-9)  # length unchanged


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_torso_length_and_attachments_follow_length_scale(domain):
    axis = get_domain(domain).torso_axis
    default_physics = _physics(domain)
    default = default_physics.named.model
    for scale in (0.7, 1.3):
        physics = _physics(domain, length_scale=scale)
        model = physics.named.model
        # Capsule half-length, whether the torso is given by `fromto` or by `size`.
        assert model.geom_size["torso"][1] == pytest.approx(default.geom_size["torso"][1] * scale, rel=1e-5)
        assert model.geom_size["torso"][0] == pytest.approx(default.geom_size["torso"][0], rel=1e-9)
        for child, coordinate in TORSO_CHILDREN[domain].items():
            assert default.body_pos[child][axis] == pytest.approx(coordinate)
            assert model.body_pos[child][axis] == pytest.approx(coordinate * scale, rel=1e-5), child
        if domain == "cheetah":  # the head sits at the front end of the torso
            assert model.geom_pos["head"][0] == pytest.approx(default.geom_pos["head"][0] * scale, rel=1e-5)


# --- Torso geoms given by `fromto` in any direction (humanoid: capsules across the upright torso). ---

# humanoid's torso body: the capsules `torso` (fromto 0 -.07 0 0 .07 0, radius .07) and `upper_waist`
# (fromto -.01 -.06 -.12 -.01 .06 -.12, radius .06) lie along y, across its length axis z.
HUMANOID = Domain(
    "humanoid", humanoid, humanoid.Humanoid, torso_axis=2, max_speed=humanoid._RUN_SPEED,
    control_timestep=0.025, episode_steps=1000, obs_dim=67, act_dim=21, torso_geoms=("torso", "upper_waist"),
)
HUMANOID_CAPSULES = {"torso": (0.07, 0.07, (0.0, 0.0, 0.0)), "upper_waist": (0.06, 0.06, (-0.01, 0.0, -0.12))}


def _capsule_volume(radius, half_length):
    return np.pi * radius**2 * 2 * half_length + 4 / 3 * np.pi * radius**3


@pytest.mark.parametrize("length_scale, size_scale", [(1.3, 1.0), (0.7, 1.2), (1.25, 0.8)])
def test_fromto_capsules_across_the_torso_axis_scale_their_length_and_mass(length_scale, size_scale):
    default = humanoid.Physics.from_xml_string(*scaled_model(HUMANOID, 1.0, 1.0))
    scaled = humanoid.Physics.from_xml_string(*scaled_model(HUMANOID, length_scale, size_scale))
    before, after = default.named.model, scaled.named.model
    volumes = {}
    for name, (radius, half_length, middle) in HUMANOID_CAPSULES.items():
        np.testing.assert_allclose(before.geom_size[name][:2], [radius, half_length], rtol=1e-6)
        # The segment keeps its direction (y) and its midpoint moves with the stretch along z.
        np.testing.assert_allclose(after.geom_size[name][:2], [radius * size_scale, half_length * length_scale], rtol=1e-5)
        np.testing.assert_allclose(after.geom_pos[name], np.multiply(middle, (1, 1, length_scale)), atol=1e-6)
        np.testing.assert_allclose(after.geom_quat[name], before.geom_quat[name], atol=1e-6)
        volumes[name] = (_capsule_volume(radius, half_length), _capsule_volume(radius * size_scale, half_length * length_scale))
    # The torso body's mass is its two capsules' at MuJoCo's default density: it follows their volumes.
    density = before.body_mass["torso"] / sum(v[0] for v in volumes.values())
    assert density == pytest.approx(1000.0, rel=1e-4)
    assert after.body_mass["torso"] == pytest.approx(density * sum(v[1] for v in volumes.values()), rel=1e-5)
    # What hangs off the torso moves along z; the limbs keep their masses.
    for body, z in (("head", 0.19), ("lower_waist", -0.26), ("right_upper_arm", 0.06)):
        assert after.body_pos[body][2] == pytest.approx(z * length_scale, rel=1e-5)
    np.testing.assert_allclose(after.body_mass["right_thigh"], before.body_mass["right_thigh"], rtol=1e-6)


def test_a_diagonal_fromto_torso_geom_scales_along_itself():
    """hopper's nose (fromto .08 0 .13 .15 0 .14) named a torso geom: its segment grows about its
    moved midpoint and keeps its direction, while by default it only moves with the stretch."""
    nose = lambda entry, scale: np.array(  # noqa: E731
        [float(x) for x in ET.fromstring(scaled_model(entry, scale, 1.0)[0]).find(".//geom[@name='nose']").attrib["fromto"].split()]
    )
    entry = dataclasses.replace(get_domain("hopper"), torso_geoms=("torso", "nose"))
    start, end = np.array([0.08, 0, 0.13]), np.array([0.15, 0, 0.14])
    scaled = nose(entry, 1.5)
    middle = (start + end) / 2 * [1, 1, 1.5]
    np.testing.assert_allclose(scaled, np.concatenate([middle - (end - start) / 2 * 1.5, middle + (end - start) / 2 * 1.5]), atol=1e-6)
    stretched = nose(get_domain("hopper"), 1.5)  # not a torso geom: an attachment, only its z moves
    np.testing.assert_allclose(stretched, [0.08, 0, 0.13 * 1.5, 0.15, 0, 0.14 * 1.5], atol=1e-6)


def _hopper_with_default_torso_size():
    """hopper's model with the torso's radius given by its default class instead of the geom."""
    xml, assets = hopper.get_model_and_assets()
    root = ET.fromstring(xml)
    root.find(".//default[@class='hopper']/geom").attrib["size"] = "0.0653"
    del root.find(".//geom[@name='torso']").attrib["size"]
    return ET.tostring(root, encoding="unicode"), assets


def test_a_torso_size_from_a_default_class_is_scaled():
    entry = dataclasses.replace(get_domain("hopper"), model=_hopper_with_default_torso_size)
    physics = hopper.Physics.from_xml_string(*scaled_model(entry, 1.2, 1.3))
    reference = _physics("hopper", length_scale=1.2, size_scale=1.3)
    np.testing.assert_allclose(physics.named.model.geom_size["torso"], reference.named.model.geom_size["torso"], rtol=1e-6)
    np.testing.assert_allclose(physics.model.body_mass, reference.model.body_mass, rtol=1e-6)


# --- Observations. ---

BASE_DIMS = {"hopper": 15, "walker": 24, "cheetah": 17}
ADD_DIMS = {"hopper": 17, "walker": 27, "cheetah": 19}  # + ceil(10%)


def _rollout(spec, steps=15, action_seed=0):
    env = make_env(spec)
    rng = np.random.default_rng(action_seed)
    observations = [env.reset()]
    for _ in range(steps):
        observations.append(env.step(env.random_action(rng))[0])
    return env, np.stack(observations)


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
@pytest.mark.parametrize("obs_fn", ["none", "add_gaussian", "add_dims", "mask_random", "mask_fixed"])
def test_observation_shape_dtype_finite(domain, obs_fn):
    expected = ADD_DIMS[domain] if obs_fn == "add_dims" else BASE_DIMS[domain]
    env, observations = _rollout(ScenarioSpec(domain, obs_fn=obs_fn), steps=3)
    assert env.obs_dim == expected
    assert observations.shape == (4, expected)
    assert observations.dtype == np.float32
    assert np.isfinite(observations).all()


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_observation_functions_against_plain(domain):
    count = ADD_DIMS[domain] - BASE_DIMS[domain]
    _, plain = _rollout(ScenarioSpec(domain, seed=3))
    _, noisy = _rollout(ScenarioSpec(domain, obs_fn="add_gaussian", seed=3))
    _, extra = _rollout(ScenarioSpec(domain, obs_fn="add_dims", seed=3))
    _, fixed = _rollout(ScenarioSpec(domain, obs_fn="mask_fixed", seed=3))
    _, random = _rollout(ScenarioSpec(domain, obs_fn="mask_random", seed=3))

    assert not np.allclose(noisy, plain)
    np.testing.assert_allclose(noisy, plain, atol=1.0)  # noise, not a different trajectory
    np.testing.assert_array_equal(extra[:, : BASE_DIMS[domain]], plain)

    for masked in (fixed, random):  # masks only zero values
        changed = masked != plain
        assert (masked[changed] == 0).all()

    fixed_changed = set(np.flatnonzero((fixed != plain).any(axis=0)))
    assert 1 <= len(fixed_changed) <= count
    for step in fixed:  # the same dims are zero at every step
        assert (step[sorted(fixed_changed)] == 0).all()

    zeroed_per_step = {frozenset(np.flatnonzero(step == 0)) for step in random}
    assert len(zeroed_per_step) > 1, "mask_random zeroed the same dims at every step"
    assert all(len(zeroed) >= count for zeroed in zeroed_per_step)


# --- Reward: a two-sided target speed. ---


def _reward_at_speed(env, speed, task=None):
    """The reward in the default standing pose with the torso moving forward at `speed`."""
    physics = env.physics
    physics.data.qpos[:] = 0.0
    physics.data.qvel[:] = 0.0
    physics.named.data.qvel["rootx"] = speed
    physics.forward()  # updates the subtreelinvel sensor the speed is read from
    return (task or env.task).get_reward(physics)


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
@pytest.mark.parametrize("length_scale", [1.0, 1.3])
def test_reward_peaks_at_target_speed(domain, length_scale):
    env = make_env(ScenarioSpec(domain, length_scale=length_scale, target_speed=0.5))
    env.reset()
    target = 0.5 * get_domain(domain).max_speed
    assert env.task.target_speed == pytest.approx(target)

    at_target = _reward_at_speed(env, target)
    assert at_target == pytest.approx(1.0)  # standing and upright factors are met in this pose
    for speed in (0.0, 0.5 * target, 1.5 * target, 2.0 * target):
        assert _reward_at_speed(env, speed) < at_target, f"{domain} reward at {speed} >= at target {target}"

    speeds = np.linspace(0.0, 2.0 * target, 41)
    rewards = [_reward_at_speed(env, v) for v in speeds]
    assert speeds[int(np.argmax(rewards))] == pytest.approx(target)


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_overshooting_costs_reward_unlike_stock_task(domain):
    env = make_env(ScenarioSpec(domain, target_speed=1.0))
    env.reset()
    fastest = get_domain(domain).max_speed
    stock = STOCK_TASKS[domain]()
    assert _reward_at_speed(env, 1.5 * fastest, stock) == pytest.approx(_reward_at_speed(env, fastest, stock))
    assert _reward_at_speed(env, 1.5 * fastest) < _reward_at_speed(env, fastest) - 0.1


# --- The meta-scenario set. ---


def _is_ood_scale(scale, alpha):
    return (1 - 2 * alpha <= scale < 1 - alpha) or (1 + alpha < scale <= 1 + 2 * alpha)


@pytest.mark.parametrize("beta", [(0.3, 0.7), (0.5, 0.7)])
def test_ood_draws_lie_outside_training_ranges(beta):
    alpha = 0.2
    meta = MetaScenarioSet(alpha=alpha, beta=beta, num_train=0, num_test_id=0, num_test_ood=200, seed=1)
    lo, hi = beta
    width = hi - lo
    specs = meta.test_ood
    assert len(specs) == 3 * 200
    for spec in specs:
        assert not meta.in_train_range(spec), spec
        assert _is_ood_scale(spec.length_scale, alpha), spec
        assert _is_ood_scale(spec.size_scale, alpha), spec
        assert (0 < spec.target_speed < lo and spec.target_speed >= lo - width) or (hi < spec.target_speed <= hi + width), spec
    # Both sides of each range are drawn.
    assert min(s.length_scale for s in specs) < 1 - alpha < 1 + alpha < max(s.length_scale for s in specs)
    assert max(s.target_speed for s in specs) > hi
    if lo - width > 0:
        assert min(s.target_speed for s in specs) < lo


def test_in_distribution_draws_lie_inside_training_ranges():
    meta = MetaScenarioSet(alpha=0.2, beta=(0.3, 0.7), num_train=100, num_test_id=100, num_test_ood=0)
    in_distribution = [spec for split in SPLITS if split != "test_ood" for spec in meta.draw(split)]
    assert len(in_distribution) >= 3 * 200
    for spec in in_distribution:
        assert meta.in_train_range(spec), spec
        assert 0.8 <= spec.length_scale <= 1.2 and 0.8 <= spec.size_scale <= 1.2, spec
        assert 0.3 <= spec.target_speed <= 0.7, spec
    assert {s.domain for s in meta.train} == set(DOMAIN_NAMES)


def test_fixed_dynamics_and_objective():
    meta = MetaScenarioSet(alpha=None, beta=(0.5, 0.5), num_train=3, num_test_ood=0)
    for spec in meta.train:
        assert (spec.length_scale, spec.size_scale, spec.target_speed) == (1.0, 1.0, 0.5)


def test_same_seed_same_scenarios_and_observations():
    first = MetaScenarioSet(num_train=2, num_test_id=1, num_test_ood=1, seed=7)
    second = MetaScenarioSet(num_train=2, num_test_id=1, num_test_ood=1, seed=7)
    for split in SPLITS:
        assert first.draw(split) == second.draw(split)
    for spec in first.train[::2]:
        np.testing.assert_array_equal(make_env(spec).reset(), make_env(spec).reset())
    # More test scenarios do not change the training ones.
    assert MetaScenarioSet(num_train=2, num_test_id=5, seed=7).train == first.train


def test_different_seed_different_scenarios():
    a = MetaScenarioSet(num_train=2, seed=0).train
    b = MetaScenarioSet(num_train=2, seed=1).train
    assert all(x != y for x, y in zip(a, b))
    assert {x.id for x in a}.isdisjoint({y.id for y in b})


# --- Bad inputs name the field and the value. ---


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ScenarioSpec("ant"), r"domain.*'ant'"),
        (lambda: ScenarioSpec("hopper", obs_fn="blur"), r"obs_fn.*'blur'"),
        (lambda: ScenarioSpec("hopper", length_scale=0), r"length_scale.*0"),
        (lambda: ScenarioSpec("hopper", length_scale=-1.0), r"length_scale.*-1\.0"),
        (lambda: ScenarioSpec("hopper", size_scale=0.0), r"size_scale.*0\.0"),
        (lambda: ScenarioSpec("hopper", size_scale=-0.5), r"size_scale.*-0\.5"),
        (lambda: ScenarioSpec("hopper", target_speed=0), r"target_speed.*0"),
        (lambda: ScenarioSpec("hopper", target_speed=-0.2), r"target_speed.*-0\.2"),
        (lambda: MetaScenarioSet(domains=("hopper", "ant")), r"domains.*'ant'"),
        (lambda: MetaScenarioSet(obs_fn="blur"), r"obs_fn.*'blur'"),
        (lambda: MetaScenarioSet(alpha=0.7), r"alpha.*0\.7"),
        (lambda: MetaScenarioSet(alpha=0), r"alpha.*got 0"),
        (lambda: MetaScenarioSet(alpha=-0.1), r"alpha.*-0\.1"),
        (lambda: MetaScenarioSet(beta=(0.7, 0.3)), r"beta.*0\.7.*0\.3"),
        (lambda: MetaScenarioSet(beta=(-0.1, 0.5)), r"beta.*-0\.1"),
        (lambda: MetaScenarioSet(num_test_ood_dynamics=-1), r"num_test_ood_dynamics.*-1"),
        (lambda: MetaScenarioSet(alpha=None, num_test_ood_dynamics=1), r"num_test_ood_dynamics.*alpha"),
        (lambda: MetaScenarioSet(beta=(0.5, 0.5), num_test_ood_objective=1), r"num_test_ood_objective.*beta"),
    ],
)
def test_bad_inputs_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# --- The spec as a key. ---


def test_spec_is_frozen_and_hashable():
    spec = ScenarioSpec("hopper", length_scale=1.2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.length_scale = 1.0
    same = ScenarioSpec("hopper", length_scale=1.2, size_scale=1, target_speed=1, seed=0)
    assert spec == same and hash(spec) == hash(same) and spec.id == same.id
    assert len({spec, same}) == 1
    assert ScenarioSpec.from_dict(spec.to_dict()) == spec


def test_spec_id_is_a_directory_name_that_tracks_every_field(tmp_path):
    spec = ScenarioSpec("hopper")
    changes = {
        "domain": "walker",
        "length_scale": 1.1,
        "size_scale": 0.9,
        "target_speed": 0.5,
        "obs_fn": "mask_fixed",
        "seed": 1,
    }
    assert set(changes) == {f.name for f in dataclasses.fields(ScenarioSpec)}
    ids = {spec.id} | {dataclasses.replace(spec, **{k: v}).id for k, v in changes.items()}
    assert len(ids) == 1 + len(changes)
    for spec_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", spec_id) and len(spec_id) < 100
        (tmp_path / spec_id).mkdir()


def test_ood_kinds_name_which_range_a_scenario_leaves():
    meta = MetaScenarioSet(alpha=0.2, beta=(0.3, 0.7))
    cases = {
        ScenarioSpec("walker", 1.1, 0.9, 0.5): "in_distribution",
        ScenarioSpec("walker", 1.2, 0.8, 0.3): "in_distribution",  # the ranges' ends are inside
        ScenarioSpec("walker", 1.3, 1.0, 0.5): "dynamics",
        ScenarioSpec("walker", 1.0, 0.7, 0.7): "dynamics",
        ScenarioSpec("walker", 1.0, 1.0, 0.8): "objective",
        ScenarioSpec("walker", 1.0, 1.0, 0.2): "objective",
        ScenarioSpec("walker", 0.65, 1.0, 0.9): "both",
    }
    for spec, kind in cases.items():
        assert meta.ood_kind(spec) == kind, spec
    assert {meta.ood_kind(s) for s in meta.train + meta.val + meta.test_id} == {"in_distribution"}
    assert {meta.ood_kind(s) for s in meta.test_ood} == {"both"}  # both ranges move in the default set
    fixed_objective = MetaScenarioSet(alpha=0.2, beta=(0.5, 0.5))
    assert {fixed_objective.ood_kind(s) for s in fixed_objective.test_ood} == {"dynamics"}
    fixed_dynamics = MetaScenarioSet(alpha=None, beta=(0.3, 0.7))
    assert {fixed_dynamics.ood_kind(s) for s in fixed_dynamics.test_ood} == {"objective"}


def test_single_kind_ood_splits_leave_one_range_each_and_change_no_other_draw():
    plain = MetaScenarioSet(alpha=0.2, beta=(0.3, 0.7))
    meta = dataclasses.replace(plain, num_test_ood_dynamics=3, num_test_ood_objective=3)
    for split in ("train", "val", "test_id", "test_ood"):  # the new splits draw from streams of their own
        assert meta.draw(split) == plain.draw(split), split
    assert plain.draw("test_ood_dynamics") == [] and plain.draw("test_ood_objective") == []
    dynamics, objective = meta.draw("test_ood_dynamics"), meta.draw("test_ood_objective")
    assert len(dynamics) == len(objective) == 3 * len(meta.domains)
    assert {meta.ood_kind(s) for s in dynamics} == {"dynamics"}
    assert {meta.ood_kind(s) for s in objective} == {"objective"}
    # Both torso scales leave [0.8, 1.2] in the dynamics split; the speeds stay in [0.3, 0.7].
    assert all(abs(s.length_scale - 1) > 0.2 and abs(s.size_scale - 1) > 0.2 for s in dynamics)
    assert all(0.3 <= s.target_speed <= 0.7 for s in dynamics)
    assert all(0.8 <= s.length_scale <= 1.2 and not 0.3 <= s.target_speed <= 0.7 for s in objective)

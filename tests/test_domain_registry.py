"""The domain registry (DESIGN.md §2): one `Domain` entry is all a new domain needs.

The worked example registers dm_control's quadruped, whose suite module builds its model with
`make_model(...)` instead of `get_model_and_assets()` and whose torso is an ellipsoid, not a
capsule. It is registered only for the test that uses it (`monkeypatch.setitem`), so the real
registry, and with it the seeded draws of `MetaScenarioSet`, stays the three paper domains.
"""

import functools
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from dm_control import mujoco
from dm_control.suite import cheetah, common, hopper, quadruped, walker
from dm_control.utils import rewards

from mrcom_lightning.scenarios import DOMAINS, Domain, MetaScenarioSet, ScenarioSpec, get_domain, make_env
from mrcom_lightning.scenarios.mjcf import scaled_model, scaled_model_xml

DOMAIN_NAMES = ("hopper", "walker", "cheetah")
SCALES = [(1.0, 1.0), (0.7, 1.3), (1.3, 0.7), (1.2, 1.1), (0.85, 0.6)]  # (length, size)


# --- The three paper domains compile exactly as before the registry grew its optional fields. ---


def _reference_floats(text):
    return np.array([float(x) for x in text.split()])


def _reference_format(values):
    return " ".join(f"{v:.6g}" for v in values)


@functools.lru_cache(maxsize=None)
def _reference_density(module):
    xml, assets = module.get_model_and_assets()
    root = ET.fromstring(xml)
    compiler = root.find("compiler")
    if compiler is None or "settotalmass" not in compiler.attrib:
        return None
    total = float(compiler.attrib.pop("settotalmass"))
    free_mass = mujoco.Physics.from_xml_string(ET.tostring(root, encoding="unicode"), assets)
    return 1000.0 * total / float(free_mass.model.body_mass.sum())


def _reference_scaled_model_xml(module, axis, length_scale, size_scale):
    """mjcf.scaled_model_xml as it was for capsule torsos only (frozen copy, do not edit)."""
    xml, _ = module.get_model_and_assets()
    root = ET.fromstring(xml)
    density = _reference_density(module)
    if density is not None:
        root.find("compiler").attrib.pop("settotalmass")
        default = root.find("default")
        ET.SubElement(default, "geom", density=f"{density:.6g}")
    torso = root.find(".//worldbody/body[@name='torso']")
    lowest = 0.0
    for child in torso:
        if child.tag not in ("geom", "body"):
            continue
        if "fromto" in child.attrib:
            fromto = _reference_floats(child.attrib["fromto"])
            lowest = min(lowest, fromto[axis], fromto[axis + 3])
            fromto[[axis, axis + 3]] *= length_scale
            child.attrib["fromto"] = _reference_format(fromto)
        if "pos" in child.attrib:
            pos = _reference_floats(child.attrib["pos"])
            lowest = min(lowest, pos[axis])
            pos[axis] *= length_scale
            child.attrib["pos"] = _reference_format(pos)
        if child.tag == "geom" and child.attrib.get("name") == "torso":
            size = _reference_floats(child.attrib["size"])
            size[0] *= size_scale
            if "fromto" not in child.attrib and len(size) > 1:
                lowest = min(lowest, -size[1])
                size[1] *= length_scale
            child.attrib["size"] = _reference_format(size)
    if axis == 2:
        pos = _reference_floats(torso.attrib.get("pos", "0 0 0"))
        pos[2] += max(0.0, length_scale - 1.0) * -lowest
        torso.attrib["pos"] = _reference_format(pos)
    return ET.tostring(root, encoding="unicode")


REFERENCE_AXES = {"hopper": (hopper, 2), "walker": (walker, 2), "cheetah": (cheetah, 0)}


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_paper_domains_compile_byte_for_byte_as_before(domain):
    module, axis = REFERENCE_AXES[domain]
    entry = get_domain(domain)
    for length_scale, size_scale in SCALES:
        expected = _reference_scaled_model_xml(module, axis, length_scale, size_scale)
        assert scaled_model_xml(entry, length_scale, size_scale) == expected, (domain, length_scale, size_scale)
        xml, assets = scaled_model(entry, length_scale, size_scale)
        assert xml == expected and assets is common.ASSETS


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_paper_domains_use_the_defaults(domain):
    entry = get_domain(domain)
    assert entry.model == entry.module.get_model_and_assets
    assert entry.physics is entry.module.Physics
    assert (entry.torso_geoms, entry.torso_radius, entry.torso_length) == (("torso",), None, None)


def test_real_registry_holds_the_paper_domains_only():
    # `MetaScenarioSet._rng` seeds by `sorted(DOMAINS).index(domain)`: a new entry would shift draws.
    assert sorted(DOMAINS) == ["cheetah", "hopper", "walker"]
    assert MetaScenarioSet().domains == ("hopper", "walker", "cheetah")
    with pytest.raises(ValueError, match="unknown domain .quadruped.*--domains_module"):
        ScenarioSpec("quadruped")


# --- Worked example: quadruped, one entry. ---


class QuadrupedTargetSpeed(quadruped.Move):
    """dm_control's quadruped `run` task with the move term peaking at `target_speed`."""

    def __init__(self, target_speed: float, random=None):
        super().__init__(desired_speed=target_speed, random=random)
        self.target_speed = target_speed

    def get_reward(self, physics):
        v = self.target_speed
        move = rewards.tolerance(
            physics.torso_velocity()[0], bounds=(v, v), margin=v / 2, value_at_margin=0.5, sigmoid="linear"
        )
        return quadruped._upright_reward(physics) * move


def quadruped_model():
    """quadruped's flat-floor model (as its `walk`/`run` tasks build it) and the suite's assets."""
    return quadruped.make_model(floor_size=None, terrain=False, rangefinders=False, walls_and_ball=False), common.ASSETS


QUADRUPED = Domain(
    name="quadruped",
    module=quadruped,
    task=QuadrupedTargetSpeed,
    torso_axis=0,  # the body's length lies along x
    max_speed=quadruped._RUN_SPEED,  # 5 m/s
    control_timestep=quadruped._CONTROL_TIMESTEP,  # 0.02 s
    episode_steps=1000,  # _DEFAULT_TIME_LIMIT = 20 s
    obs_dim=78,  # egocentric_state 44, torso_velocity 3, torso_upright 1, imu 6, force_torque 24
    act_dim=12,
    model=quadruped_model,  # the module has no get_model_and_assets
    torso_radius=(1, 2),  # the ellipsoid `torso` (size .3 .27 .2): y and z semi-axes ...
    torso_length=(0,),  # ... and the x semi-axis
)


@pytest.fixture
def with_quadruped(monkeypatch):
    monkeypatch.setitem(DOMAINS, "quadruped", QUADRUPED)
    return QUADRUPED


def test_quadruped_model_is_as_declared():
    xml, assets = quadruped_model()
    torso = ET.fromstring(xml).find(".//worldbody/body[@name='torso']")
    geom = torso.find("geom[@name='torso']")
    assert geom.attrib["type"] == "ellipsoid" and _reference_floats(geom.attrib["size"]).tolist() == [0.3, 0.27, 0.2]
    hips = [body for body in torso.findall("body")]
    assert len(hips) == 4 and all(abs(_reference_floats(b.attrib["pos"])[0]) == 0.2 for b in hips)
    with pytest.raises(ValueError, match="get_model_and_assets"):
        Domain("quadruped", quadruped, QuadrupedTargetSpeed, 0, 5.0, 0.02, 1000, 78, 12)
    assert QUADRUPED.physics is quadruped.Physics


def test_quadruped_entry_builds_and_steps(with_quadruped):
    spec = ScenarioSpec(domain="quadruped", length_scale=1.2, size_scale=1.1, target_speed=0.5)
    env = make_env(spec, episode_steps=20)
    assert env.obs_dim == QUADRUPED.obs_dim and env.act_dim == QUADRUPED.act_dim
    assert env.task.target_speed == pytest.approx(0.5 * quadruped._RUN_SPEED)
    rng = np.random.default_rng(0)
    obs = env.reset()
    assert obs.shape == (QUADRUPED.obs_dim,) and obs.dtype == np.float32
    steps, done, rewards_seen = 0, False, []
    while not done:
        obs, reward, done = env.step(env.random_action(rng))
        steps += 1
        assert obs.shape == (QUADRUPED.obs_dim,) and np.isfinite(obs).all()
        rewards_seen.append(reward)
    assert steps == 20
    assert np.isfinite(rewards_seen).all() and all(0.0 <= r <= 1.0 for r in rewards_seen)


def test_quadruped_torso_follows_scales(with_quadruped):
    def physics(**scales):
        return make_env(ScenarioSpec("quadruped", **scales), episode_steps=1).physics

    # Keep each physics alive: `physics.named` only holds a weak reference to it.
    physics_objects = [physics(), physics(size_scale=1.3), physics(length_scale=1.3)]
    default, wide, long = (p.named.model for p in physics_objects)
    # The torso body's mass is its ellipsoid's (the eyes have mass 0): volume ∝ product of semi-axes.
    assert wide.body_mass["torso"] == pytest.approx(default.body_mass["torso"] * 1.3**2, rel=1e-5)
    assert long.body_mass["torso"] == pytest.approx(default.body_mass["torso"] * 1.3, rel=1e-5)
    np.testing.assert_allclose(wide.geom_size["torso"], default.geom_size["torso"] * [1, 1.3, 1.3], rtol=1e-5)
    np.testing.assert_allclose(long.geom_size["torso"], default.geom_size["torso"] * [1.3, 1, 1], rtol=1e-5)
    # The hips sit at x = ±0.2 and move with the torso's ends; the legs themselves are unchanged.
    assert long.body_pos["hip_front_left"][0] == pytest.approx(0.26)
    assert long.body_pos["hip_back_right"][0] == pytest.approx(-0.26)
    np.testing.assert_allclose(long.body_pos["hip_front_left"][1:], default.body_pos["hip_front_left"][1:])
    legs = [name for name in default.body_mass.axes.row.names if name not in ("world", "torso")]
    np.testing.assert_allclose(wide.body_mass[legs], default.body_mass[legs], rtol=1e-6)
    np.testing.assert_allclose(long.body_mass[legs], default.body_mass[legs], rtol=1e-6)


def test_quadruped_reward_peaks_at_target_speed(with_quadruped):
    env = make_env(ScenarioSpec("quadruped", target_speed=0.5), episode_steps=1)
    env.reset()
    physics, target = env.physics, env.task.target_speed

    def reward(speed):
        physics.data.qpos[:] = 0.0
        physics.data.qpos[2] = 0.57
        physics.data.qpos[3] = 1.0  # upright: identity quaternion
        physics.data.qvel[:] = 0.0
        physics.data.qvel[0] = speed  # forward along the torso's x
        physics.forward()  # updates the velocimeter the speed is read from
        return env.task.get_reward(physics)

    assert reward(target) == pytest.approx(1.0)
    for speed in (0.0, 0.5 * target, 1.5 * target, 2.0 * target):
        assert reward(speed) < reward(target)


def test_spec_and_meta_set_accept_a_registered_domain(with_quadruped):
    assert ScenarioSpec("quadruped").domain == "quadruped"
    meta = MetaScenarioSet(domains=("quadruped",), num_train=3, num_test_id=1, num_test_ood=1, num_val=0, seed=2)
    for split, count in (("train", 3), ("test_id", 1), ("test_ood", 1)):
        specs = meta.draw(split)
        assert len(specs) == count and all(spec.domain == "quadruped" for spec in specs)
    assert all(meta.in_train_range(spec) for spec in meta.train)
    assert not meta.in_train_range(meta.test_ood[0])


def test_torso_description_is_checked():
    with pytest.raises(ValueError, match="both radius and length"):
        Domain("q", quadruped, QuadrupedTargetSpeed, 0, 5.0, 0.02, 1000, 78, 12, model=quadruped_model,
               torso_radius=(0, 1), torso_length=(0,))
    no_such_geom = Domain("q", quadruped, QuadrupedTargetSpeed, 0, 5.0, 0.02, 1000, 78, 12,
                          model=quadruped_model, torso_geoms=("chassis",))
    with pytest.raises(ValueError, match="chassis"):
        scaled_model(no_such_geom, 1.0, 1.0)
    too_short = Domain("q", quadruped, QuadrupedTargetSpeed, 0, 5.0, 0.02, 1000, 78, 12,
                       model=quadruped_model, torso_radius=(3,), torso_length=(0,))
    with pytest.raises(ValueError, match="too few"):
        scaled_model(too_short, 1.0, 1.0)


# --- The paper domains' scenario draws are pinned: shipped agents, datasets and results depend on them. ---

# Computed with `MetaScenarioSet` as it was when each domain's stream was keyed by its index in the
# sorted registry of the three paper domains (cheetah 0, hopper 1, walker 2). Do not edit.
PINNED_DIGESTS = {
    "default": (42, "a6cf5a3e5242f92c303c6dd23e37713484fbf5a1"),
    "seed 3, every split": (48, "216a867e31ca442c615f103a78e61c47c402f911"),
}
PINNED_FIRST_TRAIN = {  # MetaScenarioSet().train's first scenario of each domain
    "hopper": (0.979695527524667, 0.9564166553341846, 0.5307875141284595, 1304388009),
    "walker": (1.0490171763321139, 0.9709189767342702, 0.5838245598217869, 1096415850),
    "cheetah": (1.0547846749285816, 0.9079146855055481, 0.31638940957447786, 161576974),
}


def _pinned_sets():
    return {
        "default": MetaScenarioSet(),
        "seed 3, every split": MetaScenarioSet(
            domains=("cheetah", "walker", "hopper"), alpha=0.1, beta=(0.4, 0.6), obs_fn="add_dims",
            num_test_ood_dynamics=1, num_test_ood_objective=1, seed=3,
        ),
    }


def assert_paper_draws_pinned():
    import hashlib

    from mrcom_lightning.scenarios import SPLITS

    for name, meta in _pinned_sets().items():
        ids = [spec.id for split in SPLITS for spec in meta.draw(split)]
        assert (len(ids), hashlib.sha1(" ".join(ids).encode()).hexdigest()) == PINNED_DIGESTS[name], name
    for spec in MetaScenarioSet().train[::8]:
        assert (spec.length_scale, spec.size_scale, spec.target_speed, spec.seed) == PINNED_FIRST_TRAIN[spec.domain]


def test_paper_domains_draw_the_pinned_scenarios():
    assert_paper_draws_pinned()

"""The domain registry (DESIGN.md §2): one `Domain` entry is all a new domain needs.

The worked example is the example plugin's quadruped (examples/quadruped_plugin), whose suite
module builds its model with `make_model(...)` instead of `get_model_and_assets()` and whose
torso is an ellipsoid, not a capsule. It is registered only for the tests that use it; the
paper domains' scenario draws are pinned and stay the same with it registered.
"""

import dataclasses
import functools
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pytest
from dm_control import mujoco
from dm_control.suite import cheetah, common, hopper, quadruped, walker

from mrcom_lightning.scenarios import (
    DOMAINS, SPLITS, Domain, MetaScenarioSet, ScenarioSpec, draw_key, get_domain, make_env, register_domain,
)
from mrcom_lightning.scenarios.mjcf import scaled_model, scaled_model_xml
from example_plugin import registered_example

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


def test_the_shipped_registry_holds_the_paper_domains_only():
    assert sorted(DOMAINS) == ["cheetah", "hopper", "walker"]
    assert MetaScenarioSet().domains == ("hopper", "walker", "cheetah")
    with pytest.raises(ValueError, match="unknown domain .quadruped.*--domains_module"):
        ScenarioSpec("quadruped")


# --- Worked example: quadruped, one entry in the example plugin (examples/quadruped_plugin). ---


@pytest.fixture
def plugin():
    """The example plugin's domains module, imported afresh: `quadruped` is registered."""
    with registered_example() as module:
        yield module


def test_quadruped_model_is_as_declared(plugin):
    xml, assets = plugin.quadruped_model()
    torso = ET.fromstring(xml).find(".//worldbody/body[@name='torso']")
    geom = torso.find("geom[@name='torso']")
    assert geom.attrib["type"] == "ellipsoid" and _reference_floats(geom.attrib["size"]).tolist() == [0.3, 0.27, 0.2]
    hips = [body for body in torso.findall("body")]
    assert len(hips) == 4 and all(abs(_reference_floats(b.attrib["pos"])[0]) == 0.2 for b in hips)
    with pytest.raises(ValueError, match="get_model_and_assets"):
        Domain("quadruped", quadruped, plugin.QuadrupedTargetSpeed, 0, 5.0, 0.02, 1000, 78, 12)
    assert plugin.QUADRUPED.physics is quadruped.Physics
    assert DOMAINS["quadruped"] is plugin.QUADRUPED


def test_quadruped_entry_builds_and_steps(plugin):
    entry = plugin.QUADRUPED
    spec = ScenarioSpec(domain="quadruped", length_scale=1.2, size_scale=1.1, target_speed=0.5)
    env = make_env(spec, episode_steps=20)
    assert env.obs_dim == entry.obs_dim and env.act_dim == entry.act_dim
    assert env.task.target_speed == pytest.approx(0.5 * quadruped._RUN_SPEED)
    rng = np.random.default_rng(0)
    obs = env.reset()
    assert obs.shape == (entry.obs_dim,) and obs.dtype == np.float32
    steps, done, rewards_seen = 0, False, []
    while not done:
        obs, reward, done = env.step(env.random_action(rng))
        steps += 1
        assert obs.shape == (entry.obs_dim,) and np.isfinite(obs).all()
        rewards_seen.append(reward)
    assert steps == 20
    assert np.isfinite(rewards_seen).all() and all(0.0 <= r <= 1.0 for r in rewards_seen)


def test_quadruped_torso_follows_scales(plugin):
    def physics(**scales):
        return make_env(ScenarioSpec("quadruped", **scales), episode_steps=1).physics

    # Keep each physics alive: `physics.named` only holds a weak reference to it.
    physics_objects = [physics(), physics(size_scale=1.3), physics(length_scale=1.3)]
    default, wide, long = (p.named.model for p in physics_objects)
    # The ellipsoid's semi-axis along the torso axis (x) is its length, the two others its radius;
    # the torso body's mass is the ellipsoid's (the eyes have mass 0): volume ∝ product of semi-axes.
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


def test_the_geom_kind_default_equals_the_explicit_size_entries(plugin):
    explicit = dataclasses.replace(plugin.QUADRUPED, torso_radius=(1, 2), torso_length=(0,))
    for length_scale, size_scale in SCALES:
        assert scaled_model_xml(explicit, length_scale, size_scale) == scaled_model_xml(
            plugin.QUADRUPED, length_scale, size_scale
        )


def test_quadruped_reward_peaks_at_target_speed(plugin):
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


def test_spec_and_meta_set_accept_a_registered_domain(plugin):
    assert ScenarioSpec("quadruped").domain == "quadruped"
    meta = MetaScenarioSet(domains=("quadruped",), num_train=3, num_test_id=1, num_test_ood=1, num_val=0, seed=2)
    for split, count in (("train", 3), ("test_id", 1), ("test_ood", 1)):
        specs = meta.draw(split)
        assert len(specs) == count and all(spec.domain == "quadruped" for spec in specs)
    assert all(meta.in_train_range(spec) for spec in meta.train)
    assert not meta.in_train_range(meta.test_ood[0])


def test_torso_description_is_checked(plugin):
    entry = plugin.QUADRUPED
    with pytest.raises(ValueError, match="both radius and length"):
        dataclasses.replace(entry, torso_radius=(0, 1), torso_length=(0,))
    with pytest.raises(ValueError, match="chassis"):
        scaled_model(dataclasses.replace(entry, torso_geoms=("chassis",)), 1.0, 1.0)
    with pytest.raises(ValueError, match="too few"):
        scaled_model(dataclasses.replace(entry, torso_radius=(3,), torso_length=(0,)), 1.0, 1.0)
    with pytest.raises(ValueError, match="max_speed must be > 0"):
        dataclasses.replace(entry, max_speed=0.0)


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


def test_draw_keys_are_fixed_for_the_paper_domains_and_a_stable_hash_for_others():
    assert {name: draw_key(name) for name in DOMAIN_NAMES} == {"hopper": 1, "walker": 2, "cheetah": 0}
    assert draw_key("quadruped") == 2**32 + zlib.crc32(b"quadruped") == 6485632803
    assert draw_key("humanoid") >= 2**32 and draw_key("humanoid") != draw_key("quadruped")


def test_registering_a_domain_leaves_every_other_domains_scenarios_unchanged():
    meta = MetaScenarioSet(domains=("hopper", "walker", "cheetah"))
    before = {split: meta.draw(split) for split in SPLITS}
    with registered_example() as plugin:
        assert "quadruped" in DOMAINS
        assert_paper_draws_pinned()
        assert {split: meta.draw(split) for split in SPLITS} == before
        with_quadruped = MetaScenarioSet(domains=("quadruped", "hopper", "walker", "cheetah"), seed=0)
        for split in SPLITS:
            assert [s for s in with_quadruped.draw(split) if s.domain != "quadruped"] == before[split]
        quadruped_alone = MetaScenarioSet(domains=("quadruped",)).draw("train")
        # A second extra domain, sorted before quadruped, changes nothing of quadruped's either.
        register_domain(dataclasses.replace(plugin.QUADRUPED, name="aardvark"), check=False)
        assert MetaScenarioSet(domains=("quadruped",)).draw("train") == quadruped_alone
        assert_paper_draws_pinned()
    assert "quadruped" not in DOMAINS and "aardvark" not in DOMAINS

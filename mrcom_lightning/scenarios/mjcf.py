"""Torso scaling by editing the domain's MJCF before compiling (DESIGN.md §2).

Editing `model.geom_size` after compiling changes neither mass nor where the joints sit; here
the XML itself changes, so MuJoCo recomputes mass and inertia from the new geometry, and
everything attached to the torso (legs, head, pelvis) moves with its ends.

Everything domain-specific comes from the `Domain` entry (see domains.py for what it must
provide): the unscaled `(xml, assets)` from `domain.model()`, the body named `torso`, the
axis of its length (`torso_axis`), the geoms to resize (`torso_geoms`) and, when a geom's kind
does not say it, which entries of their `size` are the radius (`torso_radius`) and the length
(`torso_length`). What is scaled, and what is not, is listed in `scaled_model`'s docstring and
in docs/extending.md.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET

import mujoco as mj
import numpy as np
from dm_control import mujoco

from mrcom_lightning.scenarios.domains import Domain

DEFAULT_DENSITY = 1000.0  # MuJoCo's default geom density (kg/m^3).


def _floats(text: str) -> np.ndarray:
    return np.array([float(x) for x in text.split()])


def _format(values: np.ndarray) -> str:
    return " ".join(f"{v:.6g}" for v in values)


def _stock_tree(domain: Domain) -> tuple[ET.Element, dict, float | None]:
    """The domain's stock MJCF tree without `<compiler settotalmass>` (which MuJoCo 3 deprecates),
    its assets, and the total mass it set (None where it set none)."""
    xml, assets = domain.model()
    root = ET.fromstring(xml)
    compiler = root.find("compiler")
    total = compiler.attrib.pop("settotalmass", None) if compiler is not None else None
    return root, assets, None if total is None else float(total)


@functools.lru_cache(maxsize=None)
def _mass_density(domain: Domain) -> float | None:
    """The density that reproduces a `settotalmass` model's default masses, or None.

    dm_control's cheetah fixes its total mass with `<compiler settotalmass>`, which would
    re-normalise a heavier torso away. Replacing it by the equivalent uniform density keeps
    the default scenario identical and lets a scaled torso add or remove mass.
    """
    root, assets, total = _stock_tree(domain)
    if total is None:
        return None
    free_mass = mujoco.Physics.from_xml_string(ET.tostring(root, encoding="unicode"), assets)
    return DEFAULT_DENSITY * total / float(free_mass.model.body_mass.sum())


# Which `size` entries are the radius and the length, by geom kind (the entry along the geom's own
# axis that lies closest to the torso axis is `along`): (radius entries, length entries).
_SIZE_ROLES = {
    "sphere": lambda along: ((0,), ()),
    "capsule": lambda along: ((0,), (1,)),
    "cylinder": lambda along: ((0,), (1,)),
    "ellipsoid": lambda along: (tuple(i for i in range(3) if i != along), (along,)),
    "box": lambda along: (tuple(i for i in range(3) if i != along), (along,)),
}
_SIZE_COUNT = {"sphere": 1, "capsule": 2, "cylinder": 2, "ellipsoid": 3, "box": 3}


@functools.lru_cache(maxsize=None)
def _compiled_torso_geoms(domain: Domain) -> dict[str, tuple[str, int, np.ndarray]]:
    """name -> (kind, own axis nearest `torso_axis`, compiled size) of each of `domain.torso_geoms`
    found in the compiled unscaled model (kinds and sizes may come from MJCF default classes)."""
    root, assets, _ = _stock_tree(domain)  # sizes do not depend on the total mass
    model = mujoco.Physics.from_xml_string(ET.tostring(root, encoding="unicode"), assets).model
    found = {}
    for name in domain.torso_geoms:
        index = mj.mj_name2id(model.ptr, mj.mjtObj.mjOBJ_GEOM, name)
        if index < 0:
            continue
        rotation = np.zeros(9)
        mj.mju_quat2Mat(rotation, model.geom_quat[index])
        along = int(np.argmax(np.abs(rotation.reshape(3, 3)[domain.torso_axis])))
        kind = mj.mjtGeom(int(model.geom_type[index])).name.removeprefix("mjGEOM_").lower()
        found[name] = (kind, along, model.geom_size[index].copy())
    return found


def _size_roles(domain: Domain, name: str, kind: str, along: int, fromto: bool) -> tuple[tuple, tuple]:
    """(radius entries, length entries) of torso geom `name`; entry 1 of a `fromto` capsule or
    cylinder is its segment."""
    if kind not in _SIZE_ROLES:
        raise ValueError(
            f"domain {domain.name!r}: torso geom {name!r} is of kind {kind}, whose size cannot be scaled; "
            f"torso_geoms may name spheres, capsules, cylinders, ellipsoids and boxes"
        )
    if fromto and kind not in ("capsule", "cylinder"):
        raise ValueError(f"domain {domain.name!r}: torso geom {name!r} ({kind}) is given by fromto; give it pos and size")
    radius, length = _SIZE_ROLES[kind](along)
    radius = radius if domain.torso_radius is None else domain.torso_radius
    length = length if domain.torso_length is None else domain.torso_length
    count = 1 if fromto else _SIZE_COUNT[kind]
    if max((*radius, *(i for i in length if not (fromto and i == 1))), default=-1) >= count:
        raise ValueError(
            f"domain {domain.name!r}: geom {name!r} ({kind}{', given by fromto' if fromto else ''}) has "
            f"{count} size entries, too few for torso_radius={radius}, torso_length={length}"
        )
    return radius, length


def scaled_model(domain: Domain, length_scale: float, size_scale: float) -> tuple[str, dict]:
    """The domain's MJCF with the torso's length and radius scaled, and its assets.

    What scales, with `a = domain.torso_axis` and the torso the body named `torso`:

    * Attachments (`length_scale`): coordinate `a` of the `pos` of each body and geom directly
      in the torso, and of both ends of each geom given by `fromto` (so the legs, head and
      pelvis stay at the torso's ends). A geom that is not a torso geom keeps its size.
    * Torso geoms (those named in `domain.torso_geoms`), by kind unless `torso_radius` and
      `torso_length` name the `size` entries:
      - sphere: radius × `size_scale`;
      - capsule, cylinder: radius × `size_scale`, length × `length_scale` — the half-length
        `size[1]`, or, for a geom given by `fromto`, the segment about its (moved) midpoint,
        whatever its direction;
      - ellipsoid, box: the half-size along the geom's own axis nearest `a` × `length_scale`,
        the two others × `size_scale`.
    * Nothing else: sites, cameras, lights, joints and the rest of the body tree keep theirs,
      and so do the task's thresholds (e.g. standing heights; see `env.ScenarioEnv`).

    MuJoCo recomputes masses and inertias from the new geometry. For an upright torso (`a` = 2)
    the torso body is lifted by the extra length below its origin, so that the legs start
    above the floor as by default.
    """
    root, assets, _ = _stock_tree(domain)
    density = _mass_density(domain)
    if density is not None:
        default = root.find("default")
        ET.SubElement(default, "geom", density=f"{density:.6g}")

    torso = root.find(".//worldbody/body[@name='torso']")
    if torso is None:
        raise ValueError(f"domain {domain.name!r}: the model has no worldbody body named 'torso'")
    axis = domain.torso_axis
    compiled = _compiled_torso_geoms(domain)
    lowest = 0.0
    resized = set()
    for child in torso:
        if child.tag not in ("geom", "body"):
            continue
        name = child.attrib.get("name")
        is_torso_geom = child.tag == "geom" and name in domain.torso_geoms and name in compiled
        if is_torso_geom:
            kind, along, compiled_size = compiled[name]
            radius, length = _size_roles(domain, name, kind, along, "fromto" in child.attrib)
        if "fromto" in child.attrib:
            original = _floats(child.attrib["fromto"])
            fromto = original.copy()
            lowest = min(lowest, fromto[axis], fromto[axis + 3])
            fromto[[axis, axis + 3]] *= length_scale
            if is_torso_geom and 1 in length:  # the segment itself: every direction, about its midpoint
                middle, half = (original[:3] + original[3:]) / 2, (original[3:] - original[:3]) / 2
                across = [i for i in range(3) if i != axis]
                for i in across:
                    fromto[i], fromto[i + 3] = middle[i] - half[i] * length_scale, middle[i] + half[i] * length_scale
            child.attrib["fromto"] = _format(fromto)
        if "pos" in child.attrib:
            pos = _floats(child.attrib["pos"])
            lowest = min(lowest, pos[axis])
            pos[axis] *= length_scale
            child.attrib["pos"] = _format(pos)
        if is_torso_geom:
            count = 1 if "fromto" in child.attrib else _SIZE_COUNT[kind]
            size = _floats(child.attrib["size"]) if "size" in child.attrib else compiled_size[:count].copy()
            for i in radius:
                size[i] *= size_scale
            for i in length:
                if i < len(size):  # not the segment of a `fromto` geom
                    lowest = min(lowest, -size[i])
                    size[i] *= length_scale
            child.attrib["size"] = _format(size)
            resized.add(name)
    missing = set(domain.torso_geoms) - resized
    if missing:
        raise ValueError(
            f"domain {domain.name!r}: torso_geoms {sorted(missing)} are not geoms of the body 'torso'"
        )
    if axis == 2:
        pos = _floats(torso.attrib.get("pos", "0 0 0"))
        pos[2] += max(0.0, length_scale - 1.0) * -lowest
        torso.attrib["pos"] = _format(pos)
    return ET.tostring(root, encoding="unicode"), assets


def scaled_model_xml(domain: Domain, length_scale: float, size_scale: float) -> str:
    """The XML of `scaled_model` (without the assets)."""
    return scaled_model(domain, length_scale, size_scale)[0]

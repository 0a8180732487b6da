"""Torso scaling by editing the domain's MJCF before compiling (DESIGN.md §2).

Editing `model.geom_size` after compiling changes neither mass nor where the joints sit; here
the XML itself changes, so MuJoCo recomputes mass and inertia from the new geometry, and
everything attached to the torso (legs, head, pelvis) moves with its ends.

Everything domain-specific comes from the `Domain` entry (see domains.py for what it must
provide): the unscaled `(xml, assets)` from `domain.model()`, the body named `torso`, the
axis of its length (`torso_axis`), the geoms to resize (`torso_geoms`) and which entries of
their `size` are the radius (`torso_radius`) and the half-length (`torso_length`).
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET

import numpy as np
from dm_control import mujoco

from mrcom_lightning.scenarios.domains import Domain

DEFAULT_DENSITY = 1000.0  # MuJoCo's default geom density (kg/m^3).


def _floats(text: str) -> np.ndarray:
    return np.array([float(x) for x in text.split()])


def _format(values: np.ndarray) -> str:
    return " ".join(f"{v:.6g}" for v in values)


@functools.lru_cache(maxsize=None)
def _mass_density(domain: Domain) -> float | None:
    """The density that reproduces a `settotalmass` model's default masses, or None.

    dm_control's cheetah fixes its total mass with `<compiler settotalmass>`, which would
    re-normalise a heavier torso away. Replacing it by the equivalent uniform density keeps
    the default scenario identical and lets a scaled torso add or remove mass.
    """
    xml, assets = domain.model()
    root = ET.fromstring(xml)
    compiler = root.find("compiler")
    if compiler is None or "settotalmass" not in compiler.attrib:
        return None
    total = float(compiler.attrib.pop("settotalmass"))
    free_mass = mujoco.Physics.from_xml_string(ET.tostring(root, encoding="unicode"), assets)
    return DEFAULT_DENSITY * total / float(free_mass.model.body_mass.sum())


def scaled_model(domain: Domain, length_scale: float, size_scale: float) -> tuple[str, dict]:
    """The domain's MJCF with the torso's length and radius scaled, and its assets.

    Along `domain.torso_axis`, the coordinates of the torso body's own geoms (`fromto` and
    `pos`) and the positions of the bodies attached to it are multiplied by `length_scale`. Of
    each geom named in `domain.torso_geoms`, the `size` entries `domain.torso_radius` are
    multiplied by `size_scale` and the entries `domain.torso_length` by `length_scale` (by
    default a capsule's radius `size[0]` and, unless it is given by `fromto`, its half-length
    `size[1]`). For an upright torso (z axis) the torso body is lifted by the extra length
    below its origin, so that the legs start above the floor as by default.
    """
    xml, assets = domain.model()
    root = ET.fromstring(xml)
    density = _mass_density(domain)
    if density is not None:
        root.find("compiler").attrib.pop("settotalmass")
        default = root.find("default")
        ET.SubElement(default, "geom", density=f"{density:.6g}")

    torso = root.find(".//worldbody/body[@name='torso']")
    if torso is None:
        raise ValueError(f"domain {domain.name!r}: the model has no worldbody body named 'torso'")
    axis = domain.torso_axis
    lowest = 0.0
    resized = set()
    for child in torso:
        if child.tag not in ("geom", "body"):
            continue
        if "fromto" in child.attrib:
            fromto = _floats(child.attrib["fromto"])
            lowest = min(lowest, fromto[axis], fromto[axis + 3])
            fromto[[axis, axis + 3]] *= length_scale
            child.attrib["fromto"] = _format(fromto)
        if "pos" in child.attrib:
            pos = _floats(child.attrib["pos"])
            lowest = min(lowest, pos[axis])
            pos[axis] *= length_scale
            child.attrib["pos"] = _format(pos)
        if child.tag == "geom" and child.attrib.get("name") in domain.torso_geoms:
            name = child.attrib["name"]
            size = _floats(child.attrib["size"])
            lengths = domain.torso_length
            if lengths is None:  # a capsule along its own z, unless given by `fromto`.
                lengths = (1,) if "fromto" not in child.attrib and len(size) > 1 else ()
            if max((*domain.torso_radius, *lengths), default=-1) >= len(size):
                raise ValueError(
                    f"domain {domain.name!r}: geom {name!r} has size {child.attrib['size']!r}, too short "
                    f"for torso_radius={domain.torso_radius}, torso_length={lengths}"
                )
            for i in domain.torso_radius:
                size[i] *= size_scale
            for i in lengths:
                lowest = min(lowest, -size[i])
                size[i] *= length_scale
            child.attrib["size"] = _format(size)
            resized.add(name)
    missing = set(domain.torso_geoms) - resized
    if missing:
        raise ValueError(
            f"domain {domain.name!r}: torso_geoms {sorted(missing)} are not geoms (with a size) of the body 'torso'"
        )
    if axis == 2:
        pos = _floats(torso.attrib.get("pos", "0 0 0"))
        pos[2] += max(0.0, length_scale - 1.0) * -lowest
        torso.attrib["pos"] = _format(pos)
    return ET.tostring(root, encoding="unicode"), assets


def scaled_model_xml(domain: Domain, length_scale: float, size_scale: float) -> str:
    """The XML of `scaled_model` (without the assets)."""
    return scaled_model(domain, length_scale, size_scale)[0]

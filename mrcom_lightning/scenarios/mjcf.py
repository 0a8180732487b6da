"""Torso scaling by editing the domain's MJCF before compiling (DESIGN.md §2).

Editing `model.geom_size` after compiling changes neither mass nor where the joints sit; here
the XML itself changes, so MuJoCo recomputes mass and inertia from the new geometry, and
everything attached to the torso (legs, head, pelvis) moves with its ends.
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
    xml, assets = domain.module.get_model_and_assets()
    root = ET.fromstring(xml)
    compiler = root.find("compiler")
    if compiler is None or "settotalmass" not in compiler.attrib:
        return None
    total = float(compiler.attrib.pop("settotalmass"))
    free_mass = mujoco.Physics.from_xml_string(ET.tostring(root, encoding="unicode"), assets)
    return DEFAULT_DENSITY * total / float(free_mass.model.body_mass.sum())


def scaled_model_xml(domain: Domain, length_scale: float, size_scale: float) -> str:
    """The domain's MJCF with the torso's length and radius scaled.

    Along `domain.torso_axis`, the coordinates of the torso's own geoms and the positions of
    the bodies and geoms attached to it are multiplied by `length_scale`; the torso geom's
    radius by `size_scale`. For an upright torso (z axis) the torso body is lifted by the
    extra length below its origin, so that the legs start above the floor as by default.
    """
    xml, _ = domain.module.get_model_and_assets()
    root = ET.fromstring(xml)
    density = _mass_density(domain)
    if density is not None:
        root.find("compiler").attrib.pop("settotalmass")
        default = root.find("default")
        ET.SubElement(default, "geom", density=f"{density:.6g}")

    torso = root.find(".//worldbody/body[@name='torso']")
    axis = domain.torso_axis
    lowest = 0.0
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
        if child.tag == "geom" and child.attrib.get("name") == "torso":
            size = _floats(child.attrib["size"])
            size[0] *= size_scale
            if "fromto" not in child.attrib and len(size) > 1:  # capsule along its own z.
                lowest = min(lowest, -size[1])
                size[1] *= length_scale
            child.attrib["size"] = _format(size)
    if axis == 2:
        pos = _floats(torso.attrib.get("pos", "0 0 0"))
        pos[2] += max(0.0, length_scale - 1.0) * -lowest
        torso.attrib["pos"] = _format(pos)
    return ET.tostring(root, encoding="unicode")

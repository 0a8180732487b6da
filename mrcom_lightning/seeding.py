"""Seeding: every random draw of the project comes from a config seed and the draw's place.

One scheme: numpy's `SeedSequence` over (seed, place...), where a place is made of integers
and names (names are hashed with CRC-32, stable across runs and machines). The same seed and
place always give the same stream; different places give independent ones.
"""

from __future__ import annotations

import zlib

import numpy as np


def _entropy(parts: tuple[int | str, ...]) -> list[int]:
    return [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]


def derive_seed(*parts: int | str) -> int:
    """A 32-bit seed for the place `parts` (e.g. `derive_seed(seed, "eval", episode)`)."""
    return int(np.random.SeedSequence(_entropy(parts)).generate_state(1)[0])


def generator(*parts: int | str) -> np.random.Generator:
    """A numpy generator for the place `parts`; the same as `np.random.default_rng(list(parts))`
    for integer places."""
    return np.random.default_rng(np.random.SeedSequence(_entropy(parts)))

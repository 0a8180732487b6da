"""The meta-scenario set: seeded train, in-distribution and out-of-distribution draws (DESIGN.md §2)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from mrcom_lightning.scenarios.domains import DOMAINS, draw_key, unknown_domain
from mrcom_lightning.seeding import generator
from mrcom_lightning.scenarios.spec import OBS_FNS, ScenarioSpec

# New splits come last, so that adding one leaves the earlier splits' draws unchanged.
SPLITS = ("train", "test_id", "test_ood", "val", "test_ood_dynamics", "test_ood_objective")
TEST_SPLITS = ("test_id", "test_ood", "test_ood_dynamics", "test_ood_objective")
# What each split draws out of the training ranges: (dynamics, objective).
_OUT_OF_RANGE = {"test_ood": (True, True), "test_ood_dynamics": (True, False), "test_ood_objective": (False, True)}


@dataclasses.dataclass(frozen=True)
class MetaScenarioSet:
    """Draws scenarios from dynamics (α) and objective (β) ranges.

    Train, validation and in-distribution test scenarios draw torso scales from [1-α, 1+α] and target
    speeds from [β_lo, β_hi]; out-of-distribution ones draw scales from
    [1-2α, 1-α) ∪ (1+α, 1+2α] and speeds from [β_lo-w, β_lo) ∪ (β_hi, β_hi+w], w = β_hi-β_lo
    (kept above zero): `test_ood` both at once, `test_ood_dynamics` only the scales (speeds in
    range) and `test_ood_objective` only the speed (scales in range), so that each kind of
    extrapolation can be reported apart (`ood_kind`). Each split and domain draws from its own
    seeded stream (`domains.draw_key`), so adding test scenarios never changes the training ones,
    and registering or adding a domain never changes another domain's scenarios.

    Args:
        domains: dm_control domains to draw from.
        alpha: dynamics range half-width in (0, 0.5); None keeps the default dynamics.
        beta: (β_lo, β_hi), target speed as a fraction of the domain's fastest speed; equal
            ends fix the objective.
        obs_fn: observation function of every scenario.
        num_train: training scenarios per domain.
        num_test_id: in-distribution test scenarios per domain.
        num_test_ood: out-of-distribution test scenarios per domain (dynamics and objective outside).
        num_test_ood_dynamics: test scenarios per domain with only the dynamics outside the ranges.
        num_test_ood_objective: test scenarios per domain with only the objective outside the ranges.
        num_val: validation scenarios per domain (in distribution, held out from training).
        seed: seeds every draw.
    """

    domains: Sequence[str] = ("hopper", "walker", "cheetah")
    alpha: Optional[float] = 0.2
    beta: tuple[float, float] = (0.3, 0.7)
    obs_fn: str = "none"
    num_train: int = 8
    num_test_id: int = 2
    num_test_ood: int = 2
    num_val: int = 2
    num_test_ood_dynamics: int = 0
    num_test_ood_objective: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "beta", tuple(float(b) for b in self.beta))
        if not self.domains:
            raise ValueError("scenarios.domains must name at least one domain, got an empty list")
        for domain in self.domains:
            if domain not in DOMAINS:
                raise unknown_domain(domain, "scenarios.domains")
        if self.alpha is not None and not 0.0 < self.alpha < 0.5:
            raise ValueError(f"scenarios.alpha must be in (0, 0.5) (or null for fixed dynamics), got {self.alpha!r}")
        if len(self.beta) != 2:
            raise ValueError(f"scenarios.beta must be a pair (beta_lo, beta_hi), got {self.beta!r}")
        lo, hi = self.beta
        if lo <= 0:
            raise ValueError(f"scenarios.beta must be positive: beta_lo > 0, got beta=({lo}, {hi})")
        if hi < lo:
            raise ValueError(f"scenarios.beta is an empty range: beta_hi must be >= beta_lo, got beta=({lo}, {hi})")
        if self.obs_fn not in OBS_FNS:
            raise ValueError(f"scenarios.obs_fn must be one of {list(OBS_FNS)}, got {self.obs_fn!r}")
        for split in SPLITS:
            if getattr(self, f"num_{split}") < 0:
                raise ValueError(f"scenarios.num_{split} must be >= 0, got {getattr(self, f'num_{split}')!r}")
        if self.alpha is None and self.num_test_ood_dynamics > 0:
            raise ValueError("scenarios.num_test_ood_dynamics needs a dynamics range: set scenarios.alpha (it is null)")
        if hi == lo and self.num_test_ood_objective > 0:
            raise ValueError(f"scenarios.num_test_ood_objective needs an objective range: beta=({lo}, {hi}) fixes it")

    def _rng(self, split: str, domain: str) -> np.random.Generator:
        # Keyed by the domain's own stable key, never by what else is registered.
        return generator(self.seed, SPLITS.index(split), draw_key(domain))

    def _scale(self, rng: np.random.Generator, ood: bool) -> float:
        if self.alpha is None:
            return 1.0
        a = self.alpha
        if not ood:
            return float(rng.uniform(1 - a, 1 + a))
        offset = float(rng.uniform(a, 2 * a))
        # The open ends (1 ± α itself) have probability zero under a continuous draw; nudge them.
        offset = max(offset, np.nextafter(a, 1.0))
        return 1 + offset if rng.random() < 0.5 else 1 - offset

    def _speed(self, rng: np.random.Generator, ood: bool) -> float:
        lo, hi = self.beta
        if not ood or hi == lo:
            return float(rng.uniform(lo, hi))
        width = hi - lo
        if rng.random() < 0.5 or lo - width <= 0:
            return float(hi + max(rng.uniform(0, width), np.nextafter(0, 1)))
        return float(lo - max(rng.uniform(0, width), np.nextafter(0, 1)))

    def draw(self, split: str) -> list[ScenarioSpec]:
        """The scenarios of `split` (one of `SPLITS`), domain by domain."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        count = getattr(self, f"num_{split}")
        ood_dynamics, ood_objective = _OUT_OF_RANGE.get(split, (False, False))
        specs = []
        for domain in self.domains:
            rng = self._rng(split, domain)
            for _ in range(count):
                specs.append(
                    ScenarioSpec(
                        domain=domain,
                        length_scale=self._scale(rng, ood_dynamics),
                        size_scale=self._scale(rng, ood_dynamics),
                        target_speed=self._speed(rng, ood_objective),
                        obs_fn=self.obs_fn,
                        seed=int(rng.integers(2**31 - 1)),
                    )
                )
        return specs

    @property
    def train(self) -> list[ScenarioSpec]:
        return self.draw("train")

    @property
    def val(self) -> list[ScenarioSpec]:
        return self.draw("val")

    @property
    def test_id(self) -> list[ScenarioSpec]:
        return self.draw("test_id")

    @property
    def test_ood(self) -> list[ScenarioSpec]:
        return self.draw("test_ood")

    def in_train_range(self, spec: ScenarioSpec) -> bool:
        """Whether `spec`'s dynamics and objective lie inside the training ranges."""
        return self.ood_kind(spec) == "in_distribution"

    def ood_kind(self, spec: ScenarioSpec) -> str:
        """Which of the paper's generalisation claims a scenario tests, against the training ranges:
        `in_distribution` (interpolation: dynamics and objective inside them), `dynamics` (a torso
        scale outside [1-α, 1+α], the target speed inside), `objective` (the target speed outside
        [β_lo, β_hi], the dynamics inside) or `both` (extrapolation in both)."""
        a = 0.0 if self.alpha is None else self.alpha
        lo, hi = self.beta
        dynamics = not (1 - a <= spec.length_scale <= 1 + a and 1 - a <= spec.size_scale <= 1 + a)
        objective = not lo <= spec.target_speed <= hi
        return {(False, False): "in_distribution", (True, False): "dynamics", (False, True): "objective"}.get(
            (dynamics, objective), "both"
        )

"""Naming target scenarios: `SPLIT/DOMAIN/INDEX` picks a scenario of a meta-scenario set."""

from __future__ import annotations

from mrcom_lightning.scenarios import SPLITS, MetaScenarioSet, ScenarioSpec


def resolve_targets(scenarios: MetaScenarioSet, selectors: list[str]) -> dict[str, ScenarioSpec]:
    """`{"test_ood/hopper-0": spec, ...}` for selectors like `test_ood/hopper/0`; `*` as the domain
    means every domain of the set."""
    targets: dict[str, ScenarioSpec] = {}
    for selector in selectors:
        parts = selector.split("/")
        if len(parts) != 3 or parts[0] not in SPLITS:
            raise ValueError(f"target must look like SPLIT/DOMAIN/INDEX with SPLIT in {list(SPLITS)}, got {selector!r}")
        split, domain, index = parts
        domains = scenarios.domains if domain == "*" else (domain,)
        drawn = scenarios.draw(split)
        for name in domains:
            specs = [spec for spec in drawn if spec.domain == name]
            if name not in scenarios.domains:
                raise ValueError(f"target {selector!r}: domain {name!r} is not one of {list(scenarios.domains)}")
            if not index.isdigit() or int(index) >= len(specs):
                raise ValueError(f"target {selector!r}: index must be in 0..{len(specs) - 1} for {split}/{name}")
            targets[f"{split}/{name}-{index}"] = specs[int(index)]
    return targets

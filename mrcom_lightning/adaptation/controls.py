"""The controls every adaptation claim is read against (DESIGN.md §5), defined once.

A gain of the adaptation loop with a world model could come from three things besides the
model's predictions: more SAC updates per real step, half-imagined batches of copies with new
actions (data augmentation), or SAC's critic breaking at many updates per step. Each control
removes one explanation:

* `null`: the same loop, fine-tuning and pool with a null model, whose imagined transitions repeat
  the real start's observation and reward (`rollout.imagination="null"`);
* `sac`: plain SAC, one update per real step;
* `sac_utd`: plain SAC at the model loop's updates per real step (`sac.updates_per_step` +
  `replay.model_updates_per_step`);
* `droq`: SAC with DroQ's regularised critics (dropout 0.01 and LayerNorm; Hiraoka et al. 2022),
  a model-free agent made for many updates per step, at the same updates per real step.

`mrcom study --adapt true` and benchmarks/adapt_efficiency.py run them beside the world models.
"""

from __future__ import annotations

from mrcom_lightning.adaptation.settings import AdaptationConfig

CONTROLS = ("null", "sac", "sac_utd", "droq")
DROQ = {"critic_dropout": 0.01, "critic_layer_norm": True}
"""DroQ's critic regularisation, as `SACConfig` fields."""
IMAGINATION_CONTROLS = ("null", "naive_reward", "naive_obs")
"""Controls of the model loop that swap predictions for the naive forecast (`naive_*`: diagnostics, one half each)."""


PLAIN = {"critic_dropout": 0.0, "critic_layer_norm": False}
"""Plain SAC's critics, as `SACConfig` fields (the loop's default critics are DroQ's)."""


def _sac(fields: dict) -> dict:
    """`SACConfig` fields as `AdaptationConfig.replace` keys."""
    return {f"sac.{key}": value for key, value in fields.items()}


def plain_sac(loop: AdaptationConfig) -> AdaptationConfig:
    """`loop`'s settings with plain SAC's critics: the baseline of `mrcom adapt` and the callback."""
    return loop.replace(**_sac(PLAIN))


def updates_per_step(loop: AdaptationConfig) -> int:
    """SAC updates per real step of the model loop while its pool holds imagined data."""
    return loop.sac.updates_per_step + loop.replay.model_updates_per_step


def control_config(name: str, loop: AdaptationConfig, base: AdaptationConfig | None = None) -> tuple[bool, AdaptationConfig]:
    """(uses the world model, settings) of control `name`, given the model loop's settings `loop`.

    The model-free controls start from `base` (default `loop`): only its budget, evaluation and
    `sac` settings matter to them (a run without a model reads nothing else)."""
    base = loop if base is None else base
    utd = {"sac.updates_per_step": updates_per_step(loop)}
    if name in IMAGINATION_CONTROLS:
        return True, loop.replace(**{"rollout.imagination": name})
    if name == "sac":
        return False, base.replace(**{"sac.updates_per_step": 1}, **_sac(PLAIN))
    if name == "sac_utd":
        return False, base.replace(**utd, **_sac(PLAIN))
    if name == "droq":
        return False, base.replace(**utd, **_sac(DROQ))
    raise ValueError(f"unknown adaptation control {name!r}; choose from {list(CONTROLS + IMAGINATION_CONTROLS[1:])}")

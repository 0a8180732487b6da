"""`mrcom study --adapt true`: every trained cell adapts to the targets; the controls beside them.

After a variant × seed cell of the study has trained and been tested, its best checkpoint adapts
to each target of `--adapt_targets` (SPLIT/DOMAIN/INDEX of the study's scenario set) with the loop
settings of `--adapt_config` (default configs/adapt/loop.yaml, the measured defaults) and
`--adapt_overrides`, with adaptation seed = the cell's seed. The controls of adaptation/controls.py
run once per target and seed; `null` on the MrCoM cell's model of that seed.

Each adaptation is one unit of `launch.run_cells` (local processes or Ray tasks, one torch thread
each by default): its result is written as soon as it ends, to `<cell>/adapt/<split>-<domain>-<index>.json`
or `<root>/controls/<control>-seed<seed>/<split>-<domain>-<index>.json`, with the digest of what
decides it (settings, target, seed, how the world model was made, the source of the code that adapts:
`ADAPTATION_CODE`). A re-run skips every unit whose file has the same digest and redoes one whose
settings, world model or code changed. The world model enters by its recipe (`model_recipe`: the
cell's fit config and the settings its checkpoint holds), not its bytes or weights: the same recipe
retrained on another machine can give other weights (the same code collected other data on two
machines: docs/table1.md), so a study longer than one machine's session resumes from its finished units. Each record
also holds the weights' digest (`checkpoint_weights`); the report names any cell whose units adapted
more than one realisation of its model. adapt_table.py writes the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

from mrcom_lightning import launch
from mrcom_lightning.adaptation.controls import CONTROLS, control_config, updates_per_step
from mrcom_lightning.adaptation.settings import AdaptationConfig
from mrcom_lightning.checkpoints import load_module
from mrcom_lightning.scenarios import SPLITS, ScenarioSpec

ADAPT = "adapt"  # in a cell's folder: its adaptations
CONTROL_FOLDER = "controls"  # in the study's folder: the controls', one folder per control and seed
CHECKPOINT = Path("checkpoints") / "best.ckpt"  # in a cell's folder: the one `mrcom test` scored
FIT_CONFIG = "config-fit.yaml"  # in a cell's folder: the config `mrcom fit` trained it with
DEFAULT_TARGETS = ["test_id/*/0", "test_ood/*/0"]
DEFAULT_LOOP = "configs/adapt/loop.yaml"
REFERENCE = "mrcom"
# The modules whose source decides an adaptation's result: the loop and its data, the agent, the
# world models and how a checkpoint loads into them, the scenarios' physics. Editing one redoes the units.
ADAPTATION_CODE = ("adaptation", "agents", "models", "scenarios", "datamodules", "batch", "checkpoints", "metrics",
                   "module", "seeding", "training")


def add_arguments(parser) -> None:
    """`mrcom study`'s adaptation options."""
    parser.add_argument("--adapt", type=bool, default=False,
                        help="also adapt every trained cell's model to --adapt_targets, run the controls beside them, "
                             "and write the adaptation table (report_adapt.md, docs/table1.md)")  # fmt: skip
    parser.add_argument(
        "--adapt_targets",
        type=list[str],
        default=DEFAULT_TARGETS,
        help="targets as SPLIT/DOMAIN/INDEX of the study's scenario set (`*`: every domain)",
    )
    parser.add_argument(
        "--adapt_config", type=str, default=DEFAULT_LOOP, help="the adaptation loop's settings, a `mrcom adapt --config` file"
    )
    parser.add_argument("--adapt_overrides", type=list[str], default=[],
                        help="`mrcom adapt` arguments over --adapt_config, `--adaptation.*` only "
                             "(e.g. [--adaptation.env_steps, 100000])")  # fmt: skip
    # (str | None: YAML reads an unquoted `null` as None; check_arguments names it back)
    parser.add_argument("--controls", type=list[str | None], default=list(CONTROLS), help=f"any of {list(CONTROLS)}")
    parser.add_argument("--adapt_device", type=str, default="cpu", help="torch device of the adaptations")


def read_loop(path: str, overrides: list[str]) -> AdaptationConfig:
    """The loop settings `mrcom adapt --config <path> <overrides>` would run with; raises ValueError
    for an override that is not an `--adaptation.*` option or a value the loop refuses."""
    from mrcom_lightning.adaptation.cli import adapt_parser
    from mrcom_lightning.cli import resolve_configs

    foreign = [o for o in overrides if o.startswith("--") and not o.startswith("--adaptation.")]
    if foreign:
        raise ValueError(f"--adapt_overrides takes `--adaptation.*` options only, got {foreign}")
    path = resolve_configs(["--config", path])[1]  # as `mrcom adapt --config` finds it: here, else the packaged one
    parser = adapt_parser()
    parser.exit_on_error = False
    try:
        return parser.instantiate(parser.parse_args(["--config", path, "--ckpt_path", "-", *overrides])).adaptation
    except (argparse.ArgumentError, TypeError, ValueError) as err:  # a parse error, or a setting's own check
        message = " ".join(str(err).split())[:300]
        raise ValueError(f"--adapt_config {path} with --adapt_overrides {overrides}: {message}") from None


def check_arguments(args) -> None:
    """Refuses, before anything starts, adaptation options that cannot work (ValueError)."""
    args.controls = ["null" if control is None else control for control in args.controls]
    unknown = [c for c in args.controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"--controls: unknown {unknown}; allowed: {list(CONTROLS)}")
    for selector in args.adapt_targets:
        parts = selector.split("/")
        if len(parts) != 3 or parts[0] not in SPLITS or not parts[2].isdigit():
            raise ValueError(f"--adapt_targets: each must look like SPLIT/DOMAIN/INDEX with SPLIT in {list(SPLITS)}, "
                             f"got {selector!r}")  # fmt: skip
    read_loop(args.adapt_config, args.adapt_overrides)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One adaptation: `method` (a variant or a control) on `target` with `seed`, its result at `path`."""

    method: str
    target: str  # resolve_targets' name, e.g. test_ood/cheetah-0
    spec: ScenarioSpec
    seed: int
    use_model: bool
    config: AdaptationConfig
    checkpoint: str | None  # the world model adapted (None: model-free)
    model_recipe: str | None  # model_recipe() of the checkpoint
    path: Path
    code: str  # code_digest() when the study was planned

    @property
    def name(self) -> str:
        return f"{self.method}-{self.path.stem}-seed{self.seed}"

    @property
    def key(self) -> str:
        """The digest of what decides the result: a stored one with another key is redone."""
        what = [self.use_model, repr(self.config), repr(self.spec), self.seed, self.model_recipe, self.code]
        return hashlib.sha1(json.dumps(what).encode()).hexdigest()[:12]

    def stored(self) -> dict | None:
        """The stored result of this unit, if its key matches."""
        try:
            record = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return record if record.get("key") == self.key else None


def model_recipe(checkpoint: Path) -> str:
    """The digest of how a cell's world model was made: the fit config that `mrcom fit` saved in the
    cell (`config-fit.yaml` beside the checkpoints' folder, where there is one) and the model's,
    data's and seed settings the checkpoint holds; not its weights, run id or trainer state."""
    from mrcom_lightning.checkpoints import load_checkpoint

    saved, sha = load_checkpoint(checkpoint), hashlib.sha1()
    fit_config = Path(checkpoint).parent.parent / FIT_CONFIG
    if fit_config.is_file():
        sha.update(fit_config.read_bytes())
    for settings in ("hyper_parameters", "datamodule_hyper_parameters", "mrcom_seed"):
        sha.update(repr(saved.get(settings)).encode())
    return sha.hexdigest()[:12]


def weights_digest(checkpoint: Path) -> str:
    """The digest of a checkpoint's weights (names, dtypes, shapes and values): which realisation of
    its recipe a unit adapted."""
    from mrcom_lightning.checkpoints import load_checkpoint

    sha = hashlib.sha1()
    for name, value in sorted(load_checkpoint(checkpoint)["state_dict"].items()):
        sha.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        sha.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()[:12]


def adaptation_sources() -> list[tuple[str, Path]]:
    """`ADAPTATION_CODE`'s Python files as (name in the package, path), wherever each is installed."""
    files = []
    for name in ADAPTATION_CODE:
        spec = importlib.util.find_spec(f"mrcom_lightning.{name}")
        if spec.submodule_search_locations:  # a package: every module under its folder
            folder = Path(spec.submodule_search_locations[0])
            files += [(f"{name}/{path.relative_to(folder).as_posix()}", path) for path in sorted(folder.rglob("*.py"))]
        else:
            files.append((f"{name}.py", Path(spec.origin)))
    return files


def code_digest(files: list[tuple[str, Path]] | None = None) -> str:
    """The digest of the names and bytes of `files` (default: `adaptation_sources()`)."""
    sha = hashlib.sha1()
    for name, path in adaptation_sources() if files is None else files:
        sha.update(name.encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()[:12]


def cell_targets(checkpoint: Path, selectors: list[str]) -> dict[str, ScenarioSpec]:
    """The targets named by `selectors` in the scenario set the checkpoint was trained with."""
    from mrcom_lightning.adaptation.targets import resolve_targets
    from mrcom_lightning.checkpoints import load_checkpoint

    scenarios = load_checkpoint(checkpoint)["datamodule_hyper_parameters"]["dataset"].scenarios
    return resolve_targets(scenarios, selectors)


def plan(cells: dict[tuple[str, int], Path], root: Path, selectors: list[str], loop: AdaptationConfig,
         controls: list[str]) -> tuple[list[Unit], list[str]]:  # fmt: skip
    """The units of every trained cell ((variant, seed) -> its folder; trained: its test metrics and
    best checkpoint are there) and the controls of every seed with one; and notes on what cannot run."""
    from mrcom_lightning.tracking import TEST_METRICS

    units, notes, code = [], [], code_digest()
    for seed in sorted({s for _, s in cells}):
        trained = {v: folder / CHECKPOINT for (v, s), folder in cells.items()
                   if s == seed and (folder / TEST_METRICS).is_file() and (folder / CHECKPOINT).is_file()}  # fmt: skip
        missing = [v for (v, s) in cells if s == seed and v not in trained]
        if missing:
            notes.append(f"seed {seed}: no trained cell of {missing} yet: not adapted")
        if not trained:
            continue
        digests = {v: model_recipe(path) for v, path in trained.items()}
        targets = {v: cell_targets(path, selectors) for v, path in trained.items()}
        for variant, path in trained.items():
            for target, spec in targets[variant].items():
                file = path.parent.parent / ADAPT / f"{target.replace('/', '-')}.json"
                units.append(Unit(variant, target, spec, seed, True, loop, str(path), digests[variant], file, code))
        # The controls' targets: from MrCoM's cell of the seed (every cell shares the scenario set).
        source = REFERENCE if REFERENCE in trained else next(iter(trained))
        for control in controls:
            use_model, config = control_config(control, loop)
            if use_model and REFERENCE not in trained:
                notes.append(f"seed {seed}: control {control} adapts MrCoM's model, whose cell is not trained: not run")
                continue
            checkpoint = trained[REFERENCE] if use_model else None
            for target, spec in targets[source].items():
                file = root / CONTROL_FOLDER / f"{control}-seed{seed}" / f"{target.replace('/', '-')}.json"
                units.append(Unit(control, target, spec, seed, use_model, config, str(checkpoint) if checkpoint else None,
                                  digests[REFERENCE] if use_model else None, file, code))  # fmt: skip
    return units, notes


def run_unit(unit: Unit, device: str) -> dict:
    """The function of a unit's cell: one adaptation, its record written to `unit.path` at once."""
    from mrcom_lightning.adaptation.loop import adapt, method_name

    module = load_module(unit.checkpoint) if unit.use_model else None
    result = adapt(unit.spec, unit.config, module, unit.use_model, unit.seed, progress=False, device=device)
    summary = result.summary()
    record = {
        "method": unit.method, "target": unit.target, "spec": str(unit.spec), "seed": unit.seed,
        "loop": method_name(unit.config, unit.use_model), "steps": result.eval_steps, "scores": result.eval_scores,
        "final": result.score, "best": summary["best_score"], "curve_mean": summary["curve_mean"],
        "collapsed": summary["collapsed"], "seconds": summary["seconds"], "summary": summary,
        "updates_per_step": updates_per_step(unit.config) if unit.use_model else unit.config.sac.updates_per_step,
        "settings": dataclasses.asdict(unit.config),
        "settings_digest": hashlib.sha1(repr(unit.config).encode()).hexdigest()[:12],
        "checkpoint": unit.checkpoint, "model_recipe": unit.model_recipe,
        "checkpoint_weights": weights_digest(Path(unit.checkpoint)) if unit.checkpoint else None, "device": device, "code": unit.code, "key": unit.key,
        "metrics": {k: v for k, v in result.metrics.items() if k.startswith("charts/")},
    }  # fmt: skip
    unit.path.parent.mkdir(parents=True, exist_ok=True)
    partial = unit.path.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    os.replace(partial, unit.path)
    print(f"{unit.name}: final {result.score:.2f}, best {summary['best_score']:.2f} in {result.seconds:.0f}s", flush=True)
    return {"final": result.score, "path": str(unit.path)}


def run_units(units: list[Unit], args) -> launch.Summary:
    """Every unit without a stored result, seed by seed (so that an interrupted study leaves whole
    paired blocks), the model's units first within a seed; `args`' launch settings."""
    pending = sorted((u for u in units if u.stored() is None), key=lambda u: (u.seed, not u.use_model))
    cells = [launch.Cell(u.name, u.path.parent / "logs" / u.path.stem, (u, args.adapt_device),
                         cpus=args.cpus_per_cell, gpus=args.gpus_per_cell, group=u.method) for u in pending]  # fmt: skip
    stale = sum(u.path.is_file() for u in pending)
    redone = f" ({stale} stored under other settings, checkpoints or code: redone)" if stale else ""
    print(f"adaptations: {len(units) - len(pending)} of {len(units)} stored, {len(pending)} to run{redone}", flush=True)
    options = {key: getattr(args, key) for key in ("workers", "launcher", "address")}
    return launch.run_cells(cells, run_unit, skip_done=False, label="adaptations", **options)


def records(units: list[Unit]) -> list[dict]:
    """The stored results of the units (those with a matching key)."""
    return [record for unit in units if (record := unit.stored()) is not None]


def behaviour_scores(units: list[Unit], steps: int) -> dict[tuple[str, str], dict[int, float]]:
    """(policy, target) -> episode index -> the score of the study dataset's behaviour episode on the
    target over its first `steps` steps (the return in percent of its maximum, the adaptation's unit):
    what the behaviour policies, trained on the training scenarios, reach there. Read from the data
    the models were trained with (the dataset root of a unit's checkpoint); empty without one."""
    from mrcom_lightning.checkpoints import load_checkpoint
    from mrcom_lightning.data.episodes import EpisodeStore

    checkpoint = next((u.checkpoint for u in units if u.checkpoint), None)
    if checkpoint is None:
        return {}
    store = EpisodeStore(load_checkpoint(checkpoint)["datamodule_hyper_parameters"]["dataset"].root)
    cells = {}
    for target, spec in {u.target: u.spec for u in units}.items():
        for info in store.index(spec.id):
            reward = store.read(info.path).reward[:steps]
            cells.setdefault((info.policy, target), {})[info.index] = 100.0 * float(reward.sum()) / steps
    return cells


def settings_text(args, loop: AdaptationConfig) -> str:
    """The table's settings line: the loop's file, overrides and budget."""
    overrides = f" {' '.join(args.adapt_overrides)}" if args.adapt_overrides else ""
    return (f"`--adapt_config {args.adapt_config}{overrides}`: {loop.env_steps} real steps, {loop.episode_steps}-step "
            f"episodes, evaluation every {loop.eval_every} steps over {loop.eval_episodes} episodes, "
            f"{loop.sac.warmup_steps} warm-up steps, {updates_per_step(loop)} SAC updates per real step with the model "
            f"({loop.sac.updates_per_step} + {loop.replay.model_updates_per_step} while its pool holds imagined data)")  # fmt: skip

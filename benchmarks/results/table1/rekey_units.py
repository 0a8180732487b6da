"""One-off rekeys of the CPU table's finished units, kept beside them for their provenance.

2026-12-06 (commit a54a43f): the key gained the digest of the adaptation code. 2026-12-06, second
(this version): the world model enters the key by its recipe (`study_adapt.model_recipe`: the cell's
fit config and the settings its checkpoint holds) instead of the checkpoint file's bytes, which held
an MLflow run id and so never matched a retrained cell. The 74 units finished on 2026-12-05/06 were
made with cells that the session of 2026-12-06 lost with its machine; retrained there by the same
command and code (no file of the training path changed since the cells were first trained, at
37a9565), they give the same recipe but other weights: the data collected on that machine differ from
the first machine's although the same code wrote both (docs/table1.md, "Results").

Run after the study has retrained its cells, before it adapts: each unit whose stored key is the
previous key of its settings, target, seed, stored checkpoint digest and code (so all of these but the
checkpoint are the current plan's) gets the new key, `model_recipe`, `checkpoint_weights: null`
(the lost file's weights are unknown; the report then names its cell as adapted in two realisations
where new units join it) and keeps the old digest as `checkpoint_file_digest`. The model-free units'
key does not change. Any other file is left alone and named.

    python benchmarks/results/table1/rekey_units.py --config configs/study/adapt_cpu.yaml --root runs/study
"""

import hashlib
import json
import sys
from pathlib import Path

from mrcom_lightning import study, study_adapt

args = study.study_parser().parse_args(sys.argv[1:])
study_adapt.check_arguments(args)  # (as `mrcom study` does: YAML reads the control `null` as None)
root = Path(args.root)
cells = {(v, seed): root / study.cell_name(study.VARIANTS[v], seed) for v in args.variants for seed in args.seeds}
loop = study_adapt.read_loop(args.adapt_config, args.adapt_overrides)
units, _ = study_adapt.plan(cells, root, args.adapt_targets, loop, args.controls)
rekeyed = same = 0
for unit in units:
    if not unit.path.is_file():
        continue
    record = json.loads(unit.path.read_text())
    if record.get("key") == unit.key:
        same += 1
        continue
    old = [unit.use_model, repr(unit.config), repr(unit.spec), unit.seed, record.get("checkpoint_digest"), unit.code]
    if unit.use_model and record.get("key") == hashlib.sha1(json.dumps(old).encode()).hexdigest()[:12]:
        record["checkpoint_file_digest"] = record.pop("checkpoint_digest")
        record |= {"model_recipe": unit.model_recipe, "checkpoint_weights": None, "key": unit.key}
        unit.path.write_text(json.dumps(record))
        rekeyed += 1
    else:
        print(f"left alone (another key): {unit.path}")
print(f"rekeyed {rekeyed}, already current {same}, of {len(units)} units (code {units[0].code if units else '-'})")

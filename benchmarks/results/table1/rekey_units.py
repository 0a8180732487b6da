"""One-off (2026-12-06): the CPU table's units were stored before the study's adaptation key held
the digest of the adaptation code (`study_adapt.code_digest`). Run at the commit that added it,
whose adaptation code is the code that made every unit (the last change to a file of
`study_adapt.ADAPTATION_CODE` before the merge is a00e9b1, 2026-12-05 19:19; the first unit ended
at 23:22 and none of those files changed while the study ran): each unit whose stored key is the old
key of its settings, target, seed and checkpoint gets the new key and the `code` field; any other
file is left alone and named.

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
rekeyed = 0
for unit in units:
    if not unit.path.is_file():
        continue
    record = json.loads(unit.path.read_text())
    old = [unit.use_model, repr(unit.config), repr(unit.spec), unit.seed, unit.checkpoint_digest]
    if record.get("key") == hashlib.sha1(json.dumps(old).encode()).hexdigest()[:12]:
        record["code"], record["key"] = unit.code, unit.key
        unit.path.write_text(json.dumps(record))
        rekeyed += 1
    elif record.get("key") != unit.key:
        print(f"left alone (another key): {unit.path}")
print(f"rekeyed {rekeyed} of {len(units)} units (code {units[0].code if units else '-'})")

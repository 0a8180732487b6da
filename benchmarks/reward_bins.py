"""Reward head: DreamerV3's symlog bins against bins spread linearly over dm_control's [0, 1] rewards.

The reward head predicts a two-hot distribution over `reward_bins` = 255 bins. DreamerV3's bins
are evenly spaced in symlog space over [-20, 20]: any reward scale fits, but dm_control's rewards,
all in [0, 1], fall on about 5 of them. `reward_bin_scale: linear` with `reward_bin_range:
[0, 1]` puts all 255 there. Both are MrCoM cells of the generalisation study (`mrcom study`,
configs/study/cpu.yaml sizes, the same dataset and seeds): the symlog cells are the study's own
`mrcom` cells (trained here if missing), the linear ones differ only in the two settings.

    python benchmarks/reward_bins.py                 # ~13 min on one core if the study's mrcom cells exist
    python benchmarks/reward_bins.py --seeds 0 1 2 --root runs/reward-bins --study runs/study

Prints, per test split, the one-step and open-loop (H = 15) reward and observation errors
(mean over domains, mean ± std over seeds) of both and of the naive forecast, with Welch's
p-value; the last line is `linear_over_symlog_open_loop_reward=<ratio of means, over all test
splits>` with its p-value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mrcom_lightning.compare import welch_p_value
from mrcom_lightning.study import SPLITS, domains_of, load_results, overall, study_main

LINEAR = ["--model.world_model.reward_bin_scale", "linear", "--model.world_model.reward_bin_range", "[0.0, 1.0]"]
ERRORS = ("one_step_reward_mse", "open_loop_reward_mse", "one_step_mse", "open_loop_mse")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--study", default="runs/study", help="the generalisation study's root (its mrcom cells)")
    parser.add_argument("--root", default="runs/reward-bins", help="root of the linear-bin cells (and the symlog ones if the study lacks them)")
    args = parser.parse_args()
    seeds, experiment = json.dumps(args.seeds), ["--trainer.logger.init_args.experiment_name", "reward-bins"]
    symlog_root = Path(args.study)
    if len(load_results(symlog_root, ["mrcom"], args.seeds).get("mrcom", {})) < len(args.seeds):
        symlog_root = Path(args.root) / "symlog"  # the study has not run them: the same cells here
        study_main(["--root", str(symlog_root), "--variants", "[mrcom]", "--seeds", seeds, "--overrides", json.dumps(experiment)])
    linear_root = Path(args.root) / "linear"
    study_main(["--root", str(linear_root), "--variants", "[mrcom]", "--seeds", seeds, "--overrides", json.dumps(LINEAR + experiment)])
    symlog = load_results(symlog_root, ["mrcom"], args.seeds)["mrcom"]
    linear = load_results(linear_root, ["mrcom"], args.seeds)["mrcom"]
    domains = domains_of({"mrcom": symlog})

    def values(cells, split: str, error: str) -> list[float]:
        return [overall(cells[s], split, error, domains) for s in args.seeds]

    print(f"\nmean over {', '.join(domains)}; mean ± std over seeds {args.seeds}")
    print(f"{'split':<20}{'error':<22}{'symlog':>22}{'linear':>22}{'naive':>12}{'p':>8}")
    for split in SPLITS:
        for error in ERRORS:
            a, b, naive = values(symlog, split, error), values(linear, split, error), values(symlog, split, f"naive_{error}")
            print(f"{split:<20}{error:<22}{np.mean(a):>12.4g} ± {np.std(a):<7.2g}{np.mean(b):>12.4g} ± {np.std(b):<7.2g}"
                  f"{np.mean(naive):>12.4g}{welch_p_value(b, a):>8.3g}")  # fmt: skip
    # Per seed, the open-loop reward error averaged over the test splits.
    a = [np.mean([overall(symlog[s], split, "open_loop_reward_mse", domains) for split in SPLITS]) for s in args.seeds]
    b = [np.mean([overall(linear[s], split, "open_loop_reward_mse", domains) for split in SPLITS]) for s in args.seeds]
    print(f"linear_over_symlog_open_loop_reward={np.mean(b) / np.mean(a):.3f} p={welch_p_value(b, a):.3g} seeds={len(args.seeds)}")


if __name__ == "__main__":
    main()

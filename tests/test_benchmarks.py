"""The adaptation benchmark end to end at tiny size: every method's curve, the tables and last lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_adaptation_benchmark_runs_every_method_and_resumes(tmp_path):
    out = tmp_path / "adapt"
    command = [sys.executable, str(ROOT / "benchmarks" / "adapt_efficiency.py"), "--smoke", "--targets", "tuning",
               "--adapt-domains", "cheetah", "--seeds", "0,1", "--world-models", "2", "--out", str(out),
               "--tracking-uri", "", "--jobs", "1"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    curves = json.loads((out / "curves-tuning.json").read_text())
    methods = {"mrcom", "null", "sac", "sac_utd", "droq", "naive_reward", "naive_obs"}
    assert set(curves["test_id/cheetah/0"]) == methods
    for method, curve in curves["test_id/cheetah/0"].items():
        assert len(curve["scores"]) == 2 and len(curve["scores"][0]) == len(curve["steps"]) == 3, method
    runs = sorted(out.glob("runs/*/*.json"))
    assert len(runs) == len(methods) * 2
    record = json.loads(runs[0].read_text())
    if record["method"] in ("mrcom", "null", "naive_reward", "naive_obs"):
        assert set(record["provenance"]) == {"world_model_seed", "model_settings", "model_weights", "data"}
    # Seeds 0 and 1 adapt with world models 0 and 1: two models, two digests.
    mrcom = [json.loads(p.read_text()) for p in runs if p.parent.name.startswith("mrcom-")]
    assert {r["provenance"]["world_model_seed"] for r in mrcom} == {0, 1}
    assert len({r["provenance"]["model_weights"] for r in mrcom}) == 2
    assert "cheetah: mrcom_over_best_control=" in first.stdout.strip().splitlines()[-1]
    assert "Holm over the 6 comparisons" in (out / "report-tuning.md").read_text()

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # every run is stored: none reruns
    assert again.returncode == 0 and "  ran " not in again.stdout
    assert again.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]

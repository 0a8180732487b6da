"""`mrcom compare`: exact table cells from known MLflow runs, written tables and plots."""

from __future__ import annotations

import csv

import mlflow
import numpy as np
import pytest

from mrcom_lightning.cli import main

# (method, seed) -> value of test_id/<domain>/open_loop_mse for hopper and walker
KNOWN = {
    ("mrcom", 0): (1.0, 4.0),
    ("mrcom", 1): (2.0, 6.0),
    ("mrcom", 2): (4.5, 8.0),
    ("rssm", 0): (3.0, 10.0),
    ("rssm", 1): (5.0, 11.0),
}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what mlflow.set_tracking_uri sets: restored after the test
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("multi")
    for (method, seed), (hopper, walker) in KNOWN.items():
        with mlflow.start_run(tags={"method": method}):
            mlflow.log_param("seed", seed)
            mlflow.log_metric("test_id/hopper/open_loop_mse", hopper)
            mlflow.log_metric("test_id/walker/open_loop_mse", walker)
            for step in range(3):
                mlflow.log_metric("val/loss", 10.0 - step - seed, step=step * 10)
    with mlflow.start_run(tags={"method": "other"}):  # a run without the metric is left out
        mlflow.log_metric("val/loss", 1.0)
    mlflow.set_experiment("elsewhere")
    with mlflow.start_run(tags={"method": "mrcom"}):  # another experiment is not read
        mlflow.log_metric("test_id/hopper/open_loop_mse", 100.0)
    return uri


def test_table_has_exact_means_and_stds(store, tmp_path, capsys):
    out = tmp_path / "cmp"
    main(["compare", "--tracking_uri", store, "--experiment", "[multi]", "--out", str(out), "--precision", "3"])
    printed = capsys.readouterr().out
    hopper_mrcom = [1.0, 2.0, 4.5]
    assert f"{np.mean(hopper_mrcom):.3f} ± {np.std(hopper_mrcom):.3f} (n=3)" in printed
    assert "| walker | 6.000 ± 1.633 (n=3) | 10.500 ± 0.500 (n=2) |" in printed
    rows = {(r["domain"], r["column"]): r for r in csv.DictReader((out / "table.csv").open())}
    assert set(rows) == {("hopper", "mrcom"), ("hopper", "rssm"), ("walker", "mrcom"), ("walker", "rssm")}
    assert float(rows["hopper", "mrcom"]["mean"]) == pytest.approx(np.mean(hopper_mrcom), abs=1e-12)
    assert float(rows["hopper", "mrcom"]["std"]) == pytest.approx(np.std(hopper_mrcom), abs=1e-12)
    assert float(rows["hopper", "rssm"]["mean"]) == 4.0 and float(rows["hopper", "rssm"]["std"]) == 1.0
    assert int(rows["walker", "mrcom"]["runs"]) == 3
    assert (out / "table.md").read_text().strip() in printed
    for plot in ("scores.png", "curves.png"):
        data = (out / plot).read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_filter_and_columns(store, tmp_path, capsys):
    main(["compare", "--tracking_uri", store, "--experiment", "[multi]", "--filter", "tags.method = 'rssm'",
          "--columns", "params.seed", "--out", str(tmp_path / "cmp")])
    printed = capsys.readouterr().out
    assert "| hopper | 3.00 (n=1) | 5.00 (n=1) |" in printed  # one run per seed: no spread to show


def test_missing_metric_lists_the_logged_ones_without_usage(store, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--tracking_uri", store, "--experiment", "[multi]", "--metric", "test_id/{domain}/nope",
              "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "usage:" not in err and "'test_id/{domain}/nope'" in err
    listed = err.split("the runs logged:")[1].split()
    assert listed == ["test_id/{domain}/open_loop_mse", "val/loss"]  # hopper and walker as one name
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--tracking_uri", store, "--experiment", "[multi]", "--columns", "tags.variant",
              "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "usage:" not in err and "'tags.variant'" in err and "tags.method" in err
    assert not (tmp_path / "x").exists()


def test_welch_p_value_matches_the_textbook_formula():
    """Welch's t-test on known numbers: t = (m_a − m_b) / sqrt(s_a²/n_a + s_b²/n_b) with the
    Welch–Satterthwaite degrees of freedom; p two-sided."""
    from scipy import stats

    from mrcom_lightning.compare import welch_p_value

    a, b = [1.0, 2.0, 4.5], [3.0, 5.0, 6.0, 9.0]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert welch_p_value(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert welch_p_value(a, b) == pytest.approx(0.1022, abs=5e-4)  # t = −1.998, df = 5.0, by hand
    assert np.isnan(welch_p_value([1.0], b)) and np.isnan(welch_p_value([2.0, 2.0], [2.0, 2.0]))


def test_reference_adds_ratio_and_p_value_columns(store, tmp_path, capsys):
    from mrcom_lightning.compare import welch_p_value

    out = tmp_path / "cmp"
    main(["compare", "--tracking_uri", store, "--experiment", "[multi]", "--out", str(out), "--reference", "mrcom"])
    printed = capsys.readouterr().out
    assert "| test_id/{domain}/open_loop_mse | mrcom | rssm | rssm ÷ mrcom | p |" in printed
    walker_p = welch_p_value([10.0, 11.0], [4.0, 6.0, 8.0])
    assert f"| walker | 6.00 ± 1.63 (n=3) | 10.50 ± 0.50 (n=2) | {10.5 / 6.0:.2f} | {walker_p:.3g} |" in printed
    rows = {(r["domain"], r["column"]): r for r in csv.DictReader((out / "table.csv").open())}
    assert float(rows["walker", "rssm"]["ratio_to_reference"]) == pytest.approx(10.5 / 6.0)
    assert float(rows["walker", "rssm"]["p_value"]) == pytest.approx(walker_p)
    assert rows["walker", "mrcom"]["ratio_to_reference"] == ""
    with pytest.raises(SystemExit):
        main(["compare", "--tracking_uri", store, "--experiment", "[multi]", "--out", str(out), "--reference", "nope"])
    assert "--reference 'nope'" in capsys.readouterr().err


def test_one_run_shows_n_and_outputs_go_to_a_comparison_run(tmp_path, capsys, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("quick")
    with mlflow.start_run(tags={"method": "mrcom"}):
        mlflow.log_metric("test_id/hopper/open_loop_mse", 18.4431)
    out = tmp_path / "cmp"
    main(["compare", "--tracking_uri", uri, "--experiment", "[quick]", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| hopper | 18.44 (n=1) |" in printed and "±" not in printed

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("comparisons")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "compare-test_id/*/open_loop_mse" and run.data.tags["mrcom.compares"] == "quick"
    assert run.data.params["metric"] == "test_id/{domain}/open_loop_mse"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"table.md", "table.csv", "scores.png"}
    assert experiment.artifact_location == str(tmp_path / "mlruns-artifacts")  # beside the store, not in the cwd
    assert f"logged to MLflow run {run.info.run_name} (id {run.info.run_id})" in printed


def test_bar_axis_spells_the_metric_out(tmp_path, monkeypatch):
    import matplotlib.axes

    from mrcom_lightning.compare import plot_bars

    labels = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel", lambda self, label, **kwargs: labels.append(label))
    cells = {("hopper", "mrcom"): [1.0], ("walker", "mrcom"): [2.0]}
    plot_bars(tmp_path / "a.png", ["hopper", "walker"], ["mrcom"], cells, "test_id/{domain}/open_loop_mse")
    plot_bars(tmp_path / "b.png", ["hopper"], ["mrcom"], cells, "test_id/{domain}/open_loop_mse")
    assert labels == ["test_id/{hopper,walker}/open_loop_mse", "test_id/hopper/open_loop_mse"]

"""Where runs are tracked by default: an embedded MLflow store in the working directory, and
the file `mrcom test` writes its metrics to, beside the run's checkpoints.

MLflow 3 deprecates its file store, so the default is an SQLite store (no server to start),
with artifacts on local disk beside it; a tracking server is one option away.
"""

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
DEFAULT_ARTIFACTS = "mlruns-artifacts"
TEST_METRICS = "test_metrics.json"  # `<trainer.default_root_dir>/test_metrics.json`, read by `mrcom study`

"""How runs are tracked: the default MLflow store, run names and descriptions, checkpoints as
artifacts and `runs:/` checkpoint paths, parent runs of grids (docs/tracking.md).

MLflow 3 deprecates its file store, so the default is an SQLite store (no server to start),
with artifacts on local disk beside it; a tracking server is one option away. mlflow is imported
inside the functions: `mrcom collect` and the sweep's parent process never pay for it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
DEFAULT_ARTIFACTS = "mlruns-artifacts"
TEST_METRICS = "test_metrics.json"  # `<trainer.default_root_dir>/test_metrics.json`, read by `mrcom study`
# MLflow 3's UI opens an experiment on its GenAI overview unless this tag names another kind
# (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT = "custom_model_development").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
PARENT_RUN_TAG = "mlflow.parentRunId"  # what nests a run under another in the UI
PARENT_RUN_ENV = "MRCOM_PARENT_RUN_ID"  # set by `mrcom sweep` / `study` for the cells they start
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
EVALUATES_TAG = "mrcom.evaluates"  # on validate/test/predict runs: the run whose checkpoint they load
RESUMES_TAG = "mrcom.resumes"  # on a fit resumed from another run's checkpoint
CHECKPOINT_TAG = "mrcom.checkpoint"  # on fit runs: `runs:/<id>/checkpoints/best.ckpt`
CHECKPOINT_ARTIFACTS = "checkpoints"
BEST_CHECKPOINT = f"{CHECKPOINT_ARTIFACTS}/best.ckpt"
ARTIFACT_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def tracking_uri(uri: str | None = None) -> str:
    """`uri`, else `$MLFLOW_TRACKING_URI`, else the embedded store in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_uri(uri: str) -> str:
    """An `sqlite:///` URI with its file made absolute: MLflow caches stores by URI, so a relative
    one would keep pointing at the first working directory it was opened from."""
    database = sqlite_file(uri)
    return f"sqlite:///{database.resolve()}" if database is not None else uri


def sqlite_file(uri: str) -> Path | None:
    """The database file of an `sqlite:///` URI (relative to the working directory), else None."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Holds an exclusive lock on `<db>.lock` for an SQLite store; nothing for other stores.

    MLflow creates and migrates an SQLite store's tables without a lock: three processes that
    open a new store at once can fail with `duplicate column name` (issue 28). Store creation
    and run naming, and logging a dataset, happen under this lock.
    """
    database = sqlite_file(uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepare_store(uri: str):
    """An `MlflowClient` of `uri`, the store's tables created (under `store_lock`) if new."""
    from mlflow.tracking import MlflowClient

    with store_lock(uri):
        return MlflowClient(tracking_uri=absolute_uri(uri))


def mark_experiment(client, experiment_id: str) -> None:
    """Tags the experiment as model training, so that `mlflow ui` opens on its runs (unless it
    has a kind already)."""
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def ensure_experiment(client, name: str, uri: str) -> str:
    """The id of experiment `name` in the store `uri`, created (tagged as model training, with its
    artifacts in `mlruns-artifacts` beside an SQLite store's file) if missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        mark_experiment(client, found.experiment_id)
        return found.experiment_id
    database = sqlite_file(uri)
    location = str(database.resolve().parent / DEFAULT_ARTIFACTS) if database is not None else None
    return client.create_experiment(name, location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def claim_run_name(client, uri: str, run, name: str) -> str:
    """Renames `run` to `name`, or `name-2`, `name-3`, ... when another run of its experiment has it.

    Under `store_lock`, so that runs started at once, with the same seed, get different names.
    """
    quoted = name.replace("'", "''")
    with store_lock(uri):
        others = client.search_runs([run.info.experiment_id], filter_string=f"attributes.run_name LIKE '{quoted}%'")
        taken = {r.info.run_name for r in others if r.info.run_id != run.info.run_id}
        unique, k = name, 2
        while unique in taken:
            unique, k = f"{name}-{k}", k + 1
        if unique != run.info.run_name:
            client.update_run(run.info.run_id, name=unique)
    return unique


def git_tags(path: Path = Path(__file__)) -> dict[str, str]:
    """`mlflow.source.git.commit` (the commit the code runs from) and `git.dirty`, when in a git checkout."""
    folder = str(path.resolve().parent)
    try:
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    if commit.returncode != 0:
        return {}
    return {"mlflow.source.git.commit": commit.stdout.strip(), "git.dirty": str(bool(status.stdout.strip())).lower()}


def dataset_digest(root: str | Path) -> str:
    """A digest of a dataset folder: its `dataset.json` and the names and sizes of its files."""
    root = Path(root)
    digest = hashlib.sha256()
    manifest = root / "dataset.json"
    if manifest.is_file():
        digest.update(manifest.read_bytes())
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "dataset.json"):
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def log_dataset(client, uri: str, run_id: str, root: str | Path, context: str) -> None:
    """Logs the dataset folder as the run's MLflow input (`context`: train or test), with its digest.

    Under `store_lock`: MLflow looks the dataset up, then inserts it, so runs started at once on
    one dataset race, and the loser fails with `UNIQUE constraint failed: datasets...`.
    """
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    root = Path(root).resolve()
    dataset = MetaDataset(LocalArtifactDatasetSource(str(root)), name=root.name, digest=dataset_digest(root))
    inputs = [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])]
    with store_lock(uri):
        client.log_inputs(run_id, inputs)


def log_params(client, run_id: str, params: dict) -> None:
    """Logs `params` the run does not have yet (MLflow refuses to change a logged value)."""
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    new = [Param(key, str(value)[:6000]) for key, value in params.items() if key not in logged]
    for start in range(0, len(new), 100):
        client.log_batch(run_id, params=new[start : start + 100])


def parent_tag(client) -> dict[str, str]:
    """`mlflow.parentRunId` for a run started by a sweep or study (`$MRCOM_PARENT_RUN_ID`), if that
    run is in the same store."""
    parent = os.environ.get(PARENT_RUN_ENV)
    if not parent:
        return {}
    try:
        client.get_run(parent)
    except Exception:  # another store, or deleted: the run stays top-level
        return {}
    return {PARENT_RUN_TAG: parent}


def plot_learning_curves(client, run_id: str, path: Path) -> Path | None:
    """One panel per `train/loss/<term>` of the run's metric history, `val/loss` beside the total."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith("train/loss/"))
    if not names:
        return None
    names.sort(key=lambda k: k != "train/loss/total")
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for key, style in [(name, "-")] + ([("val/loss", "o-")] if name == "train/loss/total" else []):
            points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            if points:
                ax.plot(*zip(*points), style, markersize=3, label=key)
        ax.set_title(name.removeprefix("train/loss/"), fontsize="medium")
        ax.set_xlabel("step", fontsize="small")
        if name == "train/loss/total":
            ax.legend(fontsize="x-small")
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    fig.suptitle(f"losses of run {client.get_run(run_id).info.run_name}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ui_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """The command that shows the run in MLflow's UI, and the address of the run's page."""
    database = sqlite_file(uri)
    address = f"#/experiments/{experiment_id}/runs/{run_id}"
    if database is not None:
        return f"mlflow ui --backend-store-uri sqlite:///{database.resolve()}   then open {UI_ADDRESS}/{address}"
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/{address}"
    return f"mlflow ui --backend-store-uri {uri}   then open {UI_ADDRESS}/{address}"


def is_artifact_uri(path) -> bool:
    return str(path).startswith(ARTIFACT_SCHEMES)


def run_id_of(uri: str) -> str | None:
    """The run id of a `runs:/<run_id>/...` URI."""
    if not str(uri).startswith("runs:/"):
        return None
    return str(uri).removeprefix("runs:/").strip("/").split("/")[0] or None


def _run_checkpoints(client, run_id: str) -> list[str]:
    try:
        return [a.path for a in client.list_artifacts(run_id, CHECKPOINT_ARTIFACTS)]
    except Exception:
        return []


def resolve_checkpoint(path: str, uri: str | None = None) -> str:
    """A local file for `--ckpt_path`: `path` itself, or, for an MLflow URI (`runs:/<run_id>` = the
    run's `checkpoints/best.ckpt`, `runs:/<run_id>/<artifact>`, `models:/<name>/<version>`), the
    artifact downloaded from the store `uri` (default: `tracking_uri()`) into a temporary folder
    removed at exit. Load the file with `checkpoints.load_checkpoint` (weights-only).

    Raises `CheckpointNotFoundError` naming the URI (and the run's checkpoints) when it is not there.
    """
    if not is_artifact_uri(path):
        return path
    import mlflow
    from mlflow.exceptions import MlflowException

    from mrcom_lightning.checkpoints import CheckpointNotFoundError

    uri = tracking_uri(uri)
    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        raise CheckpointNotFoundError(
            f"checkpoint {path}: no MLflow store at {uri} ({database.resolve()}); run the command where `mrcom fit` "
            "wrote mlruns.db, or set MLFLOW_TRACKING_URI"
        )
    run_id = run_id_of(path)
    artifact = path
    if run_id and str(path).removeprefix("runs:/").strip("/") == run_id:
        artifact = f"runs:/{run_id}/{BEST_CHECKPOINT}"
    folder = tempfile.mkdtemp(prefix="mrcom-checkpoint-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    try:
        if str(path).startswith("models:/"):  # the version's source, from the registry of the same store
            name, _, version = str(path).removeprefix("models:/").partition("/")
            registry = mlflow.MlflowClient(tracking_uri=absolute_uri(uri), registry_uri=absolute_uri(uri))
            artifact = registry.get_model_version(name, version).source
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact, dst_path=folder, tracking_uri=absolute_uri(uri)))
    except (MlflowException, OSError) as err:
        client = mlflow.MlflowClient(tracking_uri=absolute_uri(uri))
        logged = _run_checkpoints(client, run_id) if run_id else []
        hint = f"; the run has {', '.join(logged)}" if logged else ""
        raise CheckpointNotFoundError(
            f"checkpoint {path} is not in the MLflow store {uri} ({str(err).splitlines()[0][:200]}){hint}"
        ) from None
    if local.is_dir():
        found = sorted(local.rglob("*.ckpt"))
        if len(found) != 1:
            raise CheckpointNotFoundError(f"checkpoint {path} is a folder with {len(found)} .ckpt files; name one")
        local = found[0]
    return str(local)


@contextlib.contextmanager
def parent_run(uri: str, experiment: str, name: str, params: dict, state: Path) -> Iterator[str]:
    """A parent run for a grid of runs started as subprocesses: yields its id, which the caller
    passes to them as `$MRCOM_PARENT_RUN_ID`; ends it FINISHED, FAILED or KILLED.

    The id is kept in `state` (a file in the grid's folder), so a re-run of an interrupted grid
    continues the same parent run.
    """
    client = prepare_store(uri)
    run_id = state.read_text().strip() if state.is_file() else None
    if run_id:
        try:
            client.update_run(run_id, status="RUNNING")
        except Exception:  # deleted, or another store: start a new one
            run_id = None
    if not run_id:
        with store_lock(uri):
            experiment_id = ensure_experiment(client, experiment, uri)
        run = client.create_run(experiment_id, run_name=name, tags=git_tags())
        run_id = run.info.run_id
        claim_run_name(client, uri, run, name)
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(run_id + "\n")
    log_params(client, run_id, params)
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(run_id, status)


def flat_params(values: dict, prefix: str = "", sep: str = "/") -> dict:
    """Nested settings as flat MLflow params: {"rollout": {"every": 250}} -> {"<prefix>rollout/every": 250}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flat_params(value, f"{prefix}{key}{sep}", sep)
        else:
            flat[f"{prefix}{key}"] = value
    return flat

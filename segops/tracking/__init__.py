"""Every MLflow logging call: runs, parameters, metrics, artifacts, lineage tags, the model.

The core (data, models, train, evaluate) never imports this; the training loop reports through
the `MlflowMetrics` callback handed to it. Runs are found again by an attempt key (a tag), so a
retried step logs into the same run instead of creating a second one.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, Metric, Param, RunTag

from segops.config import Config, TrackingConfig, config_hash
from segops.train.callbacks import Callback

# lazy imports: torch is imported inside environment(): `segops promote` and `segops history`
# reach MLflow through this module and need no torch (docs/development.md "Imports").

TAG = "segops."  # prefix of every lineage tag we write
ATTEMPT_TAG = TAG + "attempt_key"


@dataclass(frozen=True)
class Store:
    tracking_uri: str
    experiment_id: str


def _absolute_sqlite(uri: str, base: Path) -> str:
    """`sqlite:///mlflow/x.db` is relative to the cwd in MLflow: make it absolute against base."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = (base / uri.removeprefix(prefix)).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


def is_server(uri: str) -> bool:
    """Whether `uri` names a tracking server (http/https, or Databricks) rather than a store
    this process opens itself (sqlite, a database URL, a folder)."""
    return uri.split("://")[0].lower() in ("http", "https", "databricks")


def artifact_location(uri: str, artifact_root: str, base: Path) -> str | None:
    """The artifact location a new experiment gets: `artifact_root` (absolute) for a store this
    process opens itself, None with a tracking server, so artifacts go where the server says
    (its proxied `mlflow-artifacts:` destination) and never to this machine's disk."""
    if is_server(uri):
        return None
    if "://" not in artifact_root:  # a local folder: give MLflow an absolute file URI
        return (base / artifact_root).resolve().as_uri()
    return artifact_root


def connect(cfg: TrackingConfig, base: str | Path = ".") -> Store:
    """Point MLflow at the store (MLFLOW_TRACKING_URI wins over `cfg.uri`) and ensure the
    experiment exists; with a local store its artifacts go under `cfg.artifact_root`, with a
    tracking server wherever the server stores them."""
    base = Path(base).resolve()
    uri = _absolute_sqlite(os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri, base)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(cfg.experiment)
    if found is not None:
        return Store(uri, found.experiment_id)
    artifacts = artifact_location(uri, cfg.artifact_root, base)
    try:
        return Store(uri, client.create_experiment(cfg.experiment, artifact_location=artifacts))
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent flow
        return Store(uri, client.get_experiment_by_name(cfg.experiment).experiment_id)


def environment() -> dict[str, str]:
    """python, torch, CUDA and GPU of this process."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": str(torch.version.cuda or "none"),
        "gpu": gpu,
        "platform": platform.platform(),
    }


def git_state(path: str | Path = ".", ignore: list[str] | None = None) -> dict[str, str]:
    """Commit of the repository holding `path` and whether its tree has uncommitted changes
    to tracked files other than `ignore` (paths relative to `path`)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=30)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    skip = [f":(exclude){p}" for p in ignore or []]
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", *skip)
    dirty = bool(status) if commit else True
    return {"commit": commit or "unknown", "dirty": str(dirty).lower()}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"train": {"lr": 0.1}}` -> `{"train.lr": "0.1"}` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flatten(value, name + ".")
        else:
            out[name] = str(value)[:6000]
    return out


class MlflowMetrics(Callback):
    """Logs each epoch's history row as MLflow metrics (step = epoch)."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.client, self.run_id = MlflowClient(store.tracking_uri), run_id

    def on_train_start(self, info: dict[str, Any]) -> None:
        """The runtime the loop resolved (device, amp, channels_last, threads) as env tags."""
        keys = ("device", "amp", "channels_last", "threads")
        tags = [RunTag(f"{TAG}env.{k}", str(info[k])) for k in keys if k in info]
        self.client.log_batch(self.run_id, tags=tags)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, int(row["epoch"])) for k, v in row.items() if k != "epoch"
        ]
        self.client.log_batch(self.run_id, metrics=metrics)


def find_run(store: Store, attempt_key: str) -> str | None:
    """Id of the run already made for `attempt_key`, if any (so retries reuse it)."""
    runs = MlflowClient(store.tracking_uri).search_runs(
        [store.experiment_id], f"tags.`{ATTEMPT_TAG}` = '{attempt_key}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def open_run(store: Store, cfg: Config, attempt_key: str, tags: dict[str, str]) -> str:
    """The run for `attempt_key`: found again, or created with params, lineage tags and env."""
    client = MlflowClient(store.tracking_uri)
    existing = find_run(store, attempt_key)
    if existing:
        client.update_run(existing, status="RUNNING")  # a retry after a failure continues it
        return existing
    env = {f"{TAG}env.{k}": v for k, v in environment().items()}
    run = client.create_run(
        store.experiment_id,
        run_name=f"{cfg.model.name}-{attempt_key[:8]}",
        tags={
            ATTEMPT_TAG: attempt_key,
            TAG + "config_hash": config_hash(cfg),
            TAG + "seed": str(cfg.train.seed),
            **env,
            **tags,
        },
    )
    params = [Param(k, v) for k, v in flatten(cfg.to_dict()).items()]
    for i in range(0, len(params), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    return run.info.run_id


def runs_tagged(store: Store, tags: dict[str, str]) -> list[dict[str, Any]]:
    """Runs of the experiment whose tags include all of `tags`, newest first: run id, status,
    start time (ms) and tags."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = MlflowClient(store.tracking_uri).search_runs(
        [store.experiment_id], query, order_by=["attributes.start_time DESC"]
    )
    return [
        {
            "run_id": r.info.run_id,
            "status": r.info.status,
            "start_time": r.info.start_time,
            "tags": dict(r.data.tags),
        }
        for r in runs
    ]


def model_ready(model_uri: str) -> bool:
    """Whether the logged model `models:/m-...` finished logging (status READY); True for
    other URIs. A process killed while logging leaves its model PENDING."""

    model_id = model_uri.removeprefix("models:/")
    if not model_id.startswith("m-") or "/" in model_id:
        return True
    try:
        return MlflowClient().get_logged_model(model_id).status == LoggedModelStatus.READY
    except mlflow.exceptions.MlflowException:
        return False


def fail_pending_models(run_id: str) -> list[str]:
    """Mark the run's logged models still PENDING (logging cut short) FAILED; returns their ids."""

    client = MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([experiment], f"source_run_id = '{run_id}'")
    pending = [m.model_id for m in found if m.status == LoggedModelStatus.PENDING]
    for model_id in pending:
        client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
    return pending


def log_file(run_id: str, path: str | Path, artifact_dir: str | None = None) -> None:
    """Upload one file (or a folder's contents) to the run's artifacts."""
    client = MlflowClient()
    if Path(path).is_dir():
        client.log_artifacts(run_id, str(path), artifact_dir)
    else:
        client.log_artifact(run_id, str(path), artifact_dir)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    MlflowClient().log_text(run_id, text, artifact_file)


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    MlflowClient().log_batch(run_id, metrics=items)


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def finish_run(run_id: str, failed: bool = False) -> None:
    MlflowClient().set_terminated(run_id, "FAILED" if failed else "FINISHED")


def run_summary(run_id: str) -> dict[str, Any]:
    """Tags, metrics and params of a run, as plain dicts."""
    run = MlflowClient().get_run(run_id)
    return {
        "tags": dict(run.data.tags),
        "metrics": dict(run.data.metrics),
        "params": dict(run.data.params),
        "artifact_uri": run.info.artifact_uri,
    }


def artifact_paths(run_id: str, path: str | None = None) -> list[str]:
    """Paths of the run's artifacts directly under `path` (files and folders)."""
    return [a.path for a in MlflowClient().list_artifacts(run_id, path)]


def download_artifact(run_id: str, path: str, dst: str | Path) -> Path | None:
    """Download artifact `path` of the run into `dst`; None when the store no longer has it."""
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(dst)
        )
    except (mlflow.exceptions.MlflowException, OSError):
        return None
    return Path(local) if Path(local).exists() else None


def download_model(model_uri: str, dst: str | Path) -> Path:
    """Download the files of a `models:/` or `runs:/` model into `dst`; returns the folder."""
    return Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(dst)))


def find_run_or_none(run_id: str) -> dict[str, Any] | None:
    """`run_summary` plus status and start time, or None when the run does not exist."""
    try:
        run = MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    return run_summary(run_id) | {"status": run.info.status, "start_time": run.info.start_time}


def artifact_link(run_id: str, path: str) -> str:
    """Where a person opens artifact `path` of the run: the MLflow UI page for a tracking
    server, else the file's `file://` URI in the local artifact store."""
    run = MlflowClient().get_run(run_id)
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        exp = run.info.experiment_id
        return f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}/artifacts/{path}"
    return f"{run.info.artifact_uri.rstrip('/')}/{path}"

"""The MLflow side of a score run: one run per scoring of an input by a registered version.

The run is tagged with the model version that scored (name, version, its run, whether it was
champion then) and the input's identity, and holds counts, class fractions, errors and
throughput as metrics, `summary.csv` and `errors.csv` as artifacts. It is linked to the
version's logged model as a model input where the version comes from a logged model
(`models:/m-...`), so the MLflow UI shows it on the model's page too.
"""

from __future__ import annotations

import time
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelInput

from segops.tracking import TAG, Store

KIND_TAG = TAG + "run_kind"
SCORE = TAG + "score."
SCORE_TAGS = {
    "model_name": SCORE + "model_name",
    "model_version": SCORE + "model_version",
    "model_uri": SCORE + "model_uri",
    "model_run_id": SCORE + "model_run_id",
    "champion": SCORE + "champion",
    "champion_version": SCORE + "champion_version",
    "requested": SCORE + "requested",
    "input": SCORE + "input",
    "input_kind": SCORE + "input_kind",
    "input_hash": SCORE + "input_hash",
    "engine": SCORE + "engine",
    "out": SCORE + "out",
    "flow_run_id": TAG + "prefect.flow_run_id",
}


def tracking_uri() -> str:
    """The tracking URI this process uses (to hand to other processes, e.g. Ray actors)."""
    return mlflow.get_tracking_uri()


def use_tracking_uri(uri: str) -> None:
    mlflow.set_tracking_uri(uri)


def score_tags(model: dict[str, Any], identity: dict[str, Any], extra: dict[str, str]) -> dict:
    """The run's tags from a pinned model (`segops.scoring.source.registered_source`), the
    input's identity (`segops.scoring.steps.input_identity`) and `extra` (engine, out,
    flow run)."""
    values = {
        "model_name": model["name"],
        "model_version": model["version"],
        "model_uri": model["model_uri"],
        "model_run_id": model["run_id"],
        "champion": str(bool(model["champion"])).lower(),
        "champion_version": str(model.get("champion_version") or "none"),
        "requested": model.get("requested", model["model_uri"]),
        "input": identity["input"],
        "input_kind": identity["kind"],
        "input_hash": identity["hash"],
        **extra,
    }
    return {KIND_TAG: "score"} | {SCORE_TAGS[k]: str(v) for k, v in values.items()}


def log_score_run(
    store: Store, tags: dict[str, str], metrics: dict[str, float], files: list[str]
) -> str:
    """A finished run in the store's experiment with `tags`, `metrics` and `files` as
    artifacts under `scoring/`; returns its id."""
    client = MlflowClient(store.tracking_uri)
    name = f"score-{tags[SCORE_TAGS['model_name']]}-v{tags[SCORE_TAGS['model_version']]}"
    run_id = client.create_run(store.experiment_id, tags=tags, run_name=name).info.run_id
    try:
        client.log_batch(
            run_id,
            metrics=[mlflow.entities.Metric(k, float(v), _now_ms(), 0) for k, v in metrics.items()],
        )
        for path in files:
            client.log_artifact(run_id, path, "scoring")
        _link_model(
            client, run_id, tags[SCORE_TAGS["model_name"]], tags[SCORE_TAGS["model_version"]]
        )
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _now_ms() -> int:
    return int(time.time() * 1000)


def _link_model(client: MlflowClient, run_id: str, name: str, version: str) -> None:
    """The version's logged model as the run's model input (MLflow 3), when it has one."""

    source = client.get_model_version(name, version).source or ""
    model_id = source.removeprefix("models:/")
    if source.startswith("models:/m-") and "/" not in model_id:
        client.log_inputs(run_id, models=[LoggedModelInput(model_id)])


def score_runs(model_name: str) -> list[dict[str, Any]]:
    """Every score run of `model_name` in any experiment, oldest first: run id, start time
    (ms), tags and metrics."""
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    query = f"tags.`{KIND_TAG}` = 'score' and tags.`{SCORE_TAGS['model_name']}` = '{model_name}'"
    runs = client.search_runs(experiments, query, order_by=["attributes.start_time ASC"])
    return [
        {
            "run_id": r.info.run_id,
            "start_time": r.info.start_time,
            "tags": dict(r.data.tags),
            "metrics": dict(r.data.metrics),
        }
        for r in runs
    ]

"""The `retrain` flow: (fetch a dataset from s3://) -> check registry -> validate -> place
(import a dataset from outside `data/`) -> version (DVC) -> train -> evaluate -> export
(ONNX) -> register -> promote -> report.

Every task calls one `segops.pipeline` function and passes small references (dicts of paths,
hashes, run ids and `models:/` URIs). Validation runs before versioning so that data failing
its checks is never pushed as a dataset version.

    python -m flows.retrain --help        (or: segops run)
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from segops.quiet import quiet_defaults

quiet_defaults()  # before Prefect and MLflow read their settings

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_link_artifact, create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from flows import promotion_lock  # noqa: E402
from segops import pipeline  # noqa: E402
from segops.config import load_config  # noqa: E402
from segops.data.fetch import is_remote  # noqa: E402
from segops.errors import SegopsError  # noqa: E402


class ValidationFailed(SegopsError):
    """The dataset failed its Great Expectations suite; nothing was trained or registered."""


@task(name="check-stores", cache_policy=NO_CACHE)
def check_stores(config: dict, workspace: str) -> list:
    return pipeline.preflight_step(config, workspace)


@task(name="check-registry", cache_policy=NO_CACHE)
def check_registry(config: dict) -> dict:
    return pipeline.registry_step(config)


@task(name="fetch-data", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def fetch_data(url: str, staging: str) -> str:
    return pipeline.fetch_step(url, staging)


@task(name="place-data", cache_policy=NO_CACHE)
def place_data(config: dict) -> dict:
    return pipeline.place_step(config)


@task(name="validate-data", cache_policy=NO_CACHE)
def validate_data(config: dict) -> dict:
    return pipeline.validate_step(config)


@task(name="version-data", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def version_data(config: dict, workspace: str) -> dict:
    return pipeline.version_step(config, workspace)


@task(name="check-unchanged", cache_policy=NO_CACHE)
def find_unchanged(config: dict, data: dict) -> dict | None:
    return pipeline.unchanged_step(config, data)


@task(name="choose-attempt", cache_policy=NO_CACHE)
def choose_attempt(config: dict, data: dict, key: str) -> dict:
    return pipeline.choose_attempt(config, data, key, key)


@task(name="train", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def train_model(config: dict, attempt_key: str, tags: dict, artifacts: dict) -> dict:
    return pipeline.train_step(config, attempt_key, tags, artifacts)


@task(name="evaluate", retries=1, cache_policy=NO_CACHE)
def evaluate_model(config: dict, run_id: str, checkpoint: str) -> dict:
    return pipeline.evaluate_step(config, run_id, checkpoint)


@task(name="export-onnx", cache_policy=NO_CACHE)
def export_model(config: dict, run_id: str, checkpoint: str) -> dict:
    return pipeline.export_step(config, run_id, checkpoint)


@task(name="register", retries=1, cache_policy=NO_CACHE)
def register_model(config: dict, run_id: str, checkpoint: str, attempt_key: str) -> dict:
    return pipeline.register_step(config, run_id, checkpoint, attempt_key)


@task(name="promote", retries=1, cache_policy=NO_CACHE)
def promote_model(config: dict, model: dict, file_lock: bool = True) -> dict:
    return pipeline.promote_step(config, model, file_lock)


def promote_serialised(config: dict, model: dict) -> dict:
    """The promote task, one decision per registered model at a time: under the Prefect
    server's global concurrency limit `promote-<name>` (every host), else the file lock."""
    if promotion_lock.server_url() is None:
        return promote_model(config, model)
    with promotion_lock.global_promotion_lock(model["name"]):
        return promote_model(config, model, file_lock=False)


@task(name="model-report", retries=1, cache_policy=NO_CACHE)
def model_report(config: dict, model: dict, checkpoint: str) -> dict:
    return pipeline.report_step(config, model, checkpoint)


def _gate_and_report(config: dict, model: dict, checkpoint: str) -> tuple[dict, dict]:
    """Promote (or not) the registered `model`, then write its report; both as artifacts."""
    decision = promote_serialised(config, model)
    create_markdown_artifact(_decision_markdown(model, decision), key="promotion-decision")
    report = model_report(config, model, checkpoint)
    if report["link"]:
        create_link_artifact(
            report["link"], link_text=f"report of {model['uri']}", key="model-report"
        )
    else:
        print(f"warning: no model report ({report['error']}); the version is registered")
    return decision, report


def _finish_undecided(config: dict, same: dict, data: dict) -> dict[str, Any]:
    """A version made from these inputs that never went through the gate (the flow that
    registered it was interrupted): register again (idempotent per attempt key: the same
    version, alias challenger), then gate and report it in the outputs of its attempt."""
    from segops.resume import at_dir

    print(f"{same['uri']} was registered from these inputs but never decided: gating it now")
    config = at_dir(config, same["out_dir"])
    model = register_model(config, same["run_id"], same["checkpoint"], same["attempt_key"])
    decision, report = _gate_and_report(config, model, same["checkpoint"])
    return {
        "skipped": False,
        "resumed": True,
        "model": model,
        "metrics": same["metrics"],
        "decision": decision,
        "data": data,
        "report": report,
    }


def _decision_markdown(model: dict, decision: dict) -> str:
    verdict = "promoted to **champion**" if decision["promote"] else "kept as **challenger**"
    reasons = "\n".join(f"- {r}" for r in decision["reasons"])
    return f"## {model['uri']} {verdict}\n\n{reasons}\n"


@flow(name="retrain", log_prints=True)
def retrain(
    params: str | None = "params.yaml",
    overrides: list[str] | None = None,
    dataset: str | None = None,
    workspace: str = ".",
    force: bool = False,
) -> dict[str, Any]:
    """Take a dataset to a registered, gated model; returns model ref, metrics and decision.

    Skips training (returns `skipped: True` and the existing version) when a registered version
    was made from the same dataset md5, config hash and code version, unless `force`; when that
    version was never decided (a flow killed after registering it), gates and reports it. A
    flow interrupted during training is resumed, in its MLflow run, from its last checkpoint
    (see `segops.resume`).
    """
    try:
        return _retrain(params, overrides, dataset, workspace, force)
    finally:
        pipeline.release_attempts()  # the attempt lock this flow held


def _retrain(
    params: str | None,
    overrides: list[str] | None,
    dataset: str | None,
    workspace: str,
    force: bool,
) -> dict[str, Any]:
    key = str(flow_run.id or uuid.uuid4())
    if is_remote(dataset):  # s3://...: downloaded into this run's folder, then as any folder
        runs = Path(load_config(params, overrides).train.out_dir).parent
        dataset = fetch_data(dataset, str(runs / key / "incoming"))
        print(f"downloaded the dataset into {dataset}")
    extra = [f"data.root={dataset}"] if dataset else []
    cfg = load_config(params, [*(overrides or []), *extra])
    config = pipeline.attempt_config(cfg.to_dict(), key)
    git = pipeline.source_state(config, workspace)  # before the flow writes anything
    check_stores(config, workspace)
    contract = check_registry(config)
    report = validate_data(config)
    if not report["success"]:
        create_markdown_artifact(report["markdown"], key="validation-report")
        found = f": {report['summary']}" if report["summary"] else ""
        raise ValidationFailed(
            f"dataset {cfg.data.root} failed validation ({', '.join(report['failures'])}){found}; "
            f"nothing was trained or registered. Report: {report['json']}"
        )
    placed = place_data(config)
    print(placed["message"])
    config = placed["config"]
    data = version_data(config, workspace)
    same = None if force else find_unchanged(config, data)
    if same is not None and not same["decided"]:
        return _finish_undecided(config, same, data)
    if same is not None:
        same = {k: same[k] for k in ("name", "version", "run_id", "uri")}
        note = (
            f"Skipped training: {same['uri']} was already made from dataset {data['dataset']} "
            f"({data['dataset_md5']}), "
            "this config and this code. Change any of them, or pass force=True, to retrain."
        )
        print(note)
        create_markdown_artifact(f"## Nothing to retrain\n\n{note}\n", key="retrain-skipped")
        return {"skipped": True, "model": same, "data": data, "metrics": None, "decision": None}
    attempt = choose_attempt(config, data, key)
    for note in attempt["notes"]:
        print(f"warning: {note}")
    if attempt["failed"]:
        print(f"marked orphaned MLflow runs FAILED: {', '.join(attempt['failed'])}")
    if attempt["resumed"]:
        print(f"resuming interrupted attempt {attempt['attempt_key']} (run {attempt['resumed']})")
    config, attempt_key = attempt["config"], attempt["attempt_key"]
    tags = pipeline.lineage_tags(data, report, key, git, contract)
    artifacts = {"lineage/data.dvc": data["dvc_text"], "lineage/validation.json": report["json"]}
    trained = train_model(config, attempt_key, tags, artifacts)
    metrics = evaluate_model(config, trained["run_id"], trained["checkpoint"])
    onnx = export_model(config, trained["run_id"], trained["checkpoint"])
    if onnx.get("segops.onnx.status") == "failed":
        print(f"warning: ONNX export failed ({onnx.get('segops.onnx.error')}); recorded as tags")
    model = register_model(config, trained["run_id"], trained["checkpoint"], attempt_key)
    decision, report = _gate_and_report(config, model, trained["checkpoint"])
    return {
        "skipped": False,
        "model": model,
        "metrics": metrics,
        "decision": decision,
        "data": data,
        "report": report,
        "onnx": onnx,
    }

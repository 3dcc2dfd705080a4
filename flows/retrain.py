"""The `retrain` flow: (fetch a dataset from s3://) -> check registry -> validate -> place
(import a dataset from outside `data/`) -> version (DVC) -> train -> evaluate -> register ->
promote -> report -> export (ONNX, after the gate: the decision, the champion alias and the
report do not wait for it; its tags go to the run and the version).

Every task calls one `segops.steps` function; the frozen `Config` and the steps' small frozen
records (`segops.steps.records`: paths, hashes, run ids, `ModelRef`s) travel between them as
they are, and `segops.steps.outcome` turns them into the dict the flow returns. Validation runs
before versioning so that data failing its checks is never pushed as a dataset version.

    python -m flows.retrain --help        (or: segops run)
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segops.quiet import quiet_defaults

quiet_defaults()  # before Prefect and MLflow read their settings

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_link_artifact, create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from flows import promotion_lock  # noqa: E402
from flows.errors import ONLY_TRANSIENT, quiet_user_errors  # noqa: E402
from segops.config import Config, load_config  # noqa: E402
from segops.data.fetch import is_remote  # noqa: E402
from segops.errors import SegopsError  # noqa: E402
from segops.resume import release_attempts  # noqa: E402
from segops.steps import attempt, evaluation, outcome, registration, report, setup, training  # noqa: E402
from segops.steps import data as data_steps  # noqa: E402
from segops.steps.lineage import lineage_record  # noqa: E402
from segops.steps.records import (  # noqa: E402
    Attempt,
    Contract,
    Evaluated,
    Existing,
    Exported,
    ModelReport,
    Placed,
    Trained,
    Validated,
)

if TYPE_CHECKING:  # MLflow and DVC load when a step runs, not when the flow is imported
    from segops.promotion.decide import PromotionDecision
    from segops.promotion.registry import ModelRef
    from segops.versioning import DataVersion

quiet_user_errors()  # a SegopsError is logged by Prefect as its message, not a traceback


class ValidationFailed(SegopsError):
    """The dataset failed its Great Expectations suite; nothing was trained or registered."""


@task(name="check-stores", cache_policy=NO_CACHE)
def check_stores(cfg: Config, workspace: str) -> list[str]:
    return setup.preflight_step(cfg, workspace)


@task(name="check-registry", cache_policy=NO_CACHE)
def check_registry(cfg: Config) -> Contract:
    return setup.registry_step(cfg)


@task(name="fetch-data", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, **ONLY_TRANSIENT)
def fetch_data(url: str, staging: str) -> str:
    return data_steps.fetch_step(url, staging)


@task(name="place-data", cache_policy=NO_CACHE)
def place_data(cfg: Config) -> Placed:
    return data_steps.place_step(cfg)


@task(name="validate-data", cache_policy=NO_CACHE)
def validate_data(cfg: Config) -> Validated:
    return data_steps.validate_step(cfg)


@task(
    name="version-data", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, **ONLY_TRANSIENT
)
def version_data(cfg: Config, workspace: str) -> DataVersion:
    return data_steps.version_step(cfg, workspace)


@task(name="check-unchanged", cache_policy=NO_CACHE)
def find_unchanged(cfg: Config, data: DataVersion) -> Existing | None:
    return attempt.unchanged_step(cfg, data)


@task(name="choose-attempt", cache_policy=NO_CACHE)
def choose_attempt(cfg: Config, data: DataVersion, key: str) -> Attempt:
    return attempt.choose_attempt_step(cfg, data, key)


@task(name="train", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE, **ONLY_TRANSIENT)
def train_model(cfg: Config, attempt_key: str, tags: dict, artifacts: dict) -> Trained:
    return training.train_step(cfg, attempt_key, tags, artifacts)


@task(name="evaluate", retries=1, cache_policy=NO_CACHE, **ONLY_TRANSIENT)
def evaluate_model(cfg: Config, run_id: str, checkpoint: str) -> Evaluated:
    return evaluation.evaluate_step(cfg, run_id, checkpoint)


@task(name="export-onnx", cache_policy=NO_CACHE)
def export_model(cfg: Config, run_id: str, checkpoint: str, ref: ModelRef) -> Exported:
    return evaluation.export_step(cfg, run_id, checkpoint, ref)


@task(name="register", retries=1, cache_policy=NO_CACHE, **ONLY_TRANSIENT)
def register_model(cfg: Config, run_id: str, checkpoint: str, attempt_key: str) -> ModelRef:
    return registration.register_step(cfg, run_id, checkpoint, attempt_key)


@task(name="promote", retries=1, cache_policy=NO_CACHE, **ONLY_TRANSIENT)
def promote_model(cfg: Config, ref: ModelRef, file_lock: bool = True) -> PromotionDecision:
    return registration.promote_step(cfg, ref, file_lock)


def promote_serialised(cfg: Config, ref: ModelRef) -> PromotionDecision:
    """The promote task, one decision per registered model at a time: under the Prefect
    server's global concurrency limit `promote-<name>` (every host), else the file lock."""
    if promotion_lock.server_url() is None:
        return promote_model(cfg, ref)
    with promotion_lock.global_promotion_lock(ref.name):
        return promote_model(cfg, ref, file_lock=False)


@task(name="model-report", retries=1, cache_policy=NO_CACHE, **ONLY_TRANSIENT)
def model_report(cfg: Config, ref: ModelRef, checkpoint: str) -> ModelReport:
    return report.report_step(cfg, ref, checkpoint)


def _gate_and_report(
    cfg: Config, ref: ModelRef, checkpoint: str
) -> tuple[PromotionDecision, ModelReport, Exported]:
    """Promote (or not) the registered `ref`, write its report (both as artifacts), then
    export it to ONNX: the export is off the decision's path (the pyfunc model registered
    never reads the ONNX file); its `segops.onnx.*` tags are set on the run and the version."""
    decision = promote_serialised(cfg, ref)
    create_markdown_artifact(_decision_markdown(ref, decision), key="promotion-decision")
    written = model_report(cfg, ref, checkpoint)
    if written.link:
        create_link_artifact(written.link, link_text=f"report of {ref.uri}", key="model-report")
    else:
        print(f"warning: no model report ({written.error}); the version is registered")
    onnx = export_model(cfg, ref.run_id, checkpoint, ref)
    if onnx.status == "failed":
        print(f"warning: ONNX export failed ({onnx.error}); recorded as tags")
    return decision, written, onnx


def _finish_undecided(cfg: Config, same: Existing, data: DataVersion) -> dict[str, Any]:
    """A version made from these inputs that never went through the gate (the flow that
    registered it was interrupted): register again (idempotent per attempt key: the same
    version, alias challenger), then gate and report it in the outputs of its attempt."""
    print(f"{same.ref.uri} was registered from these inputs but never decided: gating it now")
    cfg = setup.with_outputs_in(cfg, same.out_dir)
    ref = register_model(cfg, same.ref.run_id, same.checkpoint, same.attempt_key)
    decision, written, _ = _gate_and_report(cfg, ref, same.checkpoint)
    return outcome.gated_result(same, data, ref, decision, written)


def _export_missing(cfg: Config, same: Existing) -> None:
    """The ONNX export of a decided version that has none (its flow was killed after the gate,
    before the export): from its checkpoint where this machine has it, else say how."""
    if not Path(same.checkpoint).is_file():
        print(
            f"note: {same.ref.uri} has no ONNX export and its checkpoint is not on this machine "
            f"({same.checkpoint}): `segops export {same.ref.uri}` exports the registered model"
        )
        return
    print(f"{same.ref.uri} was decided but never exported to ONNX: exporting it now")
    onnx = export_model(
        setup.with_outputs_in(cfg, same.out_dir), same.ref.run_id, same.checkpoint, same.ref
    )
    if onnx.status == "failed":
        print(f"warning: ONNX export failed ({onnx.error}); recorded as tags")


def _decision_markdown(ref: ModelRef, decision: PromotionDecision) -> str:
    verdict = "promoted to **champion**" if decision.promote else "kept as **challenger**"
    reasons = "\n".join(f"- {r}" for r in decision.reasons)
    return f"## {ref.uri} {verdict}\n\n{reasons}\n"


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
        release_attempts()  # the attempt lock this flow held


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
    cfg = setup.attempt_config(load_config(params, [*(overrides or []), *extra]), key)
    git = setup.source_state(cfg, workspace)  # before the flow writes anything
    check_stores(cfg, workspace)
    contract = check_registry(cfg)
    validated = validate_data(cfg)
    if not validated.report.success:
        checked = validated.report
        create_markdown_artifact(checked.to_markdown(), key="validation-report")
        failures = ", ".join(c.expectation for c in checked.failures())
        found = f": {summary}" if (summary := checked.problem_summary()) else ""
        raise ValidationFailed(
            f"dataset {cfg.data.root} failed validation ({failures}){found}; "
            f"nothing was trained or registered. Report: {validated.json}"
        )
    placed = place_data(cfg)
    print(placed.message)
    cfg = placed.config
    data = version_data(cfg, workspace)
    same = None if force else find_unchanged(cfg, data)
    if same is not None and not same.decided:
        return _finish_undecided(cfg, same, data)
    if same is not None:
        note = (
            f"Skipped training: {same.ref.uri} was already made from dataset {data.dataset} "
            f"({data.dataset_md5}), "
            "this config and this code. Change any of them, or pass force=True, to retrain."
        )
        print(note)
        create_markdown_artifact(f"## Nothing to retrain\n\n{note}\n", key="retrain-skipped")
        if not same.exported:
            _export_missing(cfg, same)
        return outcome.skipped_result(same, data)
    chosen = choose_attempt(cfg, data, key)
    for note in chosen.notes:
        print(f"warning: {note}")
    if chosen.failed:
        print(f"marked orphaned MLflow runs FAILED: {', '.join(chosen.failed)}")
    if chosen.resumed:
        print(f"resuming interrupted attempt {chosen.attempt_key} (run {chosen.resumed})")
    cfg, attempt_key = chosen.config, chosen.attempt_key
    tags = lineage_record(data, validated, key, git, contract).to_tags()
    artifacts = {"lineage/data.dvc": data.dvc_text, "lineage/validation.json": validated.json}
    trained = train_model(cfg, attempt_key, tags, artifacts)
    evaluated = evaluate_model(cfg, trained.run_id, trained.checkpoint)
    ref = register_model(cfg, trained.run_id, trained.checkpoint, attempt_key)
    decision, written, onnx = _gate_and_report(cfg, ref, trained.checkpoint)
    return outcome.trained_result(ref, evaluated, decision, data, written, onnx)

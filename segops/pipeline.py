"""The retraining pipeline's steps: one function each, over small serialisable references.

`flows/retrain.py` runs each as one Prefect task; `segops run` runs the flow. Inputs and
outputs are JSON-able dicts (resolved config, paths, hashes, run ids, `models:/` URIs): never
models or tensors. A step retried with the same `attempt_key` continues the same MLflow run,
checkpoint folder and registry version instead of making new ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segops.config import Config, build_config
from segops.resume import choose_attempt, release_attempts
from segops.steps.evaluation import evaluate_step, export_step
from segops.steps.report import report_step

__all__ = [  # steps that live in other modules, called by the flow as `pipeline.<name>`
    "choose_attempt",
    "evaluate_step",
    "export_step",
    "release_attempts",
    "report_step",
]

LINEAGE = "segops."


def _cfg(config: dict[str, Any]) -> Config:
    return build_config(config, "pipeline config")


def attempt_config(config: dict[str, Any], attempt_key: str) -> dict[str, Any]:
    """`config` with outputs under `runs/<attempt_key>/` (checkpoints, eval, validation).

    Refuses here, before the flow validates or versions anything, an unknown model, options
    it does not take, an instance model on data without instances and a promotion metric the
    model cannot have.
    """
    from segops.promotion.decide import check_metric
    from segops.train.precheck import check_model_fast

    cfg = _cfg(config)
    check_metric(cfg.promotion.metric, check_model_fast(cfg))  # torch-free where it can be
    out = Path(cfg.train.out_dir).parent / attempt_key
    updated = config | {
        "train": {**config["train"], "out_dir": str(out)},
        "validation": {**config["validation"], "report_dir": str(out / "validation")},
    }
    return _cfg(updated).to_dict()


def preflight_step(config: dict[str, Any], workspace: str = ".") -> list[str]:
    """MLflow, the DVC remote and the Prefect API answer (seconds, before anything runs)."""
    from segops.preflight import check_stores

    return check_stores(_cfg(config), workspace)


def registry_step(config: dict[str, Any]) -> dict[str, Any]:
    """The model's contract (`kind`, `classes`, input `channels`); ConfigError when
    `promotion.model_name` already has a champion of the other model kind (semantic vs
    instance), of other classes or of another channel count:
    the gate could not compare them, so the flow stops here, before anything is validated,
    versioned, trained or registered."""
    from segops import tracking
    from segops.data.formats import read_layout
    from segops.data.io import IMAGE_CHANNELS
    from segops.promotion.compat import check_compatible
    from segops.train.run import model_kind

    cfg = _cfg(config)
    tracking.connect(cfg.tracking)
    classes = read_layout(cfg.data.root, cfg.data.format, cfg.data).classes
    kind = model_kind(cfg)
    name, root = cfg.promotion.model_name, str(cfg.data.root)
    check_compatible(name, kind, classes, root, IMAGE_CHANNELS)
    return {"kind": kind, "classes": list(classes), "channels": IMAGE_CHANNELS}


def fetch_step(url: str, staging: str) -> str:
    """A dataset on object storage (`s3://bucket/prefix`) downloaded whole into `staging`
    (a folder of this flow run, outside the versioned tree); returns the local folder, which
    the flow then validates and imports like any dataset outside `data/`."""
    from segops.data.fetch import fetch_dataset

    return str(fetch_dataset(url, staging))


def place_step(config: dict[str, Any]) -> dict[str, Any]:
    """The dataset inside the versioned tree: `config` with `data.root` there (a dataset
    outside it is imported into `<versioning.path>/<folder>/` first) and a one-line message."""
    from segops.data.place import place_dataset

    cfg = _cfg(config)
    placed = place_dataset(cfg.data.root, cfg.versioning.path)
    moved = config | {"data": {**config["data"], "root": placed.root}}
    return {"config": _cfg(moved).to_dict(), "message": placed.message}


def source_state(config: dict[str, Any], workspace: str = ".") -> dict[str, str]:
    """The code's git commit and whether the tree is dirty, read before the flow writes
    anything; the `.dvc` file the flow itself rewrites does not count."""
    from segops.tracking import git_state

    return git_state(workspace, ignore=[f"{_cfg(config).versioning.path}.dvc"])


def version_step(config: dict[str, Any], workspace: str = ".") -> dict[str, Any]:
    """DVC: add and push the dataset directory; returns the DataVersion as a dict."""
    from segops.versioning import version_dataset

    cfg = _cfg(config)
    return version_dataset(workspace, cfg.versioning, cfg.data.root).to_dict()


def validate_step(config: dict[str, Any]) -> dict[str, Any]:
    """Great Expectations suite on the dataset; returns success, report paths and markdown.

    On success the dataset is also loaded once by the core, which writes missing split files:
    the split is part of the data and must exist before the data is versioned.
    """
    from segops.data.manifest import load_dataset
    from segops.validation import validate_dataset

    cfg = _cfg(config)
    report = validate_dataset(cfg)
    if report.success:
        load_dataset(cfg.data, eval_split=cfg.evaluate.split)
    out = Path(cfg.validation.report_dir)
    return {
        "success": report.success,
        "json": str(out / "validation.json"),
        "markdown": report.to_markdown(),
        "failures": [c.expectation for c in report.failures()],
        "summary": report.problem_summary(),
    }


def lineage_tags(
    data_version: dict[str, Any],
    validation: dict[str, Any],
    flow_run_id: str,
    git: dict[str, str],
    contract: dict[str, Any],
) -> dict[str, str]:
    """The lineage tags every run and registered version carries (docs/architecture.md);
    `git` is `source_state`, read when the flow started; `contract` is `registry_step`'s."""
    from segops.lineage.code import code_version
    from segops.record import LineageRecord

    record = LineageRecord(
        dataset_path=data_version["dataset"],
        dataset_md5=data_version["dataset_md5"],
        data_path=data_version["path"],
        data_md5=data_version["md5"],
        dvc_file=data_version["dvc_file"],
        remote_url=data_version["remote_url"],
        classes=tuple(contract["classes"]),
        model_kind=contract["kind"],
        git_commit=git["commit"],
        git_dirty=git["dirty"] == "true",
        validation_passed=bool(validation["success"]),
        flow_run_id=flow_run_id or "none",
        code_version=code_version(),
        channels=contract.get("channels"),
    )
    return record.to_tags()


def unchanged_step(config: dict[str, Any], data_version: dict[str, Any]) -> dict[str, Any] | None:
    """The registered version already made from this data, config and code, or None.

    Compares the dataset's own hash and path, the config hash (locations and promotion settings
    excluded) and the code version with the tags of the versions of `promotion.model_name`.
    Also says whether the version was `decided` (went through the gate: a flow killed between
    register and promote leaves it undecided), its `attempt_key`, `out_dir`, `checkpoint` and
    `metrics` (the evaluation's headline figures copied to the version).
    """
    from segops import tracking
    from segops.promotion.registry import ATTEMPT_TAG, DECIDED_TAG, find_version, version_tags
    from segops.resume import identity

    cfg = _cfg(config)
    tracking.connect(cfg.tracking)
    ref = find_version(cfg.promotion.model_name, identity(cfg, data_version))
    if ref is None:
        return None
    tags = version_tags(ref)
    key = tags.get(ATTEMPT_TAG, "")
    out_dir = tags.get(LINEAGE + "run_dir") or str(Path(cfg.train.out_dir).parent / key)
    return {
        "name": ref.name,
        "version": ref.version,
        "run_id": ref.run_id,
        "uri": ref.uri,
        "decided": DECIDED_TAG in tags,
        "attempt_key": key,
        "out_dir": out_dir,
        "checkpoint": str(Path(out_dir) / "checkpoints" / "best.pt"),
        "metrics": {k[8:]: float(v) for k, v in tags.items() if k.startswith("metrics.")},
    }


def train_step(
    config: dict[str, Any], attempt_key: str, tags: dict[str, str], artifacts: dict[str, str]
) -> dict[str, Any]:
    """Train inside the MLflow run of `attempt_key` (resuming its checkpoint on a retry).

    `artifacts` maps artifact paths to text (the `.dvc` file) or local files (the validation
    report) to attach as lineage. Returns run id, best checkpoint and best val mean IoU.
    """
    from segops import tracking
    from segops.record import world_tags
    from segops.train.callbacks import EpochPrinter
    from segops.train.launch import plan_launch
    from segops.train.run import train_configured

    cfg = _cfg(config)
    plan = plan_launch(cfg)  # a world this machine cannot run fails here, before the run opens
    store = tracking.connect(cfg.tracking)
    where = {LINEAGE + "run_dir": str(cfg.train.out_dir)}  # found again by a resuming rerun
    where |= world_tags(plan.world_size, plan.backend, cfg.train.batch_size)
    run_id = tracking.open_run(store, cfg, attempt_key, tags | where)
    for name, value in artifacts.items():
        if Path(value).is_file():
            tracking.log_file(run_id, value, str(Path(name).parent))
        else:
            tracking.log_text(run_id, value, name)
    callbacks = [tracking.MlflowMetrics(store, run_id), EpochPrinter()]
    try:
        result = train_configured(cfg, resume=True, callbacks=callbacks)
    except Exception:
        tracking.finish_run(run_id, failed=True)
        raise
    tracking.log_file(run_id, result.history_csv)
    tracking.log_file(run_id, Path(result.out_dir) / "config.yaml")
    tracking.set_tags(
        run_id, {LINEAGE + "dataset_hash": result.dataset_hash, LINEAGE + "run_dir": result.out_dir}
    )
    return {
        "run_id": run_id,
        "checkpoint": result.best_checkpoint,
        "out_dir": result.out_dir,
        "best_miou": result.best_miou,
        "best_epoch": result.best_epoch,
    }


def register_step(
    config: dict[str, Any], run_id: str, checkpoint: str, attempt_key: str
) -> dict[str, Any]:
    """Log the pyfunc model (once per run) and register it as a new version, alias challenger."""
    from segops import tracking
    from segops.promotion.registry import register
    from segops.serving.logging import log_pyfunc

    cfg = _cfg(config)
    tracking.connect(cfg.tracking)
    summary = tracking.run_summary(run_id)
    model_uri = summary["tags"].get(LINEAGE + "model_uri")
    if model_uri is None or not tracking.model_ready(model_uri):
        # A kill while logging leaves a PENDING logged model (and no tag, which is set after
        # logging): mark it FAILED and log the model again.
        tracking.fail_pending_models(run_id)
        model_uri = log_pyfunc(run_id, checkpoint)
        tracking.set_tags(run_id, {LINEAGE + "model_uri": model_uri})
        summary = tracking.run_summary(run_id)  # now with segops.weights_sha256
    tags = {k: v for k, v in summary["tags"].items() if k.startswith(LINEAGE)}
    for metric in ("mean_iou", "mask_ap"):
        if metric in summary["metrics"]:
            tags[f"metrics.{metric}"] = str(summary["metrics"][metric])
    ref = register(model_uri, cfg.promotion.model_name, run_id, attempt_key, tags)
    return {"name": ref.name, "version": ref.version, "run_id": ref.run_id, "uri": ref.uri}


def promote_step(
    config: dict[str, Any], model: dict[str, str], file_lock: bool = True
) -> dict[str, Any]:
    """Decide challenger vs champion, record the decision, move `champion` only on a pass.
    `file_lock=False`: the caller holds a lock every host shares (see `gate.promote`)."""
    from segops import tracking
    from segops.promotion.gate import promote
    from segops.promotion.registry import ModelRef

    cfg = _cfg(config)
    tracking.connect(cfg.tracking)
    ref = ModelRef(model["name"], model["version"], model["run_id"])
    decision = promote(ref, cfg, file_lock=file_lock)  # champion read under the lock
    tracking.finish_run(model["run_id"])
    return decision.to_dict()

"""The retraining pipeline's steps: one function each, over small serialisable references.

`flows/retrain.py` runs each as one Prefect task; `segops run` runs the flow. Inputs and
outputs are JSON-able dicts (resolved config, paths, hashes, run ids, `models:/` URIs): never
models or tensors. A step retried with the same `attempt_key` continues the same MLflow run,
checkpoint folder and registry version instead of making new ones.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from segops.config import Config, build_config

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
    from segops.train.run import check_model_config, model_kind

    cfg = _cfg(config)
    check_model_config(cfg)
    check_metric(cfg.promotion.metric, model_kind(cfg))
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
    """The model's contract (`kind`, `classes`); ConfigError when `promotion.model_name`
    already has a champion of the other model kind (semantic vs instance) or of other classes:
    the gate could not compare them, so the flow stops here, before anything is validated,
    versioned, trained or registered."""
    from segops import tracking
    from segops.data.formats import read_layout
    from segops.promotion.compat import check_compatible
    from segops.train.run import model_kind

    cfg = _cfg(config)
    tracking.connect(cfg.tracking)
    classes = read_layout(cfg.data.root, cfg.data.format, cfg.data).classes
    kind = model_kind(cfg)
    check_compatible(cfg.promotion.model_name, kind, classes, str(cfg.data.root))
    return {"kind": kind, "classes": list(classes)}


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
    from segops.promotion.compat import CLASSES_TAG, KIND_TAG

    return {
        KIND_TAG: contract["kind"],
        CLASSES_TAG: json.dumps(contract["classes"]),
        LINEAGE + "code.version": code_version(),
        LINEAGE + "data.md5": data_version["md5"],
        LINEAGE + "data.path": data_version["path"],
        LINEAGE + "dataset.path": data_version["dataset"],
        LINEAGE + "dataset.md5": data_version["dataset_md5"],
        LINEAGE + "data.dvc_file": data_version["dvc_file"],
        LINEAGE + "data.remote_url": data_version["remote_url"],
        LINEAGE + "git.commit": git["commit"],
        LINEAGE + "git.dirty": git["dirty"],
        LINEAGE + "validation.passed": str(validation["success"]).lower(),
        LINEAGE + "prefect.flow_run_id": flow_run_id or "none",
    }


def unchanged_step(config: dict[str, Any], data_version: dict[str, Any]) -> dict[str, str] | None:
    """The registered version already made from this data, config and code, or None.

    Compares the dataset's own hash and path, the config hash (locations and promotion settings
    excluded) and the code version with the tags of the versions of `promotion.model_name`.
    """
    from segops import tracking
    from segops.config import config_hash
    from segops.lineage.code import code_version
    from segops.promotion.registry import find_version

    cfg = _cfg(config)
    tracking.connect(cfg.tracking)
    same = {
        LINEAGE + "dataset.md5": data_version["dataset_md5"],
        LINEAGE + "dataset.path": data_version["dataset"],
        LINEAGE + "config_hash": config_hash(cfg),
        LINEAGE + "code.version": code_version(),
    }
    ref = find_version(cfg.promotion.model_name, same)
    return (
        None
        if ref is None
        else {"name": ref.name, "version": ref.version, "run_id": ref.run_id, "uri": ref.uri}
    )


def train_step(
    config: dict[str, Any], attempt_key: str, tags: dict[str, str], artifacts: dict[str, str]
) -> dict[str, Any]:
    """Train inside the MLflow run of `attempt_key` (resuming its checkpoint on a retry).

    `artifacts` maps artifact paths to text (the `.dvc` file) or local files (the validation
    report) to attach as lineage. Returns run id, best checkpoint and best val mean IoU.
    """
    from segops import tracking
    from segops.train.callbacks import EpochPrinter
    from segops.train.run import train_configured

    cfg = _cfg(config)
    store = tracking.connect(cfg.tracking)
    run_id = tracking.open_run(store, cfg, attempt_key, tags)
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


def _explain_worst(cfg: Config, checkpoint: str, eval_dir: str) -> str:
    """Grad-CAM overlays of the worst images into `eval_dir/explanations` (logged with eval/);
    returns how many, or the error: an explanation must never fail the evaluation. Instance
    models are not explained (Grad-CAM here targets a class's pixel logits)."""
    from segops.explain import explain_worst
    from segops.inference import load_trained

    try:
        trained = load_trained(checkpoint)
        if trained.kind != "semantic":
            return f"skipped: Grad-CAM explains semantic models, {cfg.model.name} is {trained.kind}"
        written = explain_worst(trained, cfg, eval_dir, k=cfg.evaluate.worst_k)
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}"[:300]
    return f"{len(written)} Grad-CAM overlays in eval/explanations"


def evaluate_step(config: dict[str, Any], run_id: str, checkpoint: str) -> dict[str, Any]:
    """Evaluate the checkpoint; log metrics, per-class IoU, tables and plots to the run."""
    from segops import tracking
    from segops.evaluate.report import evaluate_checkpoint, headline_metrics

    cfg = _cfg(config)
    tracking.connect(cfg.tracking)
    report = evaluate_checkpoint(cfg, checkpoint)
    explained = _explain_worst(cfg, checkpoint, report.out_dir)
    tracking.set_tags(run_id, {LINEAGE + "explanations": explained})
    metrics = headline_metrics(json.loads(Path(report.metrics_json).read_text()))
    tracking.log_metrics(run_id, metrics)
    tracking.log_file(run_id, report.out_dir, "eval")
    return {
        "mean_iou": report.mean_iou,
        "dataset_hash": report.dataset_hash,
        "metrics_json": report.metrics_json,
        "plots": list(report.plots),
    }


def export_step(config: dict[str, Any], run_id: str, checkpoint: str) -> dict[str, str]:
    """Export the checkpoint to ONNX and compare onnxruntime with PyTorch on the evaluation
    split; log `onnx/model.onnx` and the `segops.onnx.*` tags (parity numbers, or status
    "failed" with the error) to the run, from where registration copies them to the version.
    A failed export is recorded, not raised: the PyTorch model is still registered. Instance
    models are not exported (status "skipped", with the reason)."""
    from segops import tracking
    from segops.serving.onnx import export_and_check
    from segops.train.run import model_kind

    cfg = _cfg(config)
    tracking.connect(cfg.tracking)
    if model_kind(cfg) == "instance":
        tags = {
            LINEAGE + "onnx.status": "skipped",
            LINEAGE + "onnx.reason": "instance models (Mask R-CNN) are served by the PyTorch "
            "pyfunc only: their detection post-processing is not exported",
        }
        tracking.set_tags(run_id, tags)
        return tags
    tags = export_and_check(checkpoint, Path(cfg.train.out_dir) / "onnx", cfg)
    path = tags.pop(LINEAGE + "onnx.path", "")
    if tags.get(LINEAGE + "onnx.status") == "ok" and path:
        tracking.log_file(run_id, path, "onnx")
        tags[LINEAGE + "onnx.artifact"] = "onnx/" + Path(path).name
    tracking.set_tags(run_id, tags)
    return tags


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
    if model_uri is None:
        model_uri = log_pyfunc(run_id, checkpoint)
        tracking.set_tags(run_id, {LINEAGE + "model_uri": model_uri})
        summary = tracking.run_summary(run_id)  # now with segops.weights_sha256
    tags = {k: v for k, v in summary["tags"].items() if k.startswith(LINEAGE)}
    for metric in ("mean_iou", "mask_ap"):
        if metric in summary["metrics"]:
            tags[f"metrics.{metric}"] = str(summary["metrics"][metric])
    ref = register(model_uri, cfg.promotion.model_name, run_id, attempt_key, tags)
    return {"name": ref.name, "version": ref.version, "run_id": ref.run_id, "uri": ref.uri}


def _lock_dir(cfg: Config) -> Path:
    """Where concurrent promotions of a local store serialise (beside its artifacts)."""
    root = cfg.tracking.artifact_root
    return Path(root).parent if "://" not in root else Path.home() / ".cache" / "segops"


def promote_step(config: dict[str, Any], model: dict[str, str]) -> dict[str, Any]:
    """Decide challenger vs champion, record the decision, move `champion` only on a pass."""
    from segops import tracking
    from segops.promotion.gate import promote
    from segops.promotion.registry import ModelRef

    cfg = _cfg(config)
    tracking.connect(cfg.tracking)
    ref = ModelRef(model["name"], model["version"], model["run_id"])
    decision = promote(ref, cfg, _lock_dir(cfg))
    tracking.finish_run(model["run_id"])
    return decision.to_dict()


def _report_lineage(run_tags: dict[str, str], version_tags: dict[str, str]) -> dict[str, str]:
    """The lineage and decision values a model report shows."""
    keys = ("data.md5", "git.commit", "git.dirty", "config_hash", "code.version", "seed")
    keys += ("prefect.flow_run_id", "validation.passed", "weights_sha256", "env.torch")
    shown = {k: run_tags[LINEAGE + k] for k in keys if LINEAGE + k in run_tags}
    for key in ("promote", "reasons", "champion_version"):
        if f"promotion.{key}" in version_tags:
            shown[f"promotion.{key}"] = version_tags[f"promotion.{key}"]
    return shown


def _comparison(cfg: Config, ref: Any, checkpoint: str, holder: str, eval_dir: Path, tmp: str):
    """The challenger against the champion it was measured against (None for the first)."""
    from segops.evaluate.html_report import compare_with_champion
    from segops.inference import load_trained
    from segops.promotion.gate import champion_eval_dir
    from segops.promotion.registry import resolve
    from segops.serving.registered import load_registered

    if holder in ("", "none"):
        return None
    champ = resolve(f"models:/{ref.name}/{holder}")
    data_version = json.loads((eval_dir / "metrics.json").read_text())["dataset_hash"]
    champ_dir = champion_eval_dir(champ, cfg, data_version, tmp)
    found = compare_with_champion(
        load_trained(checkpoint), load_registered(champ.uri), cfg, eval_dir, champ_dir
    )
    # Name both by registry URI: the champion's weights were read from a temporary download.
    return dataclasses.replace(found, champion=champ.uri, challenger=ref.uri)


def report_step(config: dict[str, Any], model: dict[str, str], checkpoint: str) -> dict[str, Any]:
    """Write the version's self-contained HTML report (with the champion comparison), log it
    to the run and tag the version with it. A failure is recorded on the version, not raised:
    the model is already registered and decided, and a missing report must not undo that."""
    import tempfile

    from segops import tracking
    from segops.evaluate.html_report import write_model_report
    from segops.promotion.registry import ModelRef, set_version_tags, version_tags

    cfg = _cfg(config)
    tracking.connect(cfg.tracking)
    ref = ModelRef(model["name"], model["version"], model["run_id"])
    eval_dir = Path(cfg.train.out_dir) / "eval"
    try:
        tags = version_tags(ref)
        with tempfile.TemporaryDirectory(prefix="segops-report-") as tmp:
            holder = tags.get("promotion.champion_version", "none")
            comparison = _comparison(cfg, ref, checkpoint, holder, eval_dir, tmp)
            lineage = _report_lineage(tracking.run_summary(ref.run_id)["tags"], tags)
            out = Path(cfg.train.out_dir) / "report" / "model_report.html"
            html = write_model_report(eval_dir, out, f"{ref.uri}", lineage, comparison)
        tracking.log_file(ref.run_id, html, "report")
        link = tracking.artifact_link(ref.run_id, "report/model_report.html")
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        set_version_tags(ref, {LINEAGE + "report.error": error})
        return {"html": None, "link": None, "error": error}
    set_version_tags(ref, {LINEAGE + "report": link})
    return {"html": str(html), "link": link, "error": None}

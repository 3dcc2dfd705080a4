"""Pipeline steps after training: evaluate (with Grad-CAM of the worst images) and ONNX export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from segops.config import Config
from segops.record import PREFIX as LINEAGE
from segops.steps.records import Evaluated, Exported

if TYPE_CHECKING:
    from segops.promotion.registry import ModelRef

# lazy imports: the flow module (and `segops run`, which imports it) must not pay for torch,
# MLflow, DVC and ONNX before a step runs (docs/development.md "Imports").


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


def evaluate_step(cfg: Config, run_id: str, checkpoint: str) -> Evaluated:
    """Evaluate the checkpoint on `evaluate.split`; log metrics, per-class IoU, tables and
    plots to the run (`eval/`). When the dataset has a `test` split (and the gate's split is
    another), it is evaluated too and logged apart: metrics `test_*`, artifacts `eval_test/`;
    the gate never reads them."""
    from segops import tracking
    from segops.data.manifest import load_dataset
    from segops.evaluate.report import evaluate_checkpoint, headline_metrics

    tracking.connect(cfg.tracking)
    info = load_dataset(cfg.data, eval_split=cfg.evaluate.split)
    report = evaluate_checkpoint(cfg, checkpoint, dataset=info)
    explained = _explain_worst(cfg, checkpoint, report.out_dir)
    tracking.set_tags(run_id, {LINEAGE + "explanations": explained})
    metrics = headline_metrics(json.loads(Path(report.metrics_json).read_text()))
    tracking.log_metrics(run_id, metrics)
    tracking.log_file(run_id, report.out_dir, "eval")
    if cfg.evaluate.split == "test" or not len(info.split("test")):
        return Evaluated(report)
    out = Path(cfg.train.out_dir) / "eval_test"
    test = evaluate_checkpoint(cfg, checkpoint, "test", out, dataset=info)
    scores = headline_metrics(json.loads(Path(test.metrics_json).read_text()))
    tracking.log_metrics(run_id, {f"test_{k}": v for k, v in scores.items()})
    tracking.log_file(run_id, test.out_dir, "eval_test")
    return Evaluated(report, test)


def export_step(cfg: Config, run_id: str, checkpoint: str, ref: ModelRef | None = None) -> Exported:
    """Export the checkpoint to ONNX and compare onnxruntime with PyTorch on the evaluation
    split; log `onnx/model.onnx` and the `segops.onnx.*` tags (parity numbers, or status
    "failed" with the error) to the run and, given `ref`, to that registered version (the flow
    exports after the gate: the registered pyfunc model never reads the ONNX file; a version
    registered after the export gets the tags copied from the run). A failed export is
    recorded, not raised. Instance models are not exported, nor any model when
    `predict.onnx` is false (status "skipped", with the reason)."""
    from segops import tracking
    from segops.train.run import model_kind

    tracking.connect(cfg.tracking)
    if not cfg.predict.onnx:
        tags = {
            LINEAGE + "onnx.status": "skipped",
            LINEAGE + "onnx.reason": "predict.onnx is false: `segops export "
            + (ref.uri if ref is not None else "MODEL")
            + " model.onnx` exports it",
        }
        return _recorded(run_id, ref, tags)
    if model_kind(cfg) == "instance":
        tags = {
            LINEAGE + "onnx.status": "skipped",
            LINEAGE + "onnx.reason": "instance models (Mask R-CNN) are served by the PyTorch "
            "pyfunc only: their detection post-processing is not exported",
        }
        return _recorded(run_id, ref, tags)
    from segops.serving.onnx import export_and_check  # torch.onnx, onnxscript: ~0.7 s

    tags = export_and_check(checkpoint, Path(cfg.train.out_dir) / "onnx", cfg)
    path = tags.pop(LINEAGE + "onnx.path", "")
    if tags.get(LINEAGE + "onnx.status") == "ok" and path:
        tracking.log_file(run_id, path, "onnx")
        tags[LINEAGE + "onnx.artifact"] = "onnx/" + Path(path).name
    return _recorded(run_id, ref, tags)


def _recorded(run_id: str, ref: ModelRef | None, tags: dict[str, str]) -> Exported:
    """The export's tags on the run, and on the registered version `ref` when given."""
    from segops import tracking
    from segops.promotion.registry import set_version_tags

    tracking.set_tags(run_id, tags)
    if ref is not None:
        set_version_tags(ref, tags)
    return Exported(tags)

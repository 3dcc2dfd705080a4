"""The retrain flow's result: the records its steps returned, as the JSON-able dict that
`retrain()` returns, `segops run` prints and the flow tests read (`model`, `data`, `metrics`,
`decision`, `report`, `onnx`, `skipped`, `resumed`). Built here only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segops.steps.records import Evaluated, Existing, Exported, ModelReport

if TYPE_CHECKING:
    from segops.promotion.decide import PromotionDecision
    from segops.promotion.registry import ModelRef
    from segops.versioning import DataVersion


def model_dict(ref: ModelRef) -> dict[str, str]:
    return {"name": ref.name, "version": ref.version, "run_id": ref.run_id, "uri": ref.uri}


def skipped_result(existing: Existing, data: DataVersion) -> dict[str, Any]:
    """Nothing to train: `existing` was made from the same data, config and code."""
    model = model_dict(existing.ref)
    return {
        "skipped": True,
        "model": model,
        "data": data.to_dict(),
        "metrics": None,
        "decision": None,
    }


def gated_result(
    existing: Existing,
    data: DataVersion,
    ref: ModelRef,
    decision: PromotionDecision,
    report: ModelReport,
) -> dict[str, Any]:
    """An undecided `existing` version (registered again as `ref`) gated and reported now."""
    return {
        "skipped": False,
        "resumed": True,
        "model": model_dict(ref),
        "metrics": dict(existing.metrics),
        "decision": decision.to_dict(),
        "data": data.to_dict(),
        "report": report.to_dict(),
    }


def trained_result(
    ref: ModelRef,
    evaluated: Evaluated,
    decision: PromotionDecision,
    data: DataVersion,
    report: ModelReport,
    onnx: Exported,
) -> dict[str, Any]:
    """A model trained, evaluated, exported, registered, gated and reported by this flow."""
    return {
        "skipped": False,
        "model": model_dict(ref),
        "metrics": evaluated.to_dict(),
        "decision": decision.to_dict(),
        "data": data.to_dict(),
        "report": report.to_dict(),
        "onnx": dict(onnx.tags),
    }

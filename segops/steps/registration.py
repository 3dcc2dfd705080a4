"""Register the trained model (alias challenger) and put it through the promotion gate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from segops.config import Config
from segops.record import PREFIX

if TYPE_CHECKING:
    from segops.promotion.decide import PromotionDecision
    from segops.promotion.registry import ModelRef

# lazy imports: the flow module (and `segops run`, which imports it) must not pay for torch,
# MLflow, DVC and ONNX before a step runs (docs/development.md "Imports").

METRICS = "metrics."  # the run's headline metrics, copied to the version's tags
COPIED_METRICS = ("mean_iou", "mask_ap")


def registered_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    """The headline metrics `register_step` copied to a version's tags."""
    return {k.removeprefix(METRICS): float(v) for k, v in tags.items() if k.startswith(METRICS)}


def register_step(cfg: Config, run_id: str, checkpoint: str, attempt_key: str) -> ModelRef:
    """Log the pyfunc model (once per run) and register it as a new version, alias challenger;
    a retry with the same `attempt_key` returns the same version."""
    from segops import tracking
    from segops.promotion.registry import register
    from segops.serving.logging import log_pyfunc

    tracking.connect(cfg.tracking)
    summary = tracking.run_summary(run_id)
    model_uri = summary["tags"].get(PREFIX + "model_uri")
    if model_uri is None or not tracking.model_ready(model_uri):
        # A kill while logging leaves a PENDING logged model (and no tag, which is set after
        # logging): mark it FAILED and log the model again.
        tracking.fail_pending_models(run_id)
        model_uri = log_pyfunc(run_id, checkpoint)
        tracking.set_tags(run_id, {PREFIX + "model_uri": model_uri})
        summary = tracking.run_summary(run_id)  # now with segops.weights_sha256
    tags = {k: v for k, v in summary["tags"].items() if k.startswith(PREFIX)}
    for metric in COPIED_METRICS:
        if metric in summary["metrics"]:
            tags[METRICS + metric] = str(summary["metrics"][metric])
    return register(model_uri, cfg.promotion.model_name, run_id, attempt_key, tags)


def promote_step(cfg: Config, ref: ModelRef, file_lock: bool = True) -> PromotionDecision:
    """Decide challenger vs champion, record the decision, move `champion` only on a pass.
    `file_lock=False`: the caller holds a lock every host shares (see `gate.promote`)."""
    from segops import tracking
    from segops.promotion.gate import promote

    tracking.connect(cfg.tracking)
    decision = promote(ref, cfg, file_lock=file_lock)  # champion read under the lock
    tracking.finish_run(ref.run_id)
    return decision

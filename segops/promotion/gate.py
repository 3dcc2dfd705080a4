"""The promotion step: gather both models' scores on the same data version, decide, record.

Scores come from each run's `eval/` artifacts. When the champion was evaluated on another data
version, it is re-evaluated on the challenger's data first (its weights come from the registry).
"""

from __future__ import annotations

import json
import tempfile
from contextlib import nullcontext
from pathlib import Path

import mlflow
import pandas as pd

from segops.config import Config
from segops.data.manifest import DatasetInfo
from segops.evaluate.report import EvalReport, evaluate_model
from segops.promotion.decide import METRICS, PromotionDecision, Scores, decide, primary_metric
from segops.promotion.registry import (
    ModelRef,
    champion,
    now_iso,
    promotion_lock,
    promotion_lock_dir,
    record_decision,
)
from segops.serving.registered import load_registered


def protocol_mark(metrics: dict) -> str:
    """ "" for an evaluation made the way today's are; else a mark that makes its data version
    distinct, so that the gate re-evaluates such a champion rather than compare figures made
    another way: at the model's input size (before metrics were computed at the original
    resolution), or with windows of the input size (before tiles as large as `predict.max_tile`
    allows; its evaluation protocol has no `max_tile`)."""
    protocol = metrics.get("protocol", {})
    if protocol.get("resolution") != "original":
        return "@model-input-size"
    if metrics.get("kind", "semantic") == "semantic" and "max_tile" not in protocol:
        return "@input-size-windows"
    return ""


def scores_from_files(
    metrics_json: str | Path, per_image_csv: str | Path, metric: str = "auto"
) -> Scores:
    """Scores by primary `metric` (see `primary_metric`) from an evaluation's metrics.json and
    per_image.csv. ValueError when the evaluation lacks that metric."""
    metrics = json.loads(Path(metrics_json).read_text())
    kind = metrics.get("kind", "semantic")
    name = primary_metric(metric, kind)
    column = METRICS[name].column if name in METRICS else name
    frame = pd.read_csv(per_image_csv, dtype={"id": str})
    if name not in metrics or column not in frame:
        raise ValueError(
            f"{metrics_json} (a {kind} model's evaluation) has no {name!r}: set "
            f"promotion.metric to one it has (auto, {', '.join(METRICS)})"
        )
    return Scores(
        data_version=metrics["dataset_hash"] + protocol_mark(metrics),
        per_image=dict(zip(frame["id"], frame[column].astype(float), strict=True)),
        per_class={n: v.get(column) for n, v in metrics["per_class"].items()},
        mean=float(metrics[name]),
        metric=name,
    )


def run_scores(run_id: str, metric: str = "auto") -> Scores:
    """Scores by `metric` logged by the evaluation step of run `run_id`."""
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="eval", dst_path=tmp
        )
        local = Path(local)
        return scores_from_files(local / "metrics.json", local / "per_image.csv", metric)


def reevaluate(ref: ModelRef, cfg: Config, dataset: DatasetInfo | None = None) -> EvalReport:
    """Evaluate registered version `ref` on `cfg`'s data (a fresh temporary output folder)."""

    tmp = Path(tempfile.mkdtemp(prefix="segops-reeval-"))
    return evaluate_model(load_registered(ref.uri), cfg, cfg.evaluate.split, tmp / "eval", dataset)


def champion_eval_dir(ref: ModelRef, cfg: Config, data_version: str, dst: str | Path) -> Path:
    """A folder with version `ref`'s evaluation on `data_version`: its logged `eval/` when that
    was made on this data, else a fresh evaluation (re-evaluated on `cfg`'s data)."""
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=ref.run_id, artifact_path="eval", dst_path=str(dst)
        )
    )
    metrics = json.loads((local / "metrics.json").read_text())
    if metrics["dataset_hash"] == data_version and not protocol_mark(metrics):
        return local
    return Path(reevaluate(ref, cfg).out_dir)


def _champion_scores(current: ModelRef, cfg: Config, data_version: str) -> Scores:
    scores = run_scores(current.run_id, cfg.promotion.metric)
    if scores.data_version == data_version:
        return scores
    report = reevaluate(current, cfg)
    return scores_from_files(report.metrics_json, report.per_image_csv, cfg.promotion.metric)


def promote(
    ref: ModelRef, cfg: Config, lock_dir: str | Path | None = None, file_lock: bool = True
) -> PromotionDecision:
    """Decide whether `ref` (the challenger) replaces the champion, record it, move the alias.

    Serialised by the lock in `lock_dir` (default `promotion_lock_dir(cfg)`, the one rollback
    takes too) so that concurrent flows decide one after the other. `file_lock=False` when the
    caller already holds a lock shared by every host (the flow's Prefect concurrency limit);
    the champion is read after the lock is taken either way.
    """
    challenger = run_scores(ref.run_id, cfg.promotion.metric)
    lock = promotion_lock(lock_dir or promotion_lock_dir(cfg)) if file_lock else nullcontext()
    with lock:
        current = champion(ref.name)
        # A retried step may find `ref` already champion: then there is nothing to beat.
        same = current is not None and current.version == ref.version
        holder = None if same else current
        base = _champion_scores(holder, cfg, challenger.data_version) if holder else None
        decision = decide(challenger, base, cfg.promotion)
        tags = decision.to_tags()
        tags["promotion.champion_version"] = holder.version if holder else "none"
        tags["promotion.decided_at"] = now_iso()
        record_decision(ref, tags, decision.promote, "; ".join(decision.reasons))
    return decision

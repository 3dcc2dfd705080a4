"""`segops models history`: every version, champion move and scoring of a model, in time order.

Merges four records: the registry's versions (with their lineage tags: data version, flow run,
metrics), the promotion decision tags on each version, our append-only champion log
(promotions and rollbacks, see `segops.promotion.registry`), and the score runs (which version
scored which input, see `segops.tracking.scoring`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from segops.promotion.registry import history, list_versions
from segops.record import TAGS
from segops.tracking.scoring import SCORE_TAGS, score_runs

_RANK = {"registered": 0, "decided": 1, "promoted": 2, "rolled_back": 2, "scored": 3}


def _when(value: str | int | None) -> datetime:
    """An ISO timestamp (ours) or epoch milliseconds (MLflow's) as an aware datetime."""
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, UTC)
    return datetime.fromisoformat(str(value)) if value else datetime.fromtimestamp(0, UTC)


def _registered(v: dict[str, Any]) -> dict[str, Any]:
    tags = v["tags"]
    return {
        "at": _when(v["created"]),
        "version": v["version"],
        "event": "registered",
        "data": tags.get(TAGS["data_md5"], ""),
        "data_kind": "md5" if tags.get(TAGS["data_md5"]) else "",  # DVC's md5 of the data
        "mean_iou": tags.get("metrics.mean_iou", ""),
        "flow_run": tags.get(TAGS["flow_run_id"], ""),
        "detail": f"run {v['run_id']}",
    }


def _decided(v: dict[str, Any]) -> dict[str, Any]:
    tags = v["tags"]
    verdict = "pass" if tags["promotion.promote"] == "true" else "fail"
    against = tags.get("promotion.champion_version", "none")
    return {
        "at": _when(tags.get("promotion.decided_at") or v.get("updated")),
        "version": v["version"],
        "event": "decided",
        "detail": f"{verdict} vs champion {against}: {tags.get('promotion.reasons', '')}",
    }


def _scored(run: dict[str, Any]) -> dict[str, Any]:
    tags, metrics = run["tags"], run["metrics"]
    champion = tags.get(SCORE_TAGS["champion"]) == "true"
    was = (
        "champion"
        if champion
        else f"not champion (v{tags.get(SCORE_TAGS['champion_version'])} was)"
    )
    return {
        "at": _when(run["start_time"]),
        "version": tags[SCORE_TAGS["model_version"]],
        "event": "scored",
        "data": tags.get(SCORE_TAGS["input_hash"], ""),
        "data_kind": tags.get(SCORE_TAGS["input_kind"], "listing"),  # listing | s3-listing
        "flow_run": tags.get(SCORE_TAGS["flow_run_id"], ""),
        "detail": (
            f"{int(metrics.get('scored', 0))} images of {tags.get(SCORE_TAGS['input'], '?')}, "
            f"{int(metrics.get('errors', 0))} unreadable, as {was}; run {run['run_id']}"
        ),
    }


def build_history(
    versions: list[dict], moves: list[dict], scorings: list[dict] | None = None
) -> list[dict[str, Any]]:
    """Events sorted by time: each version registered, its gate decision, champion moves, and
    each scoring (its data: the input's listing hash).

    `versions` as from `registry.list_versions`, `moves` as from `registry.history`, `scorings`
    as from `tracking.scoring.score_runs`. Each event: at (ISO), version, event, detail; for
    registrations data (its md5), mean IoU and flow run; for scorings data (the listing hash),
    flow run. `data_kind` says what `data` is: md5, listing (a folder) or s3-listing.
    """
    events = [_registered(v) for v in versions]
    events += [_decided(v) for v in versions if "promotion.promote" in v["tags"]]
    events += [
        {"at": _when(m["at"]), "version": m["version"], "event": m["action"], "detail": m["reason"]}
        for m in moves
    ]
    events += [_scored(run) for run in scorings or []]
    events.sort(key=lambda e: (e["at"], _RANK[e["event"]], int(e["version"])))
    return [e | {"at": e["at"].isoformat(timespec="milliseconds")} for e in events]


def model_history(name: str) -> list[dict[str, Any]]:
    """`build_history` of registered model `name` (an empty list when it does not exist)."""

    return build_history(list_versions(name), history(name), score_runs(name))

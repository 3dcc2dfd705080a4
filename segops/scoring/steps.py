"""The `score` flow's steps (`flows/score.py`), one function each, over small references.

pin the model (`models:/NAME@champion` to a version number) -> identify the input (a hash of
its listing) -> score it (`segops.scoring.job.predict_job`) -> record an MLflow run linked to
the version that scored. Scoring with a version that is no longer champion is allowed: the
run says which version was champion then (`segops.score.champion`, `.champion_version`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from segops.config import Config, build_config
from segops.scoring.source import registered_source

# lazy imports: flows/score.py imports these steps, and deploying the flow imports it to read
# its parameters (flows/deployments.py): MLflow, torch (the job), the listing's PIL and s3
# helpers load when a step runs.


def _connect(config: dict[str, Any]) -> Any:
    from segops import tracking

    return tracking.connect(_cfg(config).tracking)


def _cfg(config: dict[str, Any]) -> Config:
    return build_config(config, "score config")


def input_identity(src: str | Path) -> dict[str, Any]:
    """`{"input", "kind", "hash", "images"}`: sha256 of the sorted names, sizes and modification
    times (`kind` "listing", a folder) or ETags (`kind` "s3-listing", an `s3://` prefix) of the
    images `segops predict` would read from `src` (DatasetError for an empty or missing folder
    or prefix). Any added, removed, replaced or touched image changes it."""
    from segops.data.location import S3Prefix
    from segops.scoring.checks import check_source_folder

    location, names = check_source_folder(src)
    wanted = set(names)
    listing = [row for row in location.listing() if row[0] in wanted]
    digest = hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()
    remote = isinstance(location, S3Prefix)
    return {
        "input": location.url if remote else str(Path(src).resolve()),
        "kind": "s3-listing" if remote else "listing",
        "hash": digest,
        "images": len(names),
    }


def pin_step(config: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """The registered version that scores: `model` (a `models:/` URI or a name, meaning its
    champion; default `promotion.model_name`) pinned to its number. RegistryError when the
    name has no champion."""
    _connect(config)
    return registered_source(model or _cfg(config).promotion.model_name)


def score_step(
    config: dict[str, Any],
    pinned: dict[str, Any],
    src: str,
    out: str,
    engine: str = "local",
    address: str | None = None,
) -> dict[str, Any]:
    """Predict `src` into `out` with the pinned version (`predict.batch_size` per forward);
    returns `PredictSummary.to_dict()` plus the engine."""
    from segops.scoring.job import JobOptions, predict_job

    _connect(config)
    options = JobOptions(engine, _cfg(config).predict.batch_size, address=address)
    return predict_job(pinned, src, out, options).to_dict() | {"engine": engine}


def record_step(
    config: dict[str, Any],
    pinned: dict[str, Any],
    identity: dict[str, Any],
    summary: dict[str, Any],
    flow_run_id: str = "none",
) -> str:
    """One finished MLflow run for this scoring (see `segops.tracking.scoring`); its id."""
    from segops.tracking.scoring import log_score_run, score_tags

    store = _connect(config)
    extra = {"engine": summary["engine"], "out": summary["out"]}
    tags = score_tags(pinned, identity, extra | {"flow_run_id": flow_run_id})
    counts = ("images", "scored", "skipped", "errors", "seconds", "images_per_s")
    metrics = {key: summary[key] for key in counts}
    metrics |= {f"frac_{c}": v for c, v in summary["class_fractions"].items()}
    with tempfile.TemporaryDirectory(prefix="segops-score-") as tmp:
        files = _local_copies(summary["out"], ["summary.csv", "errors.csv"], Path(tmp))
        return log_score_run(store, tags, metrics, files)


def _local_copies(out: str, names: list[str], tmp: Path) -> list[str]:
    """Paths of `names` in the output folder, or local copies of them from an `s3://` one."""
    from segops.data.location import Folder, open_location

    location = open_location(out)
    if isinstance(location, Folder):
        return [location.join(name) for name in names]
    for name in names:
        (tmp / name).write_bytes(location.read(name))
    return [str(tmp / name) for name in names]

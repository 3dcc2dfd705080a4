"""The `score` flow's steps (`flows/score.py`), one function each, over small frozen records.

check the engine, the Ray address and the input, and identify the input (a hash of its
listing: `InputIdentity`) -> pin the model (`models:/NAME@champion` to a version number:
`Pinned`) -> score it (`segops.scoring.job.predict_job`: `ScoreSummary`) -> record an MLflow
run linked to the version that scored. The steps take the frozen `Config` validated once by
the flow; the records are in `segops.scoring.records`.
Scoring with a version that is no longer champion is allowed: the run says which version was
champion then (`segops.score.champion`, `.champion_version`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from segops.config import Config
from segops.scoring.records import InputIdentity, Pinned, ScoreSummary
from segops.scoring.source import registered_source

# lazy imports: flows/score.py imports these steps, and deploying the flow imports it to read
# its parameters (flows/deployments.py): MLflow, torch (the job), the listing's PIL and s3
# helpers load when a step runs.


def _connect(config: Config) -> Any:
    from segops import tracking

    return tracking.connect(config.tracking)


def input_identity(src: str | Path) -> InputIdentity:
    """sha256 of the sorted names, sizes and modification times (`kind` "listing", a folder)
    or ETags (`kind` "s3-listing", an `s3://` prefix) of the images `segops predict` would read
    from `src` (DatasetError for an empty or missing folder or prefix). Any added, removed,
    replaced or touched image changes it."""
    from segops.data.location import S3Prefix
    from segops.scoring.checks import check_source_folder

    location, names = check_source_folder(src)
    wanted = set(names)
    listing = [row for row in location.listing() if row[0] in wanted]
    digest = hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()
    remote = isinstance(location, S3Prefix)
    return InputIdentity(
        input=location.url if remote else str(Path(src).resolve()),
        kind="s3-listing" if remote else "listing",
        hash=digest,
        images=len(names),
    )


def check_step(src: str | Path, engine: str = "local", address: str | None = None) -> InputIdentity:
    """Bad input refused first thing, before the model is pinned or anything is written:
    ConfigError for an unknown engine, EngineError for a Ray address that does not answer
    (`segops.scoring.checks.check_engine`), DatasetError for an empty or missing folder or
    prefix or an unreachable endpoint. Returns the input's identity (`input_identity`)."""
    from segops.scoring.checks import check_engine

    check_engine(engine, address)
    return input_identity(src)


def pin_step(config: Config, model: str | None = None) -> Pinned:
    """The registered version that scores: `model` (a `models:/` URI or a name, meaning its
    champion; default `promotion.model_name`) pinned to its number. RegistryError when the
    name has no champion."""
    _connect(config)
    return Pinned.from_source(registered_source(model or config.promotion.model_name))


def score_step(
    config: Config,
    pinned: Pinned,
    src: str,
    out: str,
    engine: str = "local",
    address: str | None = None,
) -> ScoreSummary:
    """Predict `src` into `out` with the pinned version (`predict.batch_size` per forward)."""
    from segops.scoring.job import JobOptions, predict_job

    _connect(config)
    options = JobOptions(engine, config.predict.batch_size, address=address)
    return ScoreSummary(predict_job(pinned.to_dict(), src, out, options), engine)


def record_step(
    config: Config,
    pinned: Pinned,
    identity: InputIdentity,
    summary: ScoreSummary,
    flow_run_id: str = "none",
) -> str:
    """One finished MLflow run for this scoring (see `segops.tracking.scoring`); its id."""
    from segops.tracking.scoring import log_score_run, score_tags

    store = _connect(config)
    done = summary.predicted
    extra = {"engine": summary.engine, "out": done.out, "flow_run_id": flow_run_id}
    tags = score_tags(pinned.to_dict(), identity.to_dict(), extra)
    counts = ("images", "scored", "skipped", "errors", "seconds", "images_per_s")
    metrics = {key: getattr(done, key) for key in counts}
    metrics |= {f"frac_{c}": v for c, v in done.class_fractions.items()}
    with tempfile.TemporaryDirectory(prefix="segops-score-") as tmp:
        files = _local_copies(done.out, ["summary.csv", "errors.csv"], Path(tmp))
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

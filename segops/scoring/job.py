"""One prediction job over a folder or an `s3://` prefix, on the `local` or the `ray` engine.

Order: the input is listed (an empty or missing folder or prefix, an unreachable endpoint are
refused), the Ray address answers (when given; a requested dashboard's packages are there
otherwise), the output folder or prefix is ready (a missing bucket is refused), then the model
is loaded (once here, or once per Ray actor) and the chunks still to do are predicted;
`summary.csv` and `errors.csv` are written last (`segops.predict`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segops.data.location import Location, open_location
from segops.predict import PredictSummary, finish, plan, score_chunks
from segops.scoring.checks import check_engine, check_source_folder
from segops.scoring.ray_engine import ray_session, score_on_ray
from segops.scoring.source import load_source

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class JobOptions:
    engine: str = "local"  # local | ray
    batch_size: int | None = None  # default: the model's predict.batch_size
    overlays: bool = True
    overwrite: bool = False  # predict again images whose outputs exist
    address: str | None = None  # an existing Ray cluster; None: start a local one
    num_cpus: int | None = None  # of a local Ray cluster; None: this machine's
    dashboard: bool = False  # of a local Ray cluster


def predict_job(
    source: dict[str, Any],
    src: str | Path,
    out: str | Path,
    options: JobOptions = JobOptions(),
    progress: Progress | None = None,
    on_dashboard: Callable[[str], None] | None = None,
) -> PredictSummary:
    """Predict every image of `src` into `out` with the model `source` names (see
    `segops.scoring.source`); `src` and `out` are folders or `s3://` prefixes (endpoint and
    credentials from the environment, as for datasets); returns what was done.
    `progress(done, total)` as images finish, first `progress(0, total)` when scoring starts
    (the model loaded, the Ray cluster up: a bar's images/s counts from then);
    `on_dashboard(url)` when a local Ray cluster with a dashboard is started."""
    check_engine(options.engine, options.address, options.dashboard)
    location, names = check_source_folder(src)
    target = open_location(out)
    target.prepare()
    # On the ray engine the driver's copy only gives config, classes and summary rows.
    trained = load_source(source, None if options.engine == "local" else "cpu")
    size = options.batch_size or trained.config.predict.batch_size
    chunks, skipped = plan(names, target, size, options.overlays, options.overwrite)
    start = time.perf_counter()
    if options.engine == "local":
        if progress and chunks:
            progress(0, sum(map(len, chunks)))  # scoring starts: the model is loaded
        rows = score_chunks(trained, location, chunks, target, options.overlays, size, progress)
    else:
        rows = _on_ray(source, location, chunks, target, size, options, progress, on_dashboard)
    return finish(trained, target, rows, skipped, len(names), time.perf_counter() - start)


def _on_ray(
    source: dict[str, Any],
    location: Location,
    chunks: list[list[str]],
    out: Location,
    size: int,
    options: JobOptions,
    progress: Progress | None,
    on_dashboard: Callable[[str], None] | None,
) -> list[dict[str, Any]]:
    if not chunks:
        return []
    with ray_session(options.address, options.num_cpus, options.dashboard) as url:
        if url and on_dashboard:
            on_dashboard(url)
        return score_on_ray(source, location, chunks, out, options.overlays, size, progress)

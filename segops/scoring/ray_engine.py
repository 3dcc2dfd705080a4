"""The `ray` engine: Ray Data `map_batches` over an actor pool, one model load per actor.

The dataset holds one row per chunk of image paths, planned by the driver exactly as the
local engine plans them (`segops.predict.plan`), so each forward pass sees the same images on
either engine and the outputs are byte-identical. Each actor (`ChunkScorer`) loads the pinned
model once, then predicts and writes chunk after chunk (`segops.predict.score_chunk`) and
returns its rows as JSON. On a cluster with GPUs each actor takes one (`actor_pool`).

Ray is imported only when the ray engine runs (here; `checks.check_ray_dashboard` too): never
when the CLI starts.
"""
# lazy imports: Ray (~1 s, hundreds of modules) loads only when the ray engine runs; the local
# engine imports this module too (segops.scoring.job).

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from segops.data.location import Location
from segops.predict import score_chunk
from segops.scoring.checks import check_ray_address
from segops.scoring.source import load_source


class ChunkScorer:
    """A Ray Data callable class: the model is loaded once, in the actor's constructor."""

    def __init__(
        self, source: dict[str, Any], src: Location, out: Location, overlays: bool, batch: int
    ):
        self.trained = load_source(source)
        self.src, self.out, self.overlays, self.batch_size = src, out, overlays, batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for chunk in batch["paths"]:
            names = json.loads(chunk)
            rows = score_chunk(
                self.trained, self.src, names, self.out, self.overlays, self.batch_size
            )
            results.append(json.dumps(rows))
        return {"rows": np.array(results, dtype=object)}


def actor_pool(
    resources: dict[str, float], chunks: int, actors: int | None = None
) -> tuple[int, int]:
    """(actors, GPUs per actor) for `chunks` chunks on a cluster of `resources`
    (`ray.cluster_resources()`): one GPU per actor where the cluster has GPUs, whatever the
    driver has (a CPU-only driver may submit to a GPU cluster; actors asking for GPUs a
    cluster lacks would wait forever), else one CPU each; `actors` or one per GPU or CPU, at
    most one per chunk."""
    gpus = 1 if resources.get("GPU", 0) >= 1 else 0
    pool = actors or int(resources.get("GPU" if gpus else "CPU", 1))
    return max(1, min(pool, chunks)), gpus


@contextmanager
def ray_session(
    address: str | None, num_cpus: int | None = None, dashboard: bool = False
) -> Iterator[str | None]:
    """Connect to the Ray cluster at `address` (checked within seconds first), or start a local
    one with `num_cpus` (default: this machine's) and the dashboard only when asked. Yields
    the dashboard URL of a cluster started here (None otherwise); shuts down only what it
    started, and leaves an already initialised Ray alone."""
    import ray

    if ray.is_initialized():
        yield None
        return
    if address:
        check_ray_address(address)
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        url = None
    else:
        context = ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=dashboard,
            logging_level="WARNING",
            log_to_driver=False,
        )
        url = context.dashboard_url or None
    try:
        yield url
    finally:
        ray.shutdown()


def score_on_ray(
    source: dict[str, Any],
    src: Location,
    chunks: list[list[str]],
    out: Location,
    overlays: bool,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
    actors: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of every chunk (as `score_chunk` returns them), scored by an actor pool of
    `actors` (default: one per GPU of the cluster, else per CPU; at most one per chunk); call
    inside `ray_session`."""
    import ray

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our bar, not its log lines
    ray.data.DataContext.get_current().enable_progress_bars = False
    pool, gpus = actor_pool(ray.cluster_resources(), len(chunks), actors)
    items = [{"paths": json.dumps(chunk)} for chunk in chunks]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), pool * 4)))
    scored = ds.map_batches(
        ChunkScorer,
        fn_constructor_kwargs={
            "source": source,
            "src": src,
            "out": out,
            "overlays": overlays,
            "batch": batch_size,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=pool),
        num_cpus=1,
        num_gpus=gpus,
        batch_format="numpy",
    )
    rows: list[dict[str, Any]] = []
    total = sum(map(len, chunks))
    if progress:
        progress(0, total)  # scoring starts (the actors load their models as it does)
    for batch in scored.iter_batches(batch_size=1, batch_format="numpy"):
        for text in batch["rows"]:
            rows += json.loads(text)
        if progress:
            progress(len(rows), total)
    return rows

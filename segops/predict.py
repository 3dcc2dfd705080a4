"""Batch prediction: class-id PNGs, overlays, `summary.csv` and `errors.csv`, from a folder or
an `s3://` prefix into a folder or a prefix (`segops.data.location`).

The work is cut into chunks of `predict.batch_size` images (`plan`); each chunk is read,
predicted in batches (`segops.inference.predict_masks`) and written by `score_chunk`, on this
process (the local engine, `predict_local`) or on Ray actors (`segops.scoring.ray_engine`):
the same chunks through the same function, so both engines write the same bytes.

- Every output is written to a local temporary file, then renamed beside its final name or
  uploaded under its final key: never half-written. `summary.csv` is written last.
- An image whose outputs exist is skipped (a rerun resumes); `overwrite` predicts it again.
- An image that cannot be read is a row of `errors.csv` (file, reason); the others are scored.
- `summary.csv` has one row per image with a mask, with each class's pixel fraction (rows of
  images skipped on a rerun are read back from their masks).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from segops.data.io import IMAGE_SUFFIXES, ReadError
from segops.data.location import Location, open_location, source_images
from segops.errors import DatasetError
from segops.inference import TrainedModel, load_trained, predict_masks, uses_sliding

# lazy imports: the overlay plotting (matplotlib, pandas: ~0.7 CPU s) loads only when
# overlays are written, so a Ray actor writing masks only starts that much sooner.

Progress = Callable[[int, int], None]


def list_images(src: str | Path) -> list[Path]:
    """`src` itself if it is an image file, else the image files directly inside it, sorted."""
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DatasetError(f"{src}: no such file or folder")
    images = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"{src}: no images (.png, .jpg, .tif) in this folder")
    return images


def outputs_of(name: str, overlays: bool) -> list[str]:
    """The names of the files predicting image `name` writes: its mask, and overlay if asked."""
    stem = PurePosixPath(name).stem
    return [f"{stem}_mask.png"] + ([f"{stem}_overlay.png"] if overlays else [])


def plan(
    names: list[str], out: Location, batch_size: int, overlays: bool, overwrite: bool
) -> tuple[list[list[str]], list[str]]:
    """(chunks of at most `batch_size` image names still to predict, names already done: all
    their outputs are in `out`, listed once)."""
    there = set() if overwrite else out.names()
    done = [n for n in names if all(f in there for f in outputs_of(n, overlays))]
    todo = [n for n in names if n not in set(done)]
    return [todo[k : k + batch_size] for k in range(0, len(todo), batch_size)], done


def save_png(array: np.ndarray, dest: Path) -> None:
    Image.fromarray(array).save(dest, format="PNG")


def summary_row(trained: TrainedModel, name: str, mask: np.ndarray) -> dict[str, Any]:
    """image, width, height, tiled (sliding window) and `frac_<class>` of one mask."""
    classes = trained.classes
    counts = np.bincount(mask.ravel(), minlength=len(classes))
    fractions = {f"frac_{c}": round(float(counts[k] / mask.size), 6) for k, c in enumerate(classes)}
    height, width = mask.shape
    tiled = trained.kind == "semantic" and uses_sliding(trained, np.empty((height, width, 0)))
    return {"image": name, "width": width, "height": height, "tiled": tiled, **fractions}


def score_chunk(
    trained: TrainedModel,
    src: Location,
    names: list[str],
    out: Location,
    overlays: bool,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Predict and write one chunk of images of `src` into `out`; returns a summary row per
    image predicted and `{"image", "error"}` for each one that could not be read."""
    if overlays:  # matplotlib and pandas: ~0.7 CPU s of import a Ray actor need not pay
        from segops.evaluate.plots import overlay
    rows: list[dict[str, Any]] = []
    images: list[tuple[str, np.ndarray]] = []
    for name in names:
        try:
            images.append((name, src.read_image(name)))
        except (ReadError, OSError) as exc:
            rows.append({"image": name, "error": str(exc) or type(exc).__name__})
    masks = predict_masks(trained, [image for _, image in images], batch_size) if images else []
    for (name, image), mask in zip(images, masks, strict=True):
        mask_name, *overlay_name = outputs_of(name, overlays)
        out.write(mask_name, partial(save_png, mask))
        if overlay_name:
            out.write(overlay_name[0], partial(save_png, overlay(image, mask)))
        rows.append(summary_row(trained, name, mask))
    return rows


def score_chunks(
    trained: TrainedModel,
    src: Location,
    chunks: list[list[str]],
    out: Location,
    overlays: bool,
    batch_size: int,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """`score_chunk` over every chunk, on this process (the local engine)."""
    rows: list[dict[str, Any]] = []
    total = sum(map(len, chunks))
    for chunk in chunks:
        rows += score_chunk(trained, src, chunk, out, overlays, batch_size)
        if progress:
            progress(len(rows), total)
    return rows


@dataclass(frozen=True)
class PredictSummary:
    """What a prediction run did: counts, mean class fractions, throughput and its files."""

    images: int  # listed
    scored: int  # predicted by this run
    skipped: int  # outputs already there (resume)
    errors: int  # unreadable
    seconds: float
    images_per_s: float  # scored / seconds
    class_fractions: dict[str, float]  # mean over every image with a mask
    summary_csv: str  # a path or an s3:// URL
    errors_csv: str
    out: str  # the folder or prefix

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _csv_writer(rows: list[dict[str, Any]], fields: list[str]) -> Callable[[Path], None]:
    def fill(path: Path) -> None:
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    return fill


def finish(
    trained: TrainedModel,
    out: Location,
    rows: list[dict[str, Any]],
    skipped: list[str],
    listed: int,
    seconds: float,
) -> PredictSummary:
    """Write `errors.csv`, then `summary.csv` last (scored rows plus rows read back from
    skipped images' masks), sorted by image name; return the run's `PredictSummary`."""
    errors = sorted((r for r in rows if "error" in r), key=lambda r: r["image"])
    scored = [r for r in rows if "error" not in r]
    for name in skipped:
        mask = np.asarray(Image.open(io.BytesIO(out.read(outputs_of(name, False)[0]))))
        scored.append(summary_row(trained, name, mask))
    scored.sort(key=lambda r: r["image"])
    fields = ["image", "width", "height", "tiled"] + [f"frac_{c}" for c in trained.classes]
    out.write("errors.csv", _csv_writer(errors, ["image", "error"]))
    out.write("summary.csv", _csv_writer(scored, fields))
    fractions = {
        c: round(float(np.mean([r[f"frac_{c}"] for r in scored])), 6) if scored else 0.0
        for c in trained.classes
    }
    done = len(rows) - len(errors)
    return PredictSummary(
        images=listed,
        scored=done,
        skipped=len(skipped),
        errors=len(errors),
        seconds=round(seconds, 3),
        images_per_s=round(done / seconds, 2) if seconds > 0 else 0.0,
        class_fractions=fractions,
        summary_csv=out.join("summary.csv"),
        errors_csv=out.join("errors.csv"),
        out=out.url,
    )


def predict_local(
    trained: TrainedModel,
    src: str | Path,
    out: str | Path,
    progress: Progress | None = None,
    *,
    batch_size: int | None = None,
    overlays: bool = True,
    overwrite: bool = False,
) -> PredictSummary:
    """The local engine: predict every image of `src` (a folder, an image file or an `s3://`
    prefix) into `out` (a folder or a prefix) with `trained`; see the module docstring.
    `progress(done, total)` after each chunk."""
    location, names = source_images(src)
    target = open_location(out)
    target.prepare()
    size = batch_size or trained.config.predict.batch_size
    chunks, skipped = plan(names, target, size, overlays, overwrite)
    start = time.perf_counter()
    rows = score_chunks(trained, location, chunks, target, overlays, size, progress)
    return finish(trained, target, rows, skipped, len(names), time.perf_counter() - start)


def predict_folder(
    checkpoint: str | Path, src: str | Path, out: str | Path, progress: Progress | None = None
) -> list[Path]:
    """`predict_local` with the model of a checkpoint; returns the mask paths written."""
    predict_local(load_trained(checkpoint), src, out, progress)
    return [Path(out) / f"{p.stem}_mask.png" for p in list_images(src)]

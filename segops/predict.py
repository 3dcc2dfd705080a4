"""Batch prediction over a folder: class-id PNGs, overlays, `summary.csv` and `errors.csv`.

The work is cut into chunks of `predict.batch_size` images (`plan`); each chunk is read,
predicted in batches (`segops.inference.predict_masks`) and written by `score_chunk`, on this
process (the local engine, `predict_images`) or on Ray actors (`segops.scoring.ray_engine`):
the same chunks through the same function, so both engines write the same bytes.

- Every output is written to a temporary name beside it, then renamed: never half-written.
- An image whose outputs exist is skipped (a rerun resumes); `overwrite` predicts it again.
- An image that cannot be read is a row of `errors.csv` (file, reason); the others are scored.
- `summary.csv` has one row per image with a mask, with each class's pixel fraction (rows of
  images skipped on a rerun are read back from their masks).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from segops.data.io import IMAGE_SUFFIXES, ReadError, read_image
from segops.errors import DatasetError

if TYPE_CHECKING:  # torch is imported on first prediction: listing a folder stays light
    from segops.inference import TrainedModel

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


def outputs_of(image: Path, out: Path, overlays: bool) -> list[Path]:
    """The files predicting `image` writes into `out`: its mask, and overlay when asked."""
    names = [f"{image.stem}_mask.png"] + ([f"{image.stem}_overlay.png"] if overlays else [])
    return [out / name for name in names]


def plan(
    images: list[Path], out: Path, batch_size: int, overlays: bool, overwrite: bool
) -> tuple[list[list[str]], list[Path]]:
    """(chunks of at most `batch_size` image paths still to predict, images already done)."""
    done = [] if overwrite else [p for p in images if _has_outputs(p, out, overlays)]
    paths = [str(p) for p in images if p not in set(done)]
    return [paths[k : k + batch_size] for k in range(0, len(paths), batch_size)], done


def _has_outputs(image: Path, out: Path, overlays: bool) -> bool:
    return all(f.is_file() for f in outputs_of(image, out, overlays))


def save_png(array: np.ndarray, dest: Path) -> None:
    """Write `array` as PNG to a temporary name beside `dest`, then rename it to `dest`."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, dest)


def summary_row(trained: TrainedModel, name: str, mask: np.ndarray) -> dict[str, Any]:
    """image, width, height, tiled (sliding window) and `frac_<class>` of one mask."""
    from segops.inference import uses_sliding

    classes = trained.classes
    counts = np.bincount(mask.ravel(), minlength=len(classes))
    fractions = {f"frac_{c}": round(float(counts[k] / mask.size), 6) for k, c in enumerate(classes)}
    height, width = mask.shape
    tiled = trained.kind == "semantic" and uses_sliding(trained, np.empty((height, width, 0)))
    return {"image": name, "width": width, "height": height, "tiled": tiled, **fractions}


def score_chunk(
    trained: TrainedModel, paths: list[str], out: str | Path, overlays: bool, batch_size: int
) -> list[dict[str, Any]]:
    """Predict and write one chunk of images; returns a summary row per image predicted and
    `{"image", "error"}` for each one that could not be read."""
    from segops.evaluate.plots import overlay
    from segops.inference import predict_masks

    out = Path(out)
    rows: list[dict[str, Any]] = []
    images: list[tuple[Path, np.ndarray]] = []
    for path in map(Path, paths):
        try:
            images.append((path, read_image(path)))
        except (ReadError, OSError) as exc:
            rows.append({"image": path.name, "error": str(exc) or type(exc).__name__})
    masks = predict_masks(trained, [image for _, image in images], batch_size) if images else []
    for (path, image), mask in zip(images, masks, strict=True):
        mask_file, *overlay_file = outputs_of(path, out, overlays)
        save_png(mask, mask_file)
        if overlay_file:
            save_png(overlay(image, mask), overlay_file[0])
        rows.append(summary_row(trained, path.name, mask))
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
    summary_csv: str
    errors_csv: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def finish(
    trained: TrainedModel,
    out: Path,
    rows: list[dict[str, Any]],
    skipped: list[Path],
    listed: int,
    seconds: float,
) -> PredictSummary:
    """Write `summary.csv` (scored rows plus rows read back from skipped images' masks) and
    `errors.csv`, sorted by image name; return the run's `PredictSummary`."""
    errors = sorted((r for r in rows if "error" in r), key=lambda r: r["image"])
    scored = [r for r in rows if "error" not in r]
    for path in skipped:
        mask = np.asarray(Image.open(out / f"{path.stem}_mask.png"))
        scored.append(summary_row(trained, path.name, mask))
    scored.sort(key=lambda r: r["image"])
    fields = ["image", "width", "height", "tiled"] + [f"frac_{c}" for c in trained.classes]
    _write_csv(out / "summary.csv", scored, fields)
    _write_csv(out / "errors.csv", errors, ["image", "error"])
    fractions = {
        c: round(float(np.mean([r[f"frac_{c}"] for r in scored])), 6) if scored else 0.0
        for c in trained.classes
    }
    done = len(rows) - len(errors)
    return PredictSummary(
        listed,
        done,
        len(skipped),
        len(errors),
        round(seconds, 3),
        round(done / seconds, 2) if seconds > 0 else 0.0,
        fractions,
        str(out / "summary.csv"),
        str(out / "errors.csv"),
    )


def predict_images(
    trained: TrainedModel,
    src: str | Path,
    out: str | Path,
    progress: Progress | None = None,
    *,
    batch_size: int | None = None,
    overlays: bool = True,
    overwrite: bool = False,
) -> Path:
    """The local engine: predict every image of `src` into `out` (see the module docstring);
    returns the path of `summary.csv`. `progress(done, total)` after each chunk."""
    summary = predict_local(trained, src, out, progress, batch_size, overlays, overwrite)
    return Path(summary.summary_csv)


def predict_local(
    trained: TrainedModel,
    src: str | Path,
    out: str | Path,
    progress: Progress | None = None,
    batch_size: int | None = None,
    overlays: bool = True,
    overwrite: bool = False,
) -> PredictSummary:
    """`predict_images` returning the whole `PredictSummary`."""
    images = list_images(src)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = batch_size or trained.config.predict.batch_size
    chunks, skipped = plan(images, out, size, overlays, overwrite)
    start, rows, total = time.perf_counter(), [], sum(map(len, chunks))
    for chunk in chunks:
        rows += score_chunk(trained, chunk, out, overlays, size)
        if progress:
            progress(len(rows), total)
    return finish(trained, out, rows, skipped, len(images), time.perf_counter() - start)


def predict_folder(
    checkpoint: str | Path, src: str | Path, out: str | Path, progress: Progress | None = None
) -> list[Path]:
    """`predict_images` with the model of a checkpoint; returns the mask paths written."""
    from segops.inference import load_trained

    predict_images(load_trained(checkpoint), src, out, progress)
    return [Path(out) / f"{p.stem}_mask.png" for p in list_images(src)]

"""Batch prediction over a folder: class-id PNGs, overlays and a summary CSV at original size.

Images larger than the model's input size are predicted with a sliding window (see
`segops.inference.predict_image`); the summary has one row per image with the fraction of its
pixels given to each class.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from segops.data.io import IMAGE_SUFFIXES, ReadError, read_image
from segops.errors import DatasetError
from segops.evaluate.plots import overlay
from segops.inference import SLIDE_ABOVE, TrainedModel, load_trained, predict_image


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


def _summary_row(path: Path, mask: np.ndarray, classes: tuple[str, ...], tiled: bool) -> dict:
    counts = np.bincount(mask.ravel(), minlength=len(classes))
    fractions = {f"frac_{c}": round(float(counts[k] / mask.size), 6) for k, c in enumerate(classes)}
    height, width = mask.shape
    return {"image": path.name, "width": width, "height": height, "tiled": tiled, **fractions}


def predict_images(
    trained: TrainedModel,
    src: str | Path,
    out: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write `<stem>_mask.png`, `<stem>_overlay.png` per image and `summary.csv` into `out`.

    An unreadable image stops the run with an error naming the file. Returns the path of
    `summary.csv`.
    """
    images = list_images(src)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for done, path in enumerate(images, 1):
        try:
            image = read_image(path)
        except ReadError as exc:
            raise DatasetError(f"{path}: {exc}") from None
        mask, _ = predict_image(trained, image)
        Image.fromarray(mask).save(out / f"{path.stem}_mask.png")
        Image.fromarray(overlay(image, mask)).save(out / f"{path.stem}_overlay.png")
        tiled = max(image.shape[:2]) > SLIDE_ABOVE * trained.config.data.image_size
        rows.append(_summary_row(path, mask, trained.classes, tiled))
        if progress:
            progress(done, len(images))
    summary = out / "summary.csv"
    with open(summary, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return summary


def predict_folder(
    checkpoint: str | Path,
    src: str | Path,
    out: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """`predict_images` with the model of a checkpoint; returns the mask paths written."""
    predict_images(load_trained(checkpoint), src, out, progress)
    return [Path(out) / f"{p.stem}_mask.png" for p in list_images(src)]

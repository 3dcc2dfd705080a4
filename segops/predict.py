"""Predict masks for a folder of images: class-id PNGs and overlays at the original size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image

from segops.data.io import IMAGE_SUFFIXES, ReadError, read_image
from segops.errors import DatasetError
from segops.evaluate.plots import overlay
from segops.inference import load_trained, predict_image


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


def predict_folder(
    checkpoint: str | Path,
    src: str | Path,
    out: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write `<stem>_mask.png` and `<stem>_overlay.png` per image into `out`; returns masks."""
    images = list_images(src)
    trained = load_trained(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for done, path in enumerate(images, 1):
        try:
            image = read_image(path)
        except ReadError as exc:
            raise DatasetError(f"{path}: {exc}") from None
        mask, _ = predict_image(trained, image)
        Image.fromarray(mask).save(out / f"{path.stem}_mask.png")
        Image.fromarray(overlay(image, mask)).save(out / f"{path.stem}_overlay.png")
        written.append(out / f"{path.stem}_mask.png")
        if progress:
            progress(done, len(images))
    return written

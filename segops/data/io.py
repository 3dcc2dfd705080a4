"""Reading images and masks from disk into numpy arrays, with errors that name the file."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class ReadError(ValueError):
    """A file could not be decoded; the message says why."""


@dataclass(frozen=True)
class Part:
    """One decoded image or mask: `sha256` of the bytes that identify it ("" when they could
    not be read), the decoded `array` (None when it failed) and the `problem` (None when not)."""

    sha256: str
    array: np.ndarray | None
    problem: str | None


def read_file(path: Path, decode: Callable[[Path], np.ndarray]) -> Part:
    """The Part for the file at `path`: sha256 of its bytes and `decode(path)`."""
    if not path.is_file():
        return Part("", None, "file does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Part("", None, f"cannot be read ({exc.strerror})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        return Part(digest, decode(path), None)
    except ReadError as exc:
        return Part(digest, None, str(exc))


def array_sha256(array: np.ndarray) -> str:
    """sha256 of an array's bytes in C order (identifies a slice or a rasterised mask)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _open(path: Path | io.BytesIO) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()  # decode now: truncated files fail here, not later in a worker
    except FileNotFoundError:
        raise ReadError("file does not exist") from None
    except UnidentifiedImageError:
        raise ReadError("not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ReadError(f"cannot be decoded ({exc}); the file may be truncated") from None
    return img


def image_to_rgb(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8. Grayscale and RGBA become RGB; 16- and 32-bit images are scaled to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float64) / 65535.0 * 255.0
        return np.repeat(arr.round().astype(np.uint8)[..., None], 3, axis=2)
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255)
        return np.repeat(arr.round().astype(np.uint8)[..., None], 3, axis=2)
    if img.mode == "RGBA":  # drop alpha: compose on black would change colours of opaque pixels
        img = img.convert("RGB")
    return np.array(img.convert("RGB"), dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file as HxWx3 uint8 (see `image_to_rgb`); raises ReadError."""
    return image_to_rgb(_open(Path(path)))


def image_from_bytes(data: bytes) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, TIFF) as HxWx3 uint8; raises ReadError."""
    return image_to_rgb(_open(io.BytesIO(data)))


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a single-channel mask (L or palette PNG: pixel = class id) as HxW uint8."""
    img = _open(Path(path))
    if img.mode in ("L", "P"):
        return np.array(img, dtype=np.uint8)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "1"):
        arr = np.asarray(img)
        if arr.dtype == bool:
            return arr.astype(np.uint8)
        if arr.max(initial=0) > 255:
            raise ReadError(
                f"holds values above 255 (max {int(arr.max())}); class ids must be 0..254"
            )
        return arr.astype(np.uint8)
    raise ReadError(
        f"is a {img.mode} image; masks must be single-channel (mode L or P) with pixel = class id"
    )

"""Reading images and masks from disk into numpy arrays, with errors that name the file."""

from __future__ import annotations

import hashlib
import io
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segops.data import decode_cache
from segops.data.problems import symlink_problem

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\0": "TIFF",
    b"MM\0*": "TIFF",
}
# Images above this many pixels are refused from their header, before decoding (PIL's
# default limit, about 9459x9459): a few KB of PNG can decode to gigabytes.
MAX_PIXELS = 89_478_485
# Problem texts start with a short reason; the rest says what to do.
MISSING = "missing: no such file"
NOT_A_FILE = "not a regular file (a folder, pipe or device); put the image file there"
ZERO_BYTES = "0 bytes: the file is empty; copy or export it again"
NOT_AN_IMAGE = "not an image: not a readable image file (PNG, JPEG, TIFF); replace it"
# Channels of every image the readers return (HxWx3: grayscale, 16-bit and RGBA become RGB),
# so of every model's input; recorded in lineage (segops.data.channels) and compared with the
# champion's before any work (segops.promotion.compat).
IMAGE_CHANNELS = 3


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
    """The Part for the file at `path`: sha256 of its bytes and `decode(path)`, decoded once
    per content and process while it fits `segops.data.decode_cache`'s budget (a fresh copy
    each call). A symlink is refused unread (see segops.data.problems); the problem starts
    with a short reason: `missing`, `0 bytes`, `not an image`, `truncated PNG`, `symlink`..."""
    if path.is_symlink():
        return Part("", None, symlink_problem(path).removeprefix(f"{path}: "))
    if not path.is_file():
        return Part("", None, NOT_A_FILE if path.exists() else MISSING)
    try:
        sig, digest = file_digest(path)
    except OSError as exc:
        return Part("", None, f"cannot be read ({exc.strerror})")
    if digest is None:
        return Part("", None, ZERO_BYTES)
    how = (decode, MAX_PIXELS)  # what the bytes decode to depends on the limit too
    found = decode_cache.decoded(digest, how)
    if found is not None:
        return Part(digest, *found)
    try:
        array, problem = decode(path), None
    except ReadError as exc:
        array, problem = None, str(exc)
    # Kept only if the file did not change meanwhile (a rewrite of the same size within one
    # timestamp tick between hashing and decoding is not seen: a window of microseconds).
    if _unchanged(path, sig):
        decode_cache.keep_decoded(digest, how, array, problem)
    return Part(digest, array, problem)


def file_digest(path: Path) -> tuple[decode_cache.Signature, str | None]:
    """The signature of the file at `path` and the sha256 of its bytes (remembered by the
    decode cache when it can be trusted; None for an empty file); OSError when it cannot be
    read."""
    read_ns, sig = time.time_ns(), decode_cache.signature(path)
    digest = decode_cache.known_digest(path, sig)
    if digest is None:
        data = path.read_bytes()
        if not data:
            return sig, None
        digest = hashlib.sha256(data).hexdigest()
        decode_cache.remember_digest(path, sig, digest, read_ns)
    return sig, digest


def read_derived(path: Path, how: tuple, derive: Callable[[], Part]) -> Part:
    """`derive()`: a Part that depends on the file at `path` alone and on `how` (a slice of a
    NIfTI volume, a mask rasterised from a COCO annotation file), kept per content of that
    file and `how` like `read_file`'s decodes (a fresh copy each call). So a dataset whose
    samples share one large file (a volume of many slices, one JSON for every image) reads
    and decodes that file once per process, not once per sample and epoch; a changed file is
    never served stale. `how` names what `derive` makes (format, index, options): hashable,
    and stable from call to call. A path that is not a readable regular file is `derive`d
    unkept (its reader says why), and so is everything when the cache is off (no hashing of a
    shared file per sample). Only arrays are kept: a problem is derived again each time, since
    its text names the file it was read from, and another file may have the same bytes."""
    if not decode_cache.enabled():
        return derive()
    try:
        if path.is_symlink() or not path.is_file():
            return derive()
        sig, digest = file_digest(path)
    except OSError:
        return derive()
    if digest is None:
        return derive()
    key = (digest, how)
    if (found := decode_cache.derived(key)) is not None:
        return Part(*found, None)
    part = derive()
    if part.array is not None and _unchanged(path, sig):
        decode_cache.keep_derived(key, part.sha256, part.array)
    return part


def load_image(path: str | Path) -> np.ndarray:
    """`read_image` of a dataset file through `read_file`: decoded once per content and
    process (a fresh copy each call), nothing read through a symlink; ReadError naming it."""
    part = read_file(Path(path), read_image)
    if part.array is None:
        raise ReadError(f"{path}: {part.problem}")
    return part.array


def _unchanged(path: Path, sig: decode_cache.Signature) -> bool:
    try:
        return decode_cache.signature(path) == sig
    except OSError:
        return False


def array_sha256(array: np.ndarray) -> str:
    """sha256 of an array's bytes in C order (identifies a slice or a rasterised mask)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _kind(head: bytes) -> str | None:
    """The image format that `head` (the first bytes of a file) announces, or None."""
    return next((kind for sig, kind in SIGNATURES.items() if head.startswith(sig)), None)


def _truncated(kind: str, data: bytes, exc: Exception) -> bool:
    """True when `data` (a file of format `kind`) ends before its image does."""
    if "truncat" in str(exc).lower():
        return True
    tail = data[-16:]
    return (kind == "PNG" and b"IEND" not in tail) or (kind == "JPEG" and b"\xff\xd9" not in tail)


def _decode_problem(data: bytes, kind: str | None, exc: Exception) -> str:
    """The reason a file whose bytes are `data` failed to decode with `exc`."""
    if not data:
        return ZERO_BYTES
    if kind is None:
        return NOT_AN_IMAGE
    if _truncated(kind, data, exc):
        return f"truncated {kind}: the file ends before its image data; copy or export it again"
    return f"corrupt {kind} ({exc}); export it again"


def _too_large(size: str) -> ReadError:
    return ReadError(
        f"image larger than {MAX_PIXELS} pixels ({size}); PIL refuses it as a possible "
        "decompression bomb: downscale or tile it"
    )


def _open(path: Path | io.BytesIO) -> Image.Image:
    """Open and decode: the header first (lazy open), then, if the size is below MAX_PIXELS,
    the pixels. ReadError with a short reason (see `read_file`) for anything else."""
    try:
        data = path.getvalue() if isinstance(path, io.BytesIO) else Path(path).read_bytes()
    except FileNotFoundError:
        raise ReadError(MISSING) from None
    except OSError as exc:
        raise ReadError(f"cannot be read ({exc.strerror})") from None
    kind = _kind(data[:8])
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # PIL's own header check: far above its limit
        size = struct.unpack(">II", data[16:24]) if kind == "PNG" and len(data) >= 24 else ()
        raise _too_large("x".join(map(str, size)) or "far above the limit") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ReadError(_decode_problem(data, kind, exc)) from None
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise _too_large(f"{width}x{height}")
    try:
        img.load()  # decode now: truncated files fail here, not later in a worker
    except Image.DecompressionBombError:
        raise _too_large(f"{width}x{height}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ReadError(_decode_problem(data, img.format or kind, exc)) from None
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
    if img.mode in ("RGB", "RGBA"):
        raise ReadError(
            f"{img.mode} mask: masks hold class ids, one channel (mode L or P) with pixel = "
            "class id; convert colours to class ids"
        )
    raise ReadError(
        f"is a {img.mode} image; masks must be single-channel (mode L or P) with pixel = class id"
    )

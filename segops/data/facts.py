"""What the manifest scan learns from one sample's pixels, computed once per content.

`scan_dataset` runs in validation and in every `load_dataset` (training, evaluation, Grad-CAM,
the ONNX check, the model report). Its per-sample facts (hashes, sizes, problems, pixel counts
per mask value, a constant image) depend only on the two files' bytes for plain PNG pairs, so
they are kept in `segops.data.decode_cache.FACTS` under those bytes' sha256: a later scan of
the same, unchanged files decodes nothing. Other formats (masks derived from volumes, JSON or
tables) compute their facts each time, from parts the decode cache serves (`read_file` and
`read_derived`), so a rescan decodes nothing either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segops.data import decode_cache, io
from segops.data.formats import SampleRef, read_sample
from segops.data.io import Part
from segops.data.problems import symlink_reason


@dataclass(frozen=True)
class SampleFacts:
    """One sample as the scan sees it: each side's sha256 and problem (see `Part`), the
    image's and mask's height and width (None when unreadable), `counts[v]` pixels of mask
    value v (256, read-only; None without a mask) and whether the image is one value."""

    image_sha256: str
    mask_sha256: str
    image_problem: str | None
    mask_problem: str | None
    image_shape: tuple[int, int] | None
    mask_shape: tuple[int, int] | None
    counts: np.ndarray | None
    image_constant: bool


def facts_of(image: Part, mask: Part) -> SampleFacts:
    """The SampleFacts of decoded `image` (HxWx3) and `mask` (HxW) Parts."""
    counts = None
    if mask.array is not None:
        counts = np.bincount(mask.array.ravel(), minlength=256)
        counts.flags.writeable = False
    pixels = image.array
    return SampleFacts(
        image.sha256,
        mask.sha256,
        image.problem,
        mask.problem,
        None if pixels is None else (int(pixels.shape[0]), int(pixels.shape[1])),
        None if mask.array is None else (int(mask.array.shape[0]), int(mask.array.shape[1])),
        counts,
        bool(pixels is not None and pixels.min() == pixels.max()),
    )


def _digest(path: Path) -> str | None:
    """sha256 of the regular, non-empty file at `path` (`io.file_digest`: remembered by the
    decode cache when it can be trusted), or None when it is not one."""
    try:
        return io.file_digest(path)[1] if path.is_file() else None
    except OSError:
        return None


def _content_key(root: Path, ref: SampleRef) -> tuple | None:
    """("png", pixel limit, image sha256, mask sha256) of a plain PNG pair read from regular
    files inside `root` (no symlink on the way); None for any other sample (not kept)."""
    if ref.reader != "png" or symlink_reason(root, ref.image) or symlink_reason(root, ref.mask):
        return None
    image, mask = _digest(root / ref.image), _digest(root / ref.mask)
    return None if image is None or mask is None else ("png", io.MAX_PIXELS, image, mask)


def sample_facts(root: Path, ref: SampleRef) -> SampleFacts:
    """The SampleFacts of `ref` under `root`: kept from an earlier scan of the same bytes, or
    read (`read_sample`, through the decode cache) and then kept."""
    key = _content_key(root, ref)
    if key is not None and (found := decode_cache.FACTS.get(key)) is not None:
        return found
    image, mask = read_sample(root, ref)
    facts = facts_of(image, mask)
    if key is not None and image.sha256 and mask.sha256:
        # under the shas of the bytes just read: a file changed since `key` is not mixed up
        cost = 512 + (facts.counts.nbytes if facts.counts is not None else 0)
        decode_cache.FACTS.put(("png", io.MAX_PIXELS, image.sha256, mask.sha256), facts, cost)
    return facts

"""The dataset's fingerprint: what the planner decides from, measured once."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from segops.data.formats import load_sample, ref_from_row
from segops.data.manifest import DatasetInfo

MAX_INTENSITY_IMAGES = 256  # intensity statistics from an even subset of larger train splits


@dataclass(frozen=True)
class Fingerprint:
    root: str
    classes: tuple[str, ...]
    samples: dict[str, int]  # per split
    height: tuple[int, int, int]  # min, median, max
    width: tuple[int, int, int]
    short_side: int  # median over images of the shorter side
    same_size: bool
    channels: int  # 1 when every training image has R == G == B, else 3
    class_fractions: tuple[float, ...]  # share of the labelled training pixels, per class id
    mean: tuple[float, float, float]  # per channel, training images in [0, 1]
    std: tuple[float, float, float]
    intensity_images: int  # training images the intensity statistics were read from
    # Typical size of a labelled object, in native pixels: the pixel-weighted median length of
    # the horizontal and vertical runs of one foreground class in the training masks (about
    # 0.85 of a disc's diameter); 0 when no foreground was seen. Also per class id.
    object_extent: float = 0.0
    class_extents: tuple[float, ...] = ()

    @property
    def n_train(self) -> int:
        return self.samples.get("train", 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (for YAML comments and JSON)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _spread(values: np.ndarray) -> tuple[int, int, int]:
    return int(values.min()), int(np.median(values)), int(values.max())


def _even_subset(count: int, limit: int) -> np.ndarray:
    """Up to `limit` row positions spread evenly over `count` rows (deterministic)."""
    return np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(int))


def label_runs(mask: np.ndarray, background: int = 0, ignore: int = 255) -> np.ndarray:
    """`[2, R]`: length and class id of every run of one foreground class along the rows and
    the columns of `mask` (HxW class ids): how far an object extends, line by line."""
    out = []
    for grid in (mask, mask.T):
        # A sentinel column ends every line, so no run continues onto the next one.
        flat = np.pad(grid.astype(np.int16), ((0, 0), (0, 1)), constant_values=-1).ravel()
        starts = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1])
        lengths = np.diff(np.concatenate([starts, [len(flat)]]))
        values = flat[starts]
        keep = (values != background) & (values != ignore) & (values != -1)
        out.append(np.stack([lengths[keep], values[keep]]))
    return np.concatenate(out, axis=1)


def extents(runs: np.ndarray, classes: int) -> tuple[float, tuple[float, ...]]:
    """Typical object extent over all foreground runs (`label_runs`) and per class id (0 for
    the background and for classes without runs): `weighted_median`s of the run lengths."""
    per_class = tuple(weighted_median(runs[0][runs[1] == c]) if c else 0.0 for c in range(classes))
    return weighted_median(runs[0]), per_class


def weighted_median(lengths: np.ndarray) -> float:
    """The run length at which half of the runs' pixels lie in shorter runs (0 when none)."""
    if not len(lengths):
        return 0.0
    ordered = np.sort(lengths)
    cumulative = np.cumsum(ordered)
    return float(ordered[np.searchsorted(cumulative, cumulative[-1] / 2)])


def intensity_stats(info: DatasetInfo, limit: int = MAX_INTENSITY_IMAGES) -> dict[str, Any]:
    """Per-channel mean/std in [0, 1] over the pixels of (up to `limit`) training images,
    whether they are grey (R == G == B everywhere), how many images were read and the typical
    object runs of their masks (`label_runs`, `[2, R]`)."""
    train = info.split("train")
    total, squares, pixels, grey, runs = np.zeros(3), np.zeros(3), 0, True, []
    rows = _even_subset(len(train), limit) if len(train) else []
    for pos in rows:
        image, mask = load_sample(info.root, ref_from_row(train.iloc[int(pos)]))
        if mask is not None:
            runs.append(label_runs(mask))
        flat = image.reshape(-1, 3).astype(np.float64) / 255.0  # [H*W, 3]
        total += flat.sum(0)
        squares += (flat**2).sum(0)
        pixels += len(flat)
        grey = grey and bool((image[..., 0] == image[..., 1]).all())
        grey = grey and bool((image[..., 1] == image[..., 2]).all())
    mean = total / max(pixels, 1)
    std = np.sqrt(np.maximum(squares / max(pixels, 1) - mean**2, 0.0))
    found = np.concatenate(runs, axis=1) if runs else np.zeros((2, 0), np.int64)
    return {"mean": mean, "std": std, "grey": grey, "images": len(rows), "runs": found}


def fingerprint_dataset(info: DatasetInfo, limit: int = MAX_INTENSITY_IMAGES) -> Fingerprint:
    """Measure `info` (a loaded dataset): splits, sizes, channels, class shares, intensities."""
    frame = info.manifest
    heights, widths = frame["height"].to_numpy(), frame["width"].to_numpy()
    pixels = info.class_pixels("train").astype(np.float64)
    stats = intensity_stats(info, limit)
    extent, per_class = extents(stats["runs"], len(info.classes))
    return Fingerprint(
        root=str(info.root),
        classes=tuple(info.classes),
        samples={str(k): int(v) for k, v in frame["split"].value_counts().sort_index().items()},
        height=_spread(heights),
        width=_spread(widths),
        short_side=int(np.median(np.minimum(heights, widths))),
        same_size=bool(len(set(zip(heights, widths, strict=True))) == 1),
        channels=1 if stats["grey"] else 3,
        class_fractions=tuple(float(p) for p in pixels / max(pixels.sum(), 1.0)),
        mean=tuple(float(v) for v in stats["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in stats["std"]),  # type: ignore[arg-type]
        intensity_images=int(stats["images"]),
        object_extent=extent,
        class_extents=per_class,
    )

"""Segmentation metrics as pure functions of a confusion matrix (rows truth, columns prediction).

Convention: a class absent from both truth and prediction (no true positive, false positive or
false negative) gets NaN for every per-class metric and is excluded from the means; it is
reported as absent. For a class that is present, a zero denominator gives 0 (e.g. precision of a
class that is never predicted).
"""

from __future__ import annotations

import numpy as np


def _counts(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mat = np.asarray(mat, dtype=np.float64)
    tp = np.diag(mat)
    return tp, mat.sum(0) - tp, mat.sum(1) - tp  # tp, fp, fn


def present_classes(mat: np.ndarray) -> np.ndarray:
    """Boolean per class: present in truth or prediction."""
    tp, fp, fn = _counts(mat)
    return (tp + fp + fn) > 0


def _ratio(num: np.ndarray, den: np.ndarray, present: np.ndarray) -> np.ndarray:
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return np.where(present, out, np.nan)


def iou(mat: np.ndarray) -> np.ndarray:
    """Per-class intersection over union, tp / (tp + fp + fn)."""
    tp, fp, fn = _counts(mat)
    return _ratio(tp, tp + fp + fn, present_classes(mat))


def dice(mat: np.ndarray) -> np.ndarray:
    """Per-class Dice coefficient, 2tp / (2tp + fp + fn) (equal to per-class F1)."""
    tp, fp, fn = _counts(mat)
    return _ratio(2 * tp, 2 * tp + fp + fn, present_classes(mat))


def precision(mat: np.ndarray) -> np.ndarray:
    """Per-class precision, tp / (tp + fp)."""
    tp, fp, _ = _counts(mat)
    return _ratio(tp, tp + fp, present_classes(mat))


def recall(mat: np.ndarray) -> np.ndarray:
    """Per-class recall, tp / (tp + fn)."""
    tp, _, fn = _counts(mat)
    return _ratio(tp, tp + fn, present_classes(mat))


def f1(mat: np.ndarray) -> np.ndarray:
    """Per-class F1, the harmonic mean of precision and recall."""
    p, r = precision(mat), recall(mat)
    return _ratio(2 * p * r, p + r, present_classes(mat))


def pixel_accuracy(mat: np.ndarray) -> float:
    """Fraction of (non-ignored) pixels classified correctly; NaN for an empty matrix."""
    mat = np.asarray(mat, dtype=np.float64)
    total = mat.sum()
    return float(np.trace(mat) / total) if total > 0 else float("nan")


def nanmean(values: np.ndarray) -> float:
    """Mean over non-NaN entries; NaN when there are none (no warning)."""
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    return float(values[keep].mean()) if keep.any() else float("nan")


PER_CLASS = {"iou": iou, "dice": dice, "precision": precision, "recall": recall, "f1": f1}


def summarize(mat: np.ndarray, class_names: list[str] | tuple[str, ...]) -> dict:
    """Means, pixel accuracy, per-class values and absent classes, as a JSON-able dict."""
    per_class = {name: fn(mat) for name, fn in PER_CLASS.items()}
    present = present_classes(mat)

    def clean(v: float) -> float | None:
        return None if np.isnan(v) else round(float(v), 6)

    return {
        **{f"mean_{k}": clean(nanmean(v)) for k, v in per_class.items()},
        "pixel_accuracy": clean(pixel_accuracy(mat)),
        "per_class": {
            name: {k: clean(v[i]) for k, v in per_class.items()}
            for i, name in enumerate(class_names)
        },
        "absent_classes": [name for i, name in enumerate(class_names) if not present[i]],
    }


def per_image_scores(per_image_mats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean IoU and mean Dice of each image from its own `[N, C, C]` matrices."""
    ious = np.array([nanmean(iou(m)) for m in per_image_mats])
    dices = np.array([nanmean(dice(m)) for m in per_image_mats])
    return ious, dices

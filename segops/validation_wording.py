"""What each validation check says: when it passes, when it fails (with the failing items and
the settings it was held to), and which files of the failing rows it names. The table's order
is the report's order (CHECK_NAMES)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd


def _paths(*columns: str) -> Callable[[pd.DataFrame], list[str]]:
    """Lists the `columns` paths of each failing row, row by row."""
    return lambda failed: [str(row[c]) for _, row in failed.iterrows() for c in columns]


def _unreadable_paths(failed: pd.DataFrame) -> list[str]:
    """Only the file of each pair that could not be read (a missing mask counts)."""
    pairs = [(c, row) for _, row in failed.iterrows() for c in ("image", "mask")]
    return [str(row[c]) for c, row in pairs if not row[f"{c}_readable"]]


@dataclass(frozen=True)
class _Wording:
    ok: str  # the reason when it passes
    fail: str  # when it fails; formatted with n, items (the first few) and the run's params
    files: Callable[[pd.DataFrame], list[str]] = lambda failed: []


WORDING = {
    "dataset_loads": _Wording(
        "The loader accepts the dataset: no symlinks, unknown or path-like ids, or bad files.",
        "{n} problem(s) make the loader refuse the dataset ({items}): fix each one as the "
        "Problems list says.",
        lambda failed: [f for f in failed["file"] if f],
    ),
    "files_readable": _Wording(
        "Every image and mask exists and decodes.",
        "{n} sample(s) have a missing or unreadable image or mask ({items}): restore or "
        "re-export the files listed, or delete those samples.",
        _unreadable_paths,
    ),
    "sizes_match": _Wording(
        "Every mask has the size of its image.",
        "{n} sample(s) have a mask whose size differs from its image ({items}): re-export "
        "those masks at their image's size.",
        _paths("image", "mask"),
    ),
    "mask_values_valid": _Wording(
        "Every mask holds only {class_ids} or 255 (ignore).",
        "{n} mask(s) hold values that are neither {class_ids} nor 255 ({items}): fix those "
        "masks, or name the missing classes in classes.txt.",
        _paths("mask"),
    ),
    "no_leakage_across_splits": _Wording(
        "No image appears in more than one split.",
        "{n} sample(s) have the same image bytes as a sample in another split ({items}): keep "
        "each image in one split only.",
        _paths("image"),
    ),
    "required_splits_present": _Wording(
        "The required splits ({splits}) all have samples.",
        "{n} required split(s) have no samples ({items}): list ids in splits/<split>.txt, or "
        "change data.val_fraction/test_fraction or validation.required_splits.",
    ),
    "classes_in_train": _Wording(
        "Every class has pixels in the train split.",
        "{n} class(es) have no pixels in the train split ({items}): add training samples that "
        "contain them, or remove them from classes.txt.",
    ),
    "foreground_fraction_in_bounds": _Wording(
        "Every mask's foreground fraction is within [{lo}, {hi}].",
        "{n} mask(s) have a foreground fraction outside [{lo}, {hi}] ({items}): check those "
        "masks, or widen validation.foreground_fraction.",
        _paths("mask"),
    ),
}
CHECK_NAMES = tuple(WORDING)  # the report's order

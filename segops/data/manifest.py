"""The manifest: one row per sample, with sizes, content hashes and per-class pixel counts.

`load_dataset` reads a layout, decodes every image and mask once, checks them (missing mask,
size mismatch, values that are not class ids, unreadable files, empty splits, classes.txt that
does not match the masks) and raises one `DatasetError` listing every problem, before anything
is written or trained. Without split files it makes a seeded split and writes it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segops.config import IGNORE_INDEX, DataConfig
from segops.data.facts import sample_facts
from segops.data.formats import (
    SPLITS,
    Layout,
    SampleRef,
    read_layout,
    reader_columns,
)
from segops.data.io import MISSING
from segops.data.problems import symlink_problems
from segops.errors import DatasetError

MANIFEST_COLUMNS = [
    "id",
    "split",
    "image",
    "mask",
    "height",
    "width",
    "image_sha256",
    "mask_sha256",
]


@dataclass(frozen=True)
class DatasetInfo:
    root: Path
    classes: tuple[str, ...]
    manifest: pd.DataFrame  # MANIFEST_COLUMNS + px_<id> per class + px_ignore

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> pd.DataFrame:
        return self.manifest[self.manifest["split"] == name].reset_index(drop=True)

    def class_pixels(self, split: str | None = None) -> np.ndarray:
        """Pixel count per class id, summed over `split` (or all samples)."""
        frame = self.manifest if split is None else self.split(split)
        return frame[[f"px_{i}" for i in range(self.num_classes)]].to_numpy().sum(0)


FLAG_COLUMNS = [
    "image_readable",
    "mask_readable",
    "size_match",
    "invalid_values",
    "max_value",
    "image_constant",  # one value everywhere (e.g. an all-air CT slice): carries no content
]


def scan_one(root: Path, ref: SampleRef, num_classes: int) -> tuple[dict, list[str]]:
    """Row for one sample (always, with flag columns saying what is wrong) and its problems."""
    image_path, mask_path = root / ref.image, root / ref.mask
    facts = sample_facts(root, ref)  # decoded once per content and process (decode_cache)
    image_err, mask_err = facts.image_problem, facts.mask_problem
    image_shape, mask_shape = facts.image_shape, facts.mask_shape
    problems = [f"{image_path}: {image_err}"] if image_err else []
    if mask_err in (MISSING, "file does not exist"):  # nifti, coco, ... say the latter
        problems.append(f"{mask_path}: missing mask for image {image_path.name}")
    elif mask_err:
        problems.append(f"{mask_path}: {mask_err}")
    shape = mask_shape or image_shape or (0, 0)
    size_match = image_shape is not None and mask_shape is not None and image_shape == mask_shape
    if image_shape is not None and mask_shape is not None and not size_match:
        h, w = image_shape
        problems.append(
            f"{mask_path}: mask is {mask_shape[1]}x{mask_shape[0]} but image {image_path.name} "
            f"is {w}x{h}; they must have the same size"
        )
    counts = facts.counts if facts.counts is not None else np.zeros(256, int)
    used = [int(v) for v in np.flatnonzero(counts) if v != IGNORE_INDEX]
    bad = [v for v in used if v >= num_classes]
    if bad and num_classes:
        problems.append(
            f"{mask_path}: values {bad[:8]} are not class ids "
            f"(classes.txt defines 0..{num_classes - 1}) nor {IGNORE_INDEX} (ignore)"
        )
    row = {
        "id": ref.id,
        "split": ref.split,
        "image": ref.image.as_posix(),
        "mask": ref.mask.as_posix(),
        "height": shape[0],
        "width": shape[1],
        "image_sha256": facts.image_sha256,
        "mask_sha256": facts.mask_sha256,
        **{f"px_{i}": int(counts[i]) for i in range(num_classes)},
        "px_ignore": int(counts[IGNORE_INDEX]),
        "image_readable": image_shape is not None,
        "mask_readable": mask_shape is not None,
        "size_match": size_match,
        "invalid_values": len(bad),
        "max_value": max(used, default=0),
        "image_constant": facts.image_constant,
        **reader_columns(ref),
    }
    return row, problems


def _classes_mismatch(layout: Layout, frame: pd.DataFrame) -> list[str]:
    """One dataset-level line when the masks use more ids than classes.txt names."""
    if frame.empty or not layout.classes:
        return []
    over = frame[frame["max_value"] >= len(layout.classes)]
    if over.empty:
        return []
    return [
        f"{layout.root}/classes.txt: names {len(layout.classes)} classes (ids 0.."
        f"{len(layout.classes) - 1}) but {len(over)} masks use ids up to "
        f"{int(over['max_value'].max())} (e.g. {over['mask'].iloc[0]}); add the missing names "
        f"or fix the masks"
    ]


def assign_splits(ids: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Seeded split of `ids` into train/val/test; deterministic for the same sorted ids."""
    order = np.random.default_rng(seed).permutation(sorted(ids))
    n = len(order)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 and n > 1 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 and n > 2 else 0
    split = {str(i): "val" for i in order[:n_val]}
    split |= {str(i): "test" for i in order[n_val : n_val + n_test]}
    split |= {str(i): "train" for i in order[n_val + n_test :]}
    return split


def _write_splits(root: Path, frame: pd.DataFrame) -> None:
    """Write splits/<name>.txt atomically (temp file, then rename): the sample ids, or the
    groups (e.g. NIfTI cases) that samples are split by."""
    split_dir = root / "splits"
    split_dir.mkdir(exist_ok=True)
    for name in SPLITS:
        ids = sorted(set(frame.loc[frame["split"] == name, "group"]))
        if not ids:
            continue
        target, text = split_dir / f"{name}.txt", "\n".join(ids) + "\n"
        if target.is_file() and target.read_text() == text:
            continue
        # A temp name of our own: two flows loading the same dataset at once must not move
        # each other's temp file away (both write the same text; the last rename wins).
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=split_dir)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, target)


def _check_splits(frame: pd.DataFrame, root: Path, eval_split: str | None) -> list[str]:
    problems = []
    needed = {"train"} | ({eval_split} if eval_split else set())
    for name in sorted(needed):
        if frame.empty or not (frame["split"] == name).any():
            problems.append(
                f"{root}: split '{name}' is empty; add ids to splits/{name}.txt or change "
                f"data.val_fraction/test_fraction"
            )
    return problems


@dataclass(frozen=True)
class Scan:
    """Every sample, readable or not: the manifest plus FLAG_COLUMNS, and the problems found."""

    layout: Layout
    frame: pd.DataFrame
    problems: list[str]


def scan_dataset(
    cfg: DataConfig,
    eval_split: str | None = "val",
    progress: Callable[[int, int], None] | None = None,
) -> Scan:
    """Read the layout and decode every sample once; never raises for bad samples.

    Without split files, a seeded split is assigned (not written). Raises DatasetError only
    when the layout itself cannot be read (no images/ folder, unknown format). Every symlink
    below the root is a problem, and nothing is read through one.
    """
    try:
        layout = read_layout(cfg.root, cfg.format, cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise DatasetError(f"cannot read dataset at {cfg.root}: {exc}") from None
    rows, problems = [], [*symlink_problems(Path(cfg.root)), *layout.problems]
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [pool.submit(scan_one, layout.root, r, len(layout.classes)) for r in layout.samples]
        for done, job in enumerate(jobs, 1):
            row, found = job.result()
            rows.append(row)
            problems += found
            if progress:
                progress(done, len(jobs))
    frame = pd.DataFrame(rows)
    problems += _classes_mismatch(layout, frame)
    if not layout.splits_given and not frame.empty:
        # By group: the slices of one NIfTI case never straddle two splits.
        mapping = assign_splits(
            sorted(set(frame["group"])), cfg.val_fraction, cfg.test_fraction, cfg.split_seed
        )
        frame["split"] = frame["group"].map(mapping)
    problems += _check_splits(frame, layout.root, eval_split)
    # A symlinked file is found by the walk and by its read: list it once.
    return Scan(layout, frame, list(dict.fromkeys(problems)))


def load_dataset(
    cfg: DataConfig,
    eval_split: str | None = "val",
    write_splits: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetInfo:
    """Read, decode and check every sample of the dataset at `cfg.root`; see module docstring.

    Raises DatasetError listing every problem; nothing is written when it raises.
    `progress(done, total)` is called as samples are scanned.
    """
    scan = scan_dataset(cfg, eval_split, progress)
    root = scan.layout.root
    if scan.problems:
        raise DatasetError(f"dataset {root} has {len(scan.problems)} problem(s):", scan.problems)
    if not scan.layout.splits_given and write_splits:
        _write_splits(root, scan.frame)
    frame = scan.frame.drop(columns=FLAG_COLUMNS).sort_values(["split", "id"], ignore_index=True)
    return DatasetInfo(root, tuple(scan.layout.classes), frame)


def dataset_fingerprint(info: DatasetInfo) -> str:
    """sha256 over class names and every sample's (id, split, image hash, mask hash).

    Identifies the exact data a model was trained on, independent of where it lies on disk.
    """
    digest = hashlib.sha256("\n".join(info.classes).encode())
    cols = ["id", "split", "image_sha256", "mask_sha256"]
    for row in info.manifest.sort_values("id")[cols].itertuples(index=False):
        digest.update("|".join(map(str, row)).encode())
    return digest.hexdigest()

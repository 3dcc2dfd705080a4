"""Dataset layouts on disk, read into a list of samples (no pixels decoded here).

- folder: `images/<id>.(png|jpg|tif)`, `masks/<id>.png`, `classes.txt`, optional
  `splits/{train,val,test}.txt`.
- voc: Pascal VOC's `JPEGImages/`, `SegmentationClass/`, `ImageSets/Segmentation/{train,val}.txt`.
- cityscapes, nifti, coco, folder_instance: see `segops.data.cityscapes`, `.nifti`, `.coco`,
  `.folder_instance`. Every format is declared once, with `segops.data.registry.register_format`.

Pixels are read by `read_sample`, which the manifest scan and the torch Dataset both call, so
validation and training see the same pixels. Plain PNG pairs are read here; the other formats
(label-id lookup, slices of volumes, masks rasterised from JSON) by their format's reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from segops.config import DataConfig
from segops.data.io import IMAGE_SUFFIXES, Part, ReadError, read_file, read_image, read_mask
from segops.data.problems import id_problem, symlink_problem, symlink_reason
from segops.data.registry import FormatOptions, format_info, register_format

SPLITS = ("train", "val", "test")

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


@dataclass(frozen=True)
class SampleRef:
    id: str
    image: Path  # relative to the dataset root
    mask: Path  # relative to the dataset root; may not exist (reported by the scan)
    split: str | None = None
    reader: str = "png"  # how pixels are read: png, or the name of a registered format
    index: int = -1  # nifti: slice along the last axis; coco: the image id
    group: str = ""  # samples split together (nifti: the case); "" = the sample alone
    window: tuple[float, float] | None = None  # nifti: CT (level, width); None = min..max


@dataclass
class Layout:
    root: Path
    classes: list[str]
    samples: list[SampleRef]
    splits_given: bool
    problems: list[str] = field(default_factory=list)


def read_classes(path: Path) -> tuple[list[str], list[str]]:
    """Class names from `classes.txt` (line number = id) and the problems found in it."""
    if path.is_symlink():
        return [], [symlink_problem(path)]
    if not path.is_file():
        return [], [f"{path}: missing; write one class name per line (line 1 = id 0)"]
    names = [line.strip() for line in path.read_text().splitlines()]
    while names and not names[-1]:
        names.pop()
    problems = []
    if not names:
        problems.append(f"{path}: empty; write one class name per line (line 1 = id 0)")
    for i, name in enumerate(names):
        if not name:
            problems.append(f"{path}: line {i + 1} is blank; every id needs a name")
    dupes = sorted({n for n in names if n and names.count(n) > 1})
    if dupes:
        problems.append(f"{path}: duplicate class names {dupes}")
    if len(names) > 255:
        problems.append(f"{path}: {len(names)} classes; at most 255 fit a mask (255 = ignore)")
    return names, problems


def _read_split_file(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _assign_splits(
    root: Path, samples: dict[str, SampleRef], split_dir: Path, files: dict[str, str]
) -> tuple[list[SampleRef], list[str]]:
    """Samples with the split from the split files; problems for empty files and unknown ids."""
    out, problems, seen = [], [], {}
    for split, name in files.items():
        path = split_dir / name
        if path.is_symlink():
            problems.append(symlink_problem(path))
            continue
        if not path.is_file():
            continue
        ids = _read_split_file(path)
        if not ids:
            problems.append(f"{path}: split '{split}' is empty; list at least one id or delete it")
        for sid in ids:
            not_plain = id_problem(sid)
            if not_plain:
                problems.append(f"{path}: {not_plain}")
                continue
            if sid in seen:
                problems.append(f"{path}: id '{sid}' is also in split '{seen[sid]}'")
                continue
            ref = samples.get(sid)
            if ref is None:
                problems.append(f"{path}: id '{sid}' has no image under {root}")
                continue
            seen[sid] = split
            out.append(replace(ref, split=split))
    return out, problems


def read_folder_layout(root: str | Path, options: FormatOptions | None = None) -> Layout:
    """Samples of a folder-layout dataset (see module docstring)."""
    root = Path(root)
    problems: list[str] = []
    if (root / "images").is_symlink():  # listed through the link, it would be read too
        classes, class_problems = read_classes(root / "classes.txt")
        return Layout(root, classes, [], False, [symlink_problem(root / "images"), *class_problems])
    if not (root / "images").is_dir():
        raise FileNotFoundError(f"{root}/images: no such directory (expected the folder layout)")
    classes, class_problems = read_classes(root / "classes.txt")
    problems += class_problems
    samples: dict[str, SampleRef] = {}
    for path in sorted((root / "images").iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in samples:
            problems.append(f"{path}: two images share the id '{path.stem}'")
            continue
        rel = path.relative_to(root)
        samples[path.stem] = SampleRef(path.stem, rel, Path("masks") / f"{path.stem}.png")
    if not samples:
        problems.append(f"{root}/images: no images (.png, .jpg, .tif)")
    split_dir = root / "splits"
    given = split_dir.is_dir() and any((split_dir / f"{s}.txt").is_file() for s in SPLITS)
    refs = list(samples.values())
    if given:
        refs, split_problems = _assign_splits(
            root, samples, split_dir, {s: f"{s}.txt" for s in SPLITS}
        )
        problems += split_problems
        if not (split_dir / "train.txt").is_file():
            problems.append(f"{split_dir}/train.txt: missing; the other split files need it")
    return Layout(root, classes, refs, given, problems)


@register_format("voc")
def read_voc_layout(root: str | Path, options: FormatOptions | None = None) -> Layout:
    """Samples of a Pascal VOC segmentation dataset (root or its VOCdevkit/VOC20xx folder)."""
    root = Path(root)
    for candidate in [root, *sorted(root.glob("VOCdevkit/VOC*")), *sorted(root.glob("VOC*"))]:
        if (candidate / "JPEGImages").is_dir():
            root = candidate
            break
    else:
        raise FileNotFoundError(f"{root}: no JPEGImages/ folder (expected Pascal VOC layout)")
    split_dir = root / "ImageSets" / "Segmentation"
    samples = {}
    for path in sorted((root / "JPEGImages").iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            mask = Path("SegmentationClass") / f"{path.stem}.png"
            samples[path.stem] = SampleRef(path.stem, path.relative_to(root), mask)
    refs, problems = _assign_splits(
        root, samples, split_dir, {"train": "train.txt", "val": "val.txt"}
    )
    if not (split_dir / "train.txt").is_file():
        problems.append(f"{split_dir}/train.txt: missing (VOC lists its splits there)")
    return Layout(root, list(VOC_CLASSES), refs, True, problems)


@register_format("folder")
def read_folder_semantic(root: Path, options: FormatOptions) -> Layout:
    """Samples of a folder-layout dataset with class-id masks (see module docstring)."""
    layout = read_folder_layout(root)
    if (layout.root / "instances.csv").is_file():
        layout.problems.append(
            f"{layout.root}/instances.csv: masks/ hold instance ids here; "
            "set data.format=folder_instance"
        )
    return layout


def read_layout(root: str | Path, fmt: str, cfg: DataConfig | None = None) -> Layout:
    """Samples of the dataset at `root` in format `fmt` (ValueError listing the registered
    formats if unknown); `cfg` carries the format's options (`data.options`)."""
    entry = format_info(fmt)
    entry.require()
    if cfg is None or cfg.format != fmt or not isinstance(cfg.options, entry.options):
        # re-read from the dump, so legacy keys of `fmt` kept on `cfg` become its options
        cfg = DataConfig.model_validate({**(cfg.model_dump() if cfg else {}), "format": fmt})
    return entry.read_layout(Path(root), cfg.options)


def read_sample(root: Path, ref: SampleRef) -> tuple[Part, Part]:
    """(image, mask) of `ref` as Parts: image HxWx3 uint8, mask HxW uint8 (class ids, 255 =
    ignore), each with its sha256 and problem; never raises for bad files. Nothing is read
    through a symlink or from outside `root` (that side's problem says so)."""
    refused = [symlink_reason(root, ref.image), symlink_reason(root, ref.mask)]
    if ref.reader == "png":
        return (
            Part("", None, refused[0]) if refused[0] else read_file(root / ref.image, read_image),
            Part("", None, refused[1]) if refused[1] else read_file(root / ref.mask, read_mask),
        )
    if any(refused):  # the format's reader reads both: neither is read
        image, mask = (Part("", None, problem) for problem in refused)
        return image, mask
    try:
        entry = format_info(ref.reader)
        entry.require()
        if entry.read_sample is None:
            raise ValueError(f"format {ref.reader!r} has no sample reader (its refs are png)")
    except ValueError as exc:
        problem = f"cannot be read: {exc}"
        return Part("", None, problem), Part("", None, problem)
    return entry.read_sample(root, ref)


def load_sample(root: Path, ref: SampleRef) -> tuple[np.ndarray, np.ndarray]:
    """Decoded (HxWx3 uint8 image, HxW uint8 mask) of `ref`; raises ReadError naming the file."""
    image, mask = read_sample(root, ref)
    for part, path in ((image, ref.image), (mask, ref.mask)):
        if part.array is None:
            raise ReadError(f"{root / path}: {part.problem}")
    return image.array, mask.array  # type: ignore[return-value]


READER_COLUMNS = ["group", "reader", "index", "window"]


def reader_columns(ref: SampleRef) -> dict[str, Any]:
    """The manifest columns (READER_COLUMNS) that let `ref_from_row` rebuild `ref`."""
    window = "" if ref.window is None else f"{float(ref.window[0])!r},{float(ref.window[1])!r}"
    return {
        "group": ref.group or ref.id,
        "reader": ref.reader,
        "index": ref.index,
        "window": window,
    }


def ref_from_row(row: Mapping[str, Any]) -> SampleRef:
    """The SampleRef of a manifest row; rows without READER_COLUMNS are plain PNG pairs."""
    window = row.get("window")
    text = window if isinstance(window, str) else ""  # "" (or NaN from a CSV): no window
    level_width = tuple(float(v) for v in text.split(",")) if text else ()
    return SampleRef(
        str(row["id"]),
        Path(row["image"]),
        Path(row["mask"]),
        row.get("split"),
        reader=str(row.get("reader", "png")),
        index=int(row.get("index", -1)),
        group=str(row.get("group", "")),
        window=level_width if len(level_width) == 2 else None,  # type: ignore[arg-type]
    )

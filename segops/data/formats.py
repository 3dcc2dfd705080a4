"""Dataset layouts on disk, read into a list of samples (no pixels decoded here).

- folder: `images/<id>.(png|jpg|tif)`, `masks/<id>.png`, `classes.txt`, optional
  `splits/{train,val,test}.txt`.
- voc: Pascal VOC's `JPEGImages/`, `SegmentationClass/`, `ImageSets/Segmentation/{train,val}.txt`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from segops.data.io import IMAGE_SUFFIXES

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


@dataclass
class Layout:
    root: Path
    classes: list[str]
    samples: list[SampleRef]
    splits_given: bool
    problems: list[str] = field(default_factory=list)


def read_classes(path: Path) -> tuple[list[str], list[str]]:
    """Class names from `classes.txt` (line number = id) and the problems found in it."""
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
        if not path.is_file():
            continue
        ids = _read_split_file(path)
        if not ids:
            problems.append(f"{path}: split '{split}' is empty; list at least one id or delete it")
        for sid in ids:
            if sid in seen:
                problems.append(f"{path}: id '{sid}' is also in split '{seen[sid]}'")
                continue
            ref = samples.get(sid)
            if ref is None:
                problems.append(f"{path}: id '{sid}' has no image under {root}")
                continue
            seen[sid] = split
            out.append(SampleRef(ref.id, ref.image, ref.mask, split))
    return out, problems


def read_folder_layout(root: str | Path) -> Layout:
    """Samples of a folder-layout dataset (see module docstring)."""
    root = Path(root)
    problems: list[str] = []
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


def read_voc_layout(root: str | Path) -> Layout:
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


def read_layout(root: str | Path, fmt: str) -> Layout:
    """Dispatch on the dataset format name (`folder` or `voc`)."""
    readers = {"folder": read_folder_layout, "voc": read_voc_layout}
    if fmt not in readers:
        raise ValueError(f"unknown dataset format {fmt!r}; choose one of {sorted(readers)}")
    return readers[fmt](root)

"""Add new image/mask pairs to a folder-layout dataset: all checked first, then all or nothing.

`check_new_pairs` decodes every pair of a source folder (`images/`, `masks/`, optional
`classes.txt`) with the same reader the dataset loader uses (`manifest.scan_one`) and also
rejects ids and image contents the dataset already holds. `add_pairs` raises
`PairsRejectedError` listing every rejected file before anything is written; otherwise it copies
the pairs into a staging folder beside the dataset (same filesystem, outside the tree DVC
tracks), renames them into `images/` and `masks/`, appends their ids to `splits/<split>.txt`
(only when the dataset has split files) and undoes the renames if any step fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from segops.data.formats import SPLITS, SampleRef, read_classes
from segops.data.io import IMAGE_SUFFIXES
from segops.data.manifest import scan_one
from segops.errors import DatasetError, SegopsError


@dataclass(frozen=True)
class Pair:
    """One checked pair in the source folder (absolute paths) with its content hashes."""

    id: str
    image: Path
    mask: Path
    image_sha256: str
    mask_sha256: str


@dataclass(frozen=True)
class Rejection:
    """A source file that cannot be added, and why."""

    file: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass(frozen=True)
class AddResult:
    """What `add_pairs` wrote: ids added, and the split file appended to (None if none)."""

    root: Path
    ids: tuple[str, ...]
    split: str
    split_file: Path | None

    @property
    def count(self) -> int:
        return len(self.ids)


class AddError(SegopsError):
    """Pairs could not be added to a dataset; the message says whether anything was written."""


class PairsRejectedError(AddError):
    """Some source pairs failed the checks; `rejections` lists every one. Nothing was written."""

    def __init__(self, src: Path, root: Path, rejections: list[Rejection]) -> None:
        self.rejections = list(rejections)
        lines = "\n".join(f"  - {r}" for r in self.rejections)
        files = len({r.file for r in self.rejections})
        super().__init__(
            f"{files} file(s) in {src} rejected; nothing was written to {root}:\n"
            f"{lines}\nFix or remove these files and run again."
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images(folder: Path) -> list[Path]:
    """Image files (by suffix) directly in `folder`, sorted; [] if it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _dataset_classes(root: Path) -> list[str]:
    """Class names of the target dataset; raises DatasetError if it is not a folder dataset."""
    if not (root / "images").is_dir():
        raise DatasetError(f"{root}/images: no such directory (expected the folder layout)")
    classes, problems = read_classes(root / "classes.txt")
    if problems:
        raise DatasetError(f"dataset {root} has an unusable classes.txt:", problems)
    return classes


def _check_classes(src: Path, classes: list[str]) -> list[Rejection]:
    """A rejection when `src/classes.txt` exists and differs from the dataset's class names."""
    path = src / "classes.txt"
    if not path.is_file():
        return []
    names, problems = read_classes(path)
    if problems:
        return [Rejection(path, "; ".join(problems))]
    if names != classes:
        return [Rejection(path, f"classes {names} differ from the dataset's {classes}")]
    return []


def _orphan_masks(src: Path, ids: set[str]) -> list[Rejection]:
    """Masks in `src/masks` whose id has no image in `src/images`."""
    masks = sorted((src / "masks").glob("*.png")) if (src / "masks").is_dir() else []
    reason = "mask without an image (no images/{}.png, .jpg or .tif)"
    return [Rejection(m, reason.format(m.stem)) for m in masks if m.stem not in ids]


def _source_images(src: Path) -> tuple[list[Path], list[Rejection]]:
    """Images of `src` with a unique id, and rejections for a missing folder or shared ids."""
    images = _images(src / "images")
    if not images:
        return [], [Rejection(src / "images", "no images (.png, .jpg, .tif) to add")]
    unique: dict[str, Path] = {}
    rejected = []
    for path in images:
        if path.stem in unique:
            rejected.append(Rejection(path, f"shares the id '{path.stem}' with another image"))
        else:
            unique[path.stem] = path
    return list(unique.values()), rejected


def _existing(root: Path) -> tuple[set[str], dict[str, str]]:
    """Ids the dataset uses (images and masks) and its image hashes -> id."""
    images = _images(root / "images")
    masks = sorted((root / "masks").glob("*.png")) if (root / "masks").is_dir() else []
    ids = {p.stem for p in images} | {p.stem for p in masks}
    return ids, {_sha256(p): p.stem for p in images}


def _rejection(problem: str, image: Path, mask: Path) -> Rejection:
    """A `scan_one` problem line ("<path>: <reason>") as a Rejection of the image or mask."""
    file = image if problem.startswith(f"{image}: ") else mask
    return Rejection(file, problem.removeprefix(f"{file}: "))


def _check_one(
    src: Path, image: Path, classes: list[str], ids: set[str], hashes: dict[str, str]
) -> tuple[Pair | None, list[Rejection]]:
    """Decode and check one pair as the loader does; also reject known ids and contents."""
    ref = SampleRef(image.stem, image.relative_to(src), Path("masks") / f"{image.stem}.png")
    row, problems = scan_one(src, ref, len(classes))
    rejected = [_rejection(problem, src / ref.image, src / ref.mask) for problem in problems]
    if image.stem in ids:
        rejected.append(Rejection(image, f"id '{image.stem}' is already in the dataset"))
    twin = hashes.get(row["image_sha256"]) if row["image_sha256"] else None
    if twin is not None:
        rejected.append(Rejection(image, f"same image content as '{twin}' already in the dataset"))
    if rejected:
        return None, rejected
    pair = Pair(ref.id, src / ref.image, src / ref.mask, row["image_sha256"], row["mask_sha256"])
    return pair, []


def check_new_pairs(
    src: str | Path, dataset_root: str | Path
) -> tuple[list[Pair], list[Rejection]]:
    """Check every pair in `src` against the dataset at `dataset_root`; writes nothing.

    Returns (pairs that pass, rejections naming each bad file and why). Identical images within
    `src` count as duplicates too. Raises DatasetError if the target is not a usable dataset.
    """
    src, root = Path(src), Path(dataset_root)
    classes = _dataset_classes(root)
    images, rejected = _source_images(src)
    rejected += _check_classes(src, classes) + _orphan_masks(src, {p.stem for p in images})
    ids, hashes = _existing(root)
    pairs = []
    for image in images:
        pair, problems = _check_one(src, image, classes, ids, hashes)
        rejected += problems
        if pair is not None:
            pairs.append(pair)
            hashes[pair.image_sha256] = pair.id
    return pairs, rejected


def _stage(pairs: list[Pair], staging: Path) -> list[tuple[Path, Path]]:
    """Copy pairs into `staging/{images,masks}`; return (staged file, relative target) pairs.

    Raises AddError if a source file changed since it was checked.
    """
    planned = []
    for pair in pairs:
        for kind, path, digest in (
            ("images", pair.image, pair.image_sha256),
            ("masks", pair.mask, pair.mask_sha256),
        ):
            staged = staging / kind / path.name
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staged)
            if _sha256(staged) != digest:
                raise AddError(f"{path} changed while being added; nothing was written")
            planned.append((staged, Path(kind) / path.name))
    return planned


def _split_file(root: Path, split: str) -> Path | None:
    """`splits/<split>.txt` if the dataset has split files (it may not exist yet), else None."""
    split_dir = root / "splits"
    if any((split_dir / f"{s}.txt").is_file() for s in SPLITS):
        return split_dir / f"{split}.txt"
    return None


def _stage_split(path: Path, ids: list[str], staging: Path) -> Path:
    """Write the split file's current text plus `ids` (one a line) into `staging`; return it."""
    text = path.read_text() if path.is_file() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    staged = staging / path.name
    staged.write_text(text + "".join(f"{i}\n" for i in ids))
    return staged


def _undo(moves: list[tuple[Path, Path]]) -> list[Path]:
    """Move files back (newest first); return those that could not be moved back."""
    stuck = []
    for staged, target in reversed(moves):
        try:
            os.replace(target, staged)
        except OSError:
            stuck.append(target)
    return stuck


def _commit(root: Path, planned: list[tuple[Path, Path]], split: tuple[Path, Path] | None) -> None:
    """Rename staged files into the dataset, then the split file; undo the renames on failure."""
    moves: list[tuple[Path, Path]] = []
    try:
        for staged, rel in planned:
            if (root / rel).exists():
                raise AddError(f"{root / rel} appeared while adding; nothing was written")
            os.replace(staged, root / rel)
            moves.append((staged, root / rel))
        if split is not None:
            os.replace(*split)
    except BaseException as exc:
        stuck = _undo(moves)
        if stuck:
            shown = ", ".join(map(str, stuck))
            raise AddError(
                f"adding failed ({exc}) and these files remain; remove them: {shown}"
            ) from exc
        raise


def add_pairs(src: str | Path, dataset_root: str | Path, split: str = "train") -> AddResult:
    """Check the pairs in `src`, then add them all to the dataset (or none); see module docs.

    Returns an AddResult with the ids added (sorted) and the split file written, if any.
    Raises PairsRejectedError (nothing written) if any file fails a check, AddError for a bad
    `split`, and re-raises any error during the write after undoing it.
    """
    if split not in SPLITS:
        raise AddError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    src, root = Path(src), Path(dataset_root).resolve()
    pairs, rejected = check_new_pairs(src, root)
    if rejected:
        raise PairsRejectedError(src, root, rejected)
    staging = root.parent / f".{root.name}.add-tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        planned = _stage(pairs, staging)
        split_path = _split_file(root, split)
        ids = [p.id for p in pairs]
        staged_split = _stage_split(split_path, ids, staging) if split_path else None
        _commit(root, planned, (staged_split, split_path) if split_path else None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return AddResult(root, tuple(ids), split, split_path)

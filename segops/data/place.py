"""Where a dataset lives in the versioned tree, and its own content hash.

A user's dataset may be anywhere (`--dataset /mnt/scans/liver`). segops versions datasets under
one DVC-tracked folder (`versioning.path`, `data/` by default), so a dataset outside it is
*imported*: copied once into `<versioning.path>/<folder name>/` (to a temporary name, then
renamed, so an interrupted copy leaves nothing), and trained on from there. Importing the same
folder again is a no-op when the contents are identical, and an error naming both folders when
they differ. Symbolic links are refused: nothing outside the dataset root is ever read or
versioned.

A dataset's identity is `dir_md5`: DVC 3's directory hash of its own folder, the same value
`dvc add <folder>` would write, independent of anything else under `data/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from segops.config import dataset_slug
from segops.errors import DatasetError


@dataclass(frozen=True)
class PlacedDataset:
    root: str  # the dataset folder inside the versioned tree, as given or relative to the cwd
    imported_from: str | None  # the outside folder it was copied from, None when not imported
    message: str  # one line for the run log


def dir_entries(root: Path) -> list[dict[str, str]]:
    """DVC 3's manifest of `root`: [{"md5", "relpath"}] for every file, sorted by path."""
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    return [{"md5": hashlib.md5(p.read_bytes()).hexdigest(), "relpath": r} for r, p in files]


def entries_md5(entries: list[dict[str, str]]) -> str:
    """DVC 3's directory hash of a manifest: md5 of its JSON, suffixed `.dir`."""
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def dir_md5(root: str | Path) -> str:
    """The content hash DVC gives the folder `root` (what `dvc add root` writes as md5)."""
    return entries_md5(dir_entries(Path(root)))


def subtree_md5(entries: list[dict[str, str]], sub: str) -> str:
    """The hash of folder `sub` from the manifest of a folder above it (no file is read)."""
    prefix = sub.strip("/") + "/"
    own = [
        {"md5": e["md5"], "relpath": e["relpath"][len(prefix) :]}
        for e in entries
        if e["relpath"].startswith(prefix)
    ]
    if not own:
        raise DatasetError(f"the data version holds no file under {sub}/")
    return entries_md5(own)


def find_symlinks(root: Path, limit: int = 5) -> list[Path]:
    """Up to `limit` symbolic links at or below `root` (files or folders; not followed)."""
    found = [root] if root.is_symlink() else []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        found += [here / n for n in (*dirs, *files) if (here / n).is_symlink()]
        if len(found) >= limit:
            break
    return found[:limit]


def refuse_symlinks(root: Path, what: str = "dataset") -> None:
    """DatasetError naming the links when `root` holds any: a link could bring a file from
    outside the dataset (a host secret) into the data version and the DVC remote."""
    links = find_symlinks(root)
    if links:
        shown = ", ".join(str(p) for p in links)
        raise DatasetError(
            f"{what} {root} holds symbolic links ({shown}): segops versions only real files "
            "inside the dataset. Replace each link by the file itself (cp -L), or remove it."
        )


def place_dataset(root: str | Path, versioned: str | Path) -> PlacedDataset:
    """The dataset at `root`, inside `versioned` (imported into it when it lies outside)."""
    src, tree = Path(root), Path(versioned)
    if not src.is_dir():
        raise DatasetError(f"dataset {src} is not a folder: pass --dataset PATH of a dataset")
    refuse_symlinks(src)
    if src.resolve().is_relative_to(tree.resolve()):
        return PlacedDataset(str(src), None, f"dataset {src} is in the versioned tree {tree}/")
    dest = tree / dataset_slug(src)
    if dest.exists():
        return _reuse(src, dest)
    tree.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.import-", dir=tree))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True, symlinks=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    count = sum(1 for p in dest.rglob("*") if p.is_file())
    message = f"imported {src} into {dest}/ ({count} files) to version it with DVC"
    return PlacedDataset(str(dest), str(src), message)


def _reuse(src: Path, dest: Path) -> PlacedDataset:
    theirs, ours = dir_md5(src), dir_md5(dest) if dest.is_dir() else "not a folder"
    if theirs != ours:
        raise DatasetError(
            f"cannot import {src}: {dest} already holds another dataset ({ours}; {src} is "
            f"{theirs}). Rename your folder, remove {dest} if it is stale, or add new pairs to "
            f"it with `segops data add {src} --dataset {dest}`."
        )
    return PlacedDataset(str(dest), str(src), f"{src} is already imported as {dest}/ ({ours})")

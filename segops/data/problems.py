"""Hostile input at the dataset's edge: symlinks, ids that are paths, and problem lines.

A dataset is read only from files that lie inside its root: a symlink anywhere below the root
(file or folder) is refused with the reason `symlink`, and nothing is read through it, so the
data that is validated, versioned (DVC copies what a symlink points to, or skips a symlinked
folder) and trained on is one and the same. Ids in split files must be plain names.

Problem lines read "<path>: <reason>[; what to do]"; `split_problem` parses them back.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

SYMLINK_FIX = "replace it by the real {kind}: segops reads nothing through symlinks"


def _target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def symlink_problem(path: Path) -> str:
    """The problem line of the symlink `path` itself (file or folder)."""
    kind = "folder" if path.is_dir() else "file"
    return f"{path}: symlink to {_target(path)}; {SYMLINK_FIX.format(kind=kind)}"


def symlink_reason(root: Path, rel: str | Path) -> str | None:
    """Why `root`/`rel` must not be read: it is a symlink, lies in a symlinked folder, or
    `rel` leaves the root (absolute, `..`); None when it is a plain path inside the root."""
    rel = Path(rel)
    if rel.is_absolute() or ".." in rel.parts:
        return (
            f"outside the dataset: {rel} is not a path inside {root}; keep every image and "
            "mask inside the dataset folder (DVC versions only that)"
        )
    path = root
    for i, part in enumerate(rel.parts):
        path = path / part
        if path.is_symlink():
            if i == len(rel.parts) - 1:
                return f"symlink to {_target(path)}; {SYMLINK_FIX.format(kind='file')}"
            folder = Path(*rel.parts[: i + 1]).as_posix()
            return f"symlink: inside the symlinked folder {folder}/; replace it by the real folder"
    return None


def find_symlinks(root: Path) -> list[Path]:
    """Every symlink below `root` (files and folders), sorted; symlinked folders are not
    entered. The root itself may be a symlink: the user named it."""
    found: list[Path] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # unreadable folders show up as unreadable files where they matter
        for entry in entries:
            if entry.is_symlink():
                found.append(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return sorted(found)


def symlink_problems(root: Path) -> list[str]:
    """One problem line per symlink below `root`."""
    return [symlink_problem(path) for path in find_symlinks(root)]


def id_problem(sid: str) -> str | None:
    """Why `sid` (from a split file) is not a plain sample id, or None when it is one."""
    posix, windows = PurePosixPath(sid), PureWindowsPath(sid)
    if posix.is_absolute() or windows.is_absolute() or sid.startswith(("/", "\\")):
        kind = "an absolute path"
    elif "/" in sid or "\\" in sid or sid in (".", ".."):
        kind = "a path"
    else:
        return None
    return (
        f"id '{sid}' is {kind}, not a plain name; list sample ids only (the image's file "
        "name without folder or suffix, e.g. 'img001')"
    )


def split_problem(line: str, root: Path) -> tuple[str, str]:
    """(file relative to `root`, reason) of a problem line "<path>: <reason>"; the file is ""
    when the line is about the dataset as a whole (or names no path)."""
    prefix = str(root)
    if line.startswith(prefix):
        head, sep, reason = line[len(prefix) :].partition(": ")
        if sep and (head == "" or head.startswith(("/", os.sep))):
            return head.lstrip("/" + os.sep), reason
    head, sep, reason = line.partition(": ")
    if sep and ("/" in head or os.sep in head or "." in head):
        return head, reason
    return "", line

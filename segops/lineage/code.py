"""The code version: one hash over the Python sources that shape a model.

A git commit alone misses uncommitted edits (a dirty tree) and does not exist outside git, so
the flow also records this content hash; "same data, same config, same code" compares it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import segops

_PACKAGE = Path(segops.__file__).resolve().parent
_FLOWS = _PACKAGE.parent / "flows"  # present in a source checkout, absent in a wheel


def code_version(roots: tuple[Path, ...] = (_PACKAGE, _FLOWS)) -> str:
    """sha256 over the relative path and bytes of every `*.py` file under `roots`."""
    digest = hashlib.sha256()
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\n".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()

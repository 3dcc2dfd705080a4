"""Checkpoints that describe themselves, written atomically and verified on load.

A checkpoint is a dict (see `segops.train.parts.checkpoint_state`) saved with `torch.save`;
beside it, `<name>.sha256` holds the file's hash. Loading goes through `segops.weights`
(`weights_only=True`; bad files become a CheckpointError naming the file).
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import torch

from segops.errors import CheckpointError
from segops.weights import load_weights

FORMAT = "segops-checkpoint/1"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> str:
    """Write `state` to `path` atomically (temp file, fsync, rename); returns its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda fh: torch.save({"format": FORMAT, **state}, fh))
    digest = file_sha256(path)
    _atomic_write(path.with_name(path.name + ".sha256"), lambda fh: fh.write(digest.encode()))
    return digest


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint after checking its hash; CheckpointError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (train first, or check train.out_dir)")
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file() and sidecar.read_text().strip() != file_sha256(path):
        raise CheckpointError(
            f"{path}: its sha256 does not match {sidecar.name}; the file is corrupt or was "
            f"replaced. Delete it to start over, or restore it."
        )
    state = load_weights(path, map_location)  # weights_only; CheckpointError says what is wrong
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    return state


def rng_state() -> dict[str, Any]:
    """torch, python and CUDA RNG states, as every checkpoint stores them (weights_only-safe)."""

    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }

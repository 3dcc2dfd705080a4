"""The one place that reads weights and checkpoints from disk: `torch.load(weights_only=True)`.

A weights file is a pickle, and a pickle can name any Python callable; `weights_only=True`
refuses everything but tensors and plain containers, so a hostile file is refused before any
of it runs. Every failure becomes a `CheckpointError` that names the file and says what is
wrong with it (missing, empty or truncated, not a PyTorch file, holds objects other than
tensors). The message never suggests turning the protection off: a file that needs it is not
a file to load.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from segops.errors import CheckpointError

SAVE_HINT = "save weights with torch.save(model.state_dict(), path)"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _refused(exc: BaseException) -> str:
    """What a refused or unreadable file is, from torch's exception (whose own text, advice
    to switch the protection off included, is not repeated)."""
    text = str(exc)
    if isinstance(exc, EOFError):
        return "is empty or truncated (it ends before its data does)"
    if "central directory" in text or "PytorchStreamReader" in text:
        return "is truncated or corrupt (not a complete PyTorch archive)"
    if isinstance(exc, OSError):  # torch's archive reader seeks past the end of a cut file
        return f"is truncated or corrupt (reading it failed: {exc.strerror or exc})"
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = _GLOBAL.search(text)
        if found:
            problem = f"contains objects other than tensors (it references {found.group(1)})"
        else:
            problem = (
                "is not a PyTorch checkpoint or state dict (it holds data or pickle "
                "instructions that no weights file needs)"
            )
        return (
            f"{problem}; refused for safety, nothing in it was run. Weights must be a plain "
            f"state dict ({SAVE_HINT}), from a source you trust"
        )
    return f"is not a PyTorch checkpoint or state dict (unreadable: {type(exc).__name__})"


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Whatever `torch.save` wrote to `path`, loaded with `weights_only=True`.

    Raises CheckpointError naming `path` for a missing, unreadable, truncated, non-PyTorch or
    unsafe (non-tensor objects) file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # torch raises many types for bad files; say which kind it was
        raise CheckpointError(f"{path}: {_refused(exc)}") from None


def check_state_dict(state: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """`state` if it maps names to tensors, else CheckpointError naming `path`."""
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: holds a {type(state).__name__}, not a state dict (names -> tensors); "
            f"{SAVE_HINT}"
        )
    wrong = [k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if wrong:
        shown = ", ".join(repr(k) for k in wrong[:5]) + (" ..." if len(wrong) > 5 else "")
        raise CheckpointError(
            f"{path}: not a state dict: {len(wrong)} entries are not tensors ({shown}); {SAVE_HINT}"
        )
    return state


def load_state_dict_file(path: str | Path, unwrap_checkpoint: bool = False) -> dict[str, Any]:
    """The state dict at `path` (with `unwrap_checkpoint`, also a segops checkpoint's `model`
    entry), checked to hold only named tensors; CheckpointError otherwise."""
    state = load_weights(path)
    if unwrap_checkpoint and isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return check_state_dict(state, path)

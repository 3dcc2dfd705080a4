"""Opt-in transfer-learning weights from a local file (never downloaded implicitly).

Files are read by `segops.weights` (`weights_only=True`): a file that is not a plain state
dict, or that holds objects other than tensors, is refused with a ConfigError naming it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from segops.errors import CheckpointError, ConfigError
from segops.weights import load_state_dict_file


def pretrained_state(spec: str) -> dict[str, torch.Tensor]:
    """The state dict in the local file `spec` (a plain state dict or a segops checkpoint's
    `model` entry); ConfigError naming `model.pretrained` and the file otherwise."""

    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"model.pretrained: {path} does not exist (a state-dict .pt file)")
    try:
        state = load_state_dict_file(path, unwrap_checkpoint=True)
    except CheckpointError as exc:
        raise ConfigError(f"model.pretrained: {exc}") from None
    if not state:
        raise ConfigError(f"model.pretrained: {path} holds no tensors")
    return state


def check_pretrained_file(spec: str | None) -> None:
    """ConfigError unless `model.pretrained` is unset, "torchvision" or a readable, safe state
    dict file: cheap enough to call before a flow runs anything (it loads the file once)."""
    if spec and spec != "torchvision":
        pretrained_state(spec)


def load_local_weights(model: nn.Module, spec: str, name: str) -> list[str]:
    """Copy every tensor from the state dict at `spec` whose name and shape match `model`.

    Accepts a plain state dict or a segops checkpoint (its `model` entry). Tensors that do not
    fit (typically the classifier head for another number of classes) are skipped; the skipped
    names are returned. Raises ConfigError when the file is missing, unsafe or not a state dict,
    or when nothing matches.
    """
    if spec == "torchvision":
        raise ConfigError(
            f"model {name!r} has no torchvision weights; set model.pretrained to a state-dict file"
        )
    path = Path(spec)
    state = pretrained_state(spec)
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise ConfigError(f"model.pretrained: no tensor in {path} fits model {name!r}")
    model.load_state_dict(fits, strict=False)
    return sorted(set(own) - set(fits))

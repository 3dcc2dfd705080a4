"""Opt-in transfer-learning weights from a local file (never downloaded implicitly)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from segops.errors import ConfigError


def load_local_weights(model: nn.Module, spec: str, name: str) -> list[str]:
    """Copy every tensor from the state dict at `spec` whose name and shape match `model`.

    Accepts a plain state dict or a segops checkpoint (its `model` entry). Tensors that do not
    fit (typically the classifier head for another number of classes) are skipped; the skipped
    names are returned. Raises ConfigError when the file is missing or nothing matches.
    """
    if spec == "torchvision":
        raise ConfigError(
            f"model {name!r} has no torchvision weights; set model.pretrained to a state-dict file"
        )
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"model.pretrained: {path} does not exist (a state-dict .pt file)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise ConfigError(f"model.pretrained: no tensor in {path} fits model {name!r}")
    model.load_state_dict(fits, strict=False)
    return sorted(set(own) - set(fits))

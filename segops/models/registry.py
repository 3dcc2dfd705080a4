"""A registry of model builders: a dict, a decorator, and errors that list the valid names.

Builders are keyword-only: `builder(*, num_classes, pretrained, **options) -> nn.Module`, and the
module maps `[N,3,H,W]` float images to `[N,num_classes,H,W]` logits. Importing the builder
modules is deferred until a model is asked for, so listing names stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from segops.errors import ConfigError

_BUILDER_MODULES = ("segops.models.unet", "segops.models.segnet", "segops.models.tv")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable
    summary: str
    pretrained: str  # where transfer-learning weights can come from


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, summary: str, pretrained: str = "local file") -> Callable:
    """Decorator that registers `builder` under `name` (the registry key equals the name)."""

    def wrap(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, summary, pretrained)
        return builder

    return wrap


def _load_builders() -> None:
    for module in _BUILDER_MODULES:
        importlib.import_module(module)


def list_models() -> list[ModelEntry]:
    """Every registered model, sorted by name."""
    _load_builders()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def model_info(name: str) -> ModelEntry:
    """The entry for `name`; ConfigError naming the valid names otherwise."""
    _load_builders()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r} (model.name); choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def build_model(name: str, *, num_classes: int, pretrained: str | None = None, **options):
    """Build model `name` for `num_classes` classes; `pretrained` is opt-in (see README)."""
    entry = model_info(name)
    try:
        return entry.builder(num_classes=num_classes, pretrained=pretrained, **options)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad model.options ({exc})") from None

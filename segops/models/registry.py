"""A registry of model builders: a dict, a decorator, and errors that list the valid names.

Builders are keyword-only: `builder(*, num_classes, pretrained, **options) -> nn.Module`. A
`semantic` model maps `[N,3,H,W]` float images to `[N,num_classes,H,W]` logits; an `instance`
model is a torchvision detection model (a list of images in, a list of dicts with boxes, labels,
scores and masks out; a loss dict in train mode). `list_models()` lists the semantic ones only.
Importing the builder modules is deferred until a model is asked for, so listing stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from segops.errors import ConfigError

# lazy imports: torch is imported inside check_options: `segops models` and the config check of
# `segops run` list and look up models without it (docs/development.md "Imports").

_BUILDER_MODULES = (
    "segops.models.unet",
    "segops.models.segnet",
    "segops.models.tv",
    "segops.models.maskrcnn",
)
KINDS = ("semantic", "instance")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable
    summary: str
    pretrained: str  # where transfer-learning weights can come from
    kind: str = "semantic"  # "semantic" (logits) or "instance" (torchvision detection API)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, summary: str, pretrained: str = "local file", kind: str = "semantic"
) -> Callable:
    """Decorator that registers `builder` under `name` (the registry key equals the name)."""
    if kind not in KINDS:
        raise ValueError(f"model {name!r}: kind must be one of {KINDS}, not {kind!r}")

    def wrap(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, summary, pretrained, kind)
        return builder

    return wrap


def _load_builders() -> None:
    for module in _BUILDER_MODULES:
        importlib.import_module(module)


def list_models(kind: str | None = "semantic") -> list[ModelEntry]:
    """The registered models of `kind` ("semantic", "instance"; None: all), sorted by name."""
    _load_builders()
    return [_REGISTRY[k] for k in sorted(_REGISTRY) if kind is None or _REGISTRY[k].kind == kind]


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
        raise ConfigError(
            f"model {name!r}: bad model.options ({exc}); options are per model, so after "
            "changing model.name set them too, e.g. --set 'model.options={}'"
        ) from None


def check_options(name: str, options: dict) -> None:
    """ConfigError unless model `name` accepts `options`: the model is built on PyTorch's
    `meta` device (no memory, no weights: a few milliseconds), so a bad option fails before
    any data is validated, versioned or trained on."""
    import torch

    with torch.device("meta"):
        build_model(name, num_classes=2, **options)


def require_semantic(name: str) -> None:
    """ConfigError unless `name` is a semantic model (the kind the semantic loop and flow train)."""
    entry = model_info(name)
    if entry.kind != "semantic":
        raise ConfigError(
            f"model.name {name!r} is an {entry.kind} model: `segops train` and `segops run` train "
            "semantic models so far; train it with segops.train.instance.train_instance"
        )

"""Segmentation models by name: `build_model("unet", num_classes=5)`; `list_models()`."""

from segops.models.registry import (
    build_model,
    check_options,
    list_models,
    model_info,
    register_model,
    require_semantic,
)

__all__ = [
    "build_model",
    "check_options",
    "list_models",
    "model_info",
    "register_model",
    "require_semantic",
]

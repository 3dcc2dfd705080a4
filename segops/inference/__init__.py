"""Trained models back from checkpoints, and prediction at an image's original size.

`predict_image` predicts one image; `predict_masks` many, batched (`segops.inference.batched`),
each mask identical to what `predict_image` gives for that image alone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from segops.inference.batched import batched_masks, class_ids
from segops.inference.inputs import (
    SLIDE_ABOVE,
    TILE_ALIGN,
    at_data_scale,
    resized_input,
    sliding_probs,
    tile_shape,
    uses_sliding,
    window_starts,
    with_tiles,
)
from segops.inference.loading import (
    TrainedModel,
    default_device,
    load_model_files,
    load_trained,
    require_semantic_model,
    with_predict,
)
from segops.metrics.instance import semantic_from_instances

__all__ = [
    "SLIDE_ABOVE",
    "TILE_ALIGN",
    "TrainedModel",
    "default_device",
    "load_model_files",
    "load_trained",
    "predict_image",
    "predict_instances_image",
    "predict_masks",
    "require_semantic_model",
    "sliding_probs",
    "tile_shape",
    "uses_sliding",
    "window_starts",
    "with_predict",
    "with_tiles",
]


@torch.inference_mode()
def predict_instances_image(
    trained: TrainedModel, image: np.ndarray, mask_threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """An instance model's detections on one HxWx3 uint8 image, at the image's size:
    `masks` bool [N,H,W], `labels` int64 [N] (class ids 1..K), `scores` float32 [N] (highest
    first) and `boxes` float32 [N,4] (x0, y0, x1, y1). The model resizes internally."""
    if trained.kind != "instance":
        raise ValueError(f"{trained.checkpoint} is a {trained.kind} model, not an instance model")
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
    (out,) = trained.model([tensor.to(trained.device)])
    masks = out["masks"].detach().float().cpu()
    masks = masks[:, 0] if masks.ndim == 4 else masks
    return {
        "masks": (masks > mask_threshold).numpy(),
        "labels": out["labels"].cpu().numpy().astype(np.int64),
        "scores": out["scores"].float().cpu().numpy(),
        "boxes": out["boxes"].float().cpu().numpy(),
    }


@torch.inference_mode()
def predict_image(
    trained: TrainedModel, image: np.ndarray, sliding: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mask (HxW uint8 class ids) and class probabilities (CxHxW float32) at the image's size.

    An instance model's mask is painted from its detections (`predict_instances_image`).
    A model trained at native resolution (`data.crop_size`) always predicts at native
    resolution, in tiles (the whole image when it fits in `predict.max_tile`; see
    `segops.inference.inputs.window_grid`). Otherwise images up to `SLIDE_ABOVE` times the
    model's input size are resized to it and the logits resized back bilinearly; larger ones
    (or `sliding=True`) are predicted at native resolution in tiles, so small objects are not
    shrunk away. A model trained with `data.scale` predicts the image resized by it, its
    probabilities brought back to the image's size (`at_data_scale`).
    """
    if trained.kind == "instance":
        return _painted(trained, image)

    def probs_of(image: np.ndarray) -> torch.Tensor:
        if uses_sliding(trained, image, sliding):
            return sliding_probs(trained, image)
        return _resized_probs(trained, image)

    probs = at_data_scale(trained, image, probs_of)  # data.scale: resized there and back
    return class_ids(probs), probs.cpu().numpy()


def _painted(trained: TrainedModel, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An instance model's (class map painted from its detections scoring >= 0.5, one-hot
    probabilities of that map): what semantic consumers of `predict_image` need."""
    found = predict_instances_image(trained, image)
    classes = len(trained.classes)
    mask = semantic_from_instances(found, classes, *image.shape[:2]).astype(np.uint8)
    return mask, np.eye(classes, dtype=np.float32)[mask].transpose(2, 0, 1)


def _resized_probs(trained: TrainedModel, image: np.ndarray) -> torch.Tensor:
    tensor = resized_input(trained, image)
    logits = trained.model(tensor.unsqueeze(0).to(trained.device)).float()
    logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits.softmax(1)[0]


def predict_masks(
    trained: TrainedModel, images: list[np.ndarray], batch_size: int = 8
) -> list[np.ndarray]:
    """HxW uint8 masks of `images` (HxWx3 uint8, any mix of sizes), each identical to
    `predict_image(trained, image)[0]`, from about ceil(pieces / batch_size) forward passes
    (a piece: one resized image or one sliding window). Instance models, and a lone image,
    take the per-image path, and so do models trained with `data.scale` (so far)."""
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size}: give a positive integer")
    if trained.kind == "instance" or len(images) == 1 or trained.config.data.scale is not None:
        return [predict_image(trained, image)[0] for image in images]
    masks: list[np.ndarray] = [None] * len(images)  # type: ignore[list-item]
    for index, mask in batched_masks(trained, images, batch_size):
        masks[index] = mask
    return masks

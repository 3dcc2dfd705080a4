"""Predictions of an instance model (torchvision detection API, e.g. Mask R-CNN) over a dataset,
and the metrics training validates with.

Datasets are any torch Dataset yielding `(image float [3,H,W] in 0..1, target)` with target a
dict of `boxes` float [N,4] xyxy, `labels` int64 [N] (1..K) and `masks` uint8 [N,H,W] (tensors
or numpy arrays, as `segops.data.instance_dataset.InstanceDataset` yields them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segops.data.instance_dataset import collate_instances
from segops.metrics.confusion import ConfusionMatrix
from segops.metrics.instance import (
    coco_mask_metrics,
    per_image_mask_ap,
    semantic_from_instances,
)
from segops.metrics.semantic import summarize
from segops.train.distributed import SINGLE, World, gather_objects, ordered, shard_batches


def _compact(output: dict[str, torch.Tensor], mask_threshold: float) -> dict[str, np.ndarray]:
    """One image's detections on the CPU, masks thresholded to bool [N,H,W] (to save memory)."""
    masks = output["masks"].detach().cpu()
    masks = masks[:, 0] if masks.ndim == 4 else masks
    return {
        "masks": (masks > mask_threshold).numpy(),
        "labels": output["labels"].cpu().numpy(),
        "scores": output["scores"].float().cpu().numpy(),
    }


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


@torch.inference_mode()
def predict_instances(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 2,
    device: str | torch.device | None = None,
    mask_threshold: float = 0.5,
    world: World = SINGLE,
) -> tuple[list[dict], list[dict]]:
    """(predictions, targets) for every sample of `dataset`, in order, as numpy dicts; images go
    to `device` (default: the model's). Under torchrun each rank predicts whole batches of the
    single-process order and every rank gets all of them back, in that order."""
    model.eval()
    device = device or next(model.parameters()).device
    batches = shard_batches(len(dataset), batch_size, world)  # type: ignore[arg-type]
    found = []  # per batch: (predictions, targets)
    for images, batch_targets in DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate_instances
    ):
        outputs = model([torch.as_tensor(im).to(device) for im in images])
        preds = [_compact(out, mask_threshold) for out in outputs]
        found.append((preds, [{k: np.asarray(v) for k, v in t.items()} for t in batch_targets]))
    if world.distributed:
        found = ordered(gather_objects(found, world))
    return [p for batch, _ in found for p in batch], [t for _, batch in found for t in batch]


def painted_maps(
    found: list[dict], targets: list[dict], classes: int, score_threshold: float = 0.5
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(predicted maps, true maps) painted from instances, one [H,W] int64 map per image;
    predictions keep the instances scoring at least `score_threshold`."""
    preds, truths = [], []
    for pred, target in zip(found, targets, strict=True):
        height, width = np.asarray(target["masks"]).shape[-2:]
        preds.append(semantic_from_instances(pred, classes, height, width, score_threshold))
        truths.append(semantic_from_instances(target, classes, height, width, 0.0))
    return preds, truths


def evaluate_instance(
    model: nn.Module,
    dataset: Dataset,
    classes: list[str] | tuple[str, ...],
    *,
    batch_size: int = 2,
    device: str | torch.device | None = None,
    score_threshold: float = 0.5,
    world: World = SINGLE,
) -> dict[str, Any]:
    """COCO mask `AP`, `AP50`, `AP75`, `AR`; `mean_iou`, `pixel_accuracy` and `semantic` (the
    summary of `segops.metrics.semantic`) from masks painted with instances scoring at least
    `score_threshold`; and `per_image_ap` {sample index: mask AP (NaN without ground truth)}.
    Under torchrun (`world`) the predictions of every rank are gathered first."""
    preds, targets = predict_instances(model, dataset, batch_size, device, world=world)
    matrix = ConfusionMatrix(len(classes))
    painted, truths = painted_maps(preds, targets, len(classes), score_threshold)
    for pred, truth in zip(painted, truths, strict=True):
        matrix.update(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
    semantic = summarize(matrix.compute(), list(classes))
    return {
        **coco_mask_metrics(preds, targets),
        "mean_iou": _number(semantic["mean_iou"]),
        "pixel_accuracy": _number(semantic["pixel_accuracy"]),
        "semantic": semantic,
        "per_image_ap": per_image_mask_ap(preds, targets),
    }

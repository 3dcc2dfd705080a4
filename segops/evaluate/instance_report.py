"""Evaluate an instance model (Mask R-CNN) on a dataset split, in the layout of `report.py`.

The same files as a semantic evaluation, so that promotion, the model report and `dvc metrics`
read both kinds alike: `metrics.json` holds the semantic metrics of the masks painted from the
detections (score >= 0.5, higher scores on top) plus the COCO mask metrics `mask_ap`,
`mask_ap50`, `mask_ap75` and `mask_ar` (pycocotools), `kind: "instance"`, and per class an
`ap` beside the IoU/Dice values; `per_image.csv` adds each image's own mask `ap` (NaN for an
image without ground truth instances); `per_class.csv` an `ap` column. The worst images are
those with the lowest mask AP. Images are scored at their own size (the model resizes
internally and returns masks at the input's size).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from segops.config import Config
from segops.data.instance_dataset import InstanceDataset
from segops.data.io import load_image
from segops.data.manifest import DatasetInfo
from segops.evaluate.outputs import Progress, Scored
from segops.inference import TrainedModel
from segops.metrics.confusion import ConfusionMatrix
from segops.metrics.instance import coco_mask_metrics, per_class_mask_ap, per_image_mask_ap
from segops.metrics.semantic import per_image_scores, summarize
from segops.train.instance_eval import painted_maps, predict_instances

COCO_KEYS = {"AP": "mask_ap", "AP50": "mask_ap50", "AP75": "mask_ap75", "AR": "mask_ar"}


def _confusions(preds: list, truths: list, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Split matrix [C,C] and per-image matrices [N,C,C] of painted maps (any sizes)."""
    matrix, per_image = ConfusionMatrix(classes), []
    for pred, truth in zip(preds, truths, strict=True):
        per_image.append(matrix.update(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None]))
    stacked = torch.cat(per_image).numpy() if per_image else np.zeros((0, classes, classes))
    return matrix.compute(), stacked


def _worst(info: DatasetInfo, ds: InstanceDataset, scores: pd.DataFrame, maps: tuple, k: int):
    """The `k` images with the lowest mask AP (images without ground truth last)."""
    order = scores["ap"].fillna(np.inf).sort_values(kind="stable").index[:k]
    return [
        {
            "id": ds.refs[i].id,
            "image": load_image(info.root / ds.refs[i].image),
            "truth": maps[1][i].astype(np.uint8),
            "pred": maps[0][i].astype(np.uint8),
            "iou": float(scores.loc[i, "ap"]),
            "metric": "mask AP",
        }
        for i in order
    ]


def _instance_summary(mat: np.ndarray, found: list, targets: list, classes: list) -> dict:
    """`summarize` of the painted masks, plus the COCO mask metrics and an `ap` per class."""
    summary = summarize(mat, classes)
    class_ap = per_class_mask_ap(found, targets)
    for k, name in enumerate(classes):  # None: background, or no instance of the class
        ap = class_ap.get(k, float("nan"))
        summary["per_class"][name]["ap"] = None if k == 0 or np.isnan(ap) else ap
    coco = coco_mask_metrics(found, targets)
    return summary | {COCO_KEYS[key]: value for key, value in coco.items()} | {"kind": "instance"}


def _image_scores(ids: list[str], found: list, targets: list, per_image: np.ndarray):
    """One row per image: id, mask `ap`, and the IoU, Dice and pixel accuracy of its maps."""
    ious, dices = per_image_scores(per_image)
    correct = np.trace(per_image, axis1=1, axis2=2) / np.maximum(per_image.sum((1, 2)), 1)
    image_ap = per_image_mask_ap(found, targets)
    return pd.DataFrame(
        {
            "id": ids,
            "ap": [image_ap[i] for i in range(len(ids))],
            "iou": ious,
            "dice": dices,
            "pixel_accuracy": correct,
        }
    )


def score_instances(
    trained: TrainedModel, cfg: Config, info: DatasetInfo, split: str, progress: Progress = None
) -> Scored:
    """Score instance model `trained` on `split` of `info` (see the module docstring)."""
    ds = InstanceDataset(info.split(split), root=info.root)
    found, targets = predict_instances(trained.model, ds, cfg.evaluate.batch_size, trained.device)
    if progress:
        progress(len(ds), len(ds))
    maps = painted_maps(found, targets, len(info.classes))
    mat, per_image = _confusions(*maps, len(info.classes))
    summary = _instance_summary(mat, found, targets, list(info.classes))
    scores = _image_scores([ref.id for ref in ds.refs], found, targets, per_image)
    return Scored(summary, scores, mat, _worst(info, ds, scores, maps, cfg.evaluate.worst_k))

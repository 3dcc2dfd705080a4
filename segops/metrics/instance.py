"""Instance-segmentation metrics: COCO mask AP/AR with pycocotools, and semantic maps from
instances so that the confusion-matrix metrics of `segops.metrics.semantic` apply as well.

Inputs are lists with one dict per image, in the same order (image id = position in the list).
Targets: `masks` [N,H,W] (0/1), `labels` [N] (1..K), optionally `boxes` [N,4] xyxy.
Predictions: `masks` [N,1,H,W] or [N,H,W] (probabilities, thresholded at `mask_threshold`),
`labels` [N], `scores` [N], optionally `boxes`. Tensors or numpy arrays are both accepted.

Convention: a metric that COCO leaves undefined (no ground truth anywhere, or in an image for
the per-image AP) is NaN; pycocotools reports such values as -1.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from pycocotools import coco as coco_module
from pycocotools import cocoeval as cocoeval_module
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

Instances = dict[str, Any]


def _np(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _binary_masks(masks: Any, threshold: float) -> np.ndarray:
    """[N,H,W] uint8 from [N,1,H,W] or [N,H,W] masks (probabilities or 0/1)."""
    arr = _np(masks)
    if arr.ndim == 4:
        arr = arr[:, 0]
    return (arr > threshold if arr.dtype.kind == "f" else arr > 0).astype(np.uint8)


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    return [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)] for x0, y0, x1, y1 in boxes]


def _annotations(image_id: int, inst: Instances, threshold: float, scored: bool) -> list[dict]:
    """COCO annotation dicts (RLE segmentation, area, bbox, category) of one image."""
    masks = _binary_masks(inst["masks"], threshold)
    labels = _np(inst["labels"]).reshape(-1)
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
    if "boxes" in inst:
        boxes = _xywh(_np(inst["boxes"]).reshape(-1, 4))
    else:
        boxes = [list(map(float, b)) for b in mask_utils.toBbox(rles)] if len(masks) else []
    scores = _np(inst["scores"]).reshape(-1) if scored else np.ones(len(labels))
    return [
        {
            "image_id": image_id,
            "category_id": int(labels[k]),
            "segmentation": rles[k],
            "area": float(mask_utils.area(rles[k])),
            "bbox": boxes[k],
            "iscrowd": 0,
            "score": float(scores[k]),
        }
        for k in range(len(labels))
    ]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence pycocotools' progress prints. Redirecting stdout is not enough: under Prefect's
    `log_prints` the builtin `print` itself is replaced and sends the text to the run's log,
    so the modules' own `print` is shadowed for the duration."""
    modules = (coco_module, cocoeval_module)
    saved = [module.__dict__.get("print") for module in modules]
    for module in modules:
        module.print = lambda *args, **kwargs: None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for module, previous in zip(modules, saved, strict=True):
            if previous is None:
                del module.print
            else:
                module.print = previous


def _coco(images: list[dict], categories: list[int], anns: list[dict]) -> COCO:
    """An in-memory COCO object (annotation ids from 1: pycocotools treats id 0 as unmatched)."""
    coco = COCO()
    for i, ann in enumerate(anns, 1):
        ann["id"] = i
    coco.dataset = {
        "images": images,
        "categories": [{"id": c, "name": str(c)} for c in categories],
        "annotations": anns,
    }
    with _quiet():
        coco.createIndex()
    return coco


def coco_pair(
    predictions: Sequence[Instances], targets: Sequence[Instances], mask_threshold: float = 0.5
) -> tuple[COCO, COCO]:
    """In-memory (ground truth, detections) COCO objects; image ids are list positions."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    images, gt, dt = [], [], []
    for i, (pred, target) in enumerate(zip(predictions, targets, strict=True)):
        height, width = _binary_masks(target["masks"], 0.5).shape[-2:]
        images.append({"id": i, "height": int(height), "width": int(width)})
        gt += _annotations(i, target, 0.5, scored=False)
        dt += _annotations(i, pred, mask_threshold, scored=True)
    categories = sorted({a["category_id"] for a in gt + dt})
    for ann in gt:
        ann.pop("score")
    return _coco(images, categories, gt), _coco(images, categories, dt)


def _evaluate(pair: tuple[COCO, COCO], iou_type: str, image_ids: list[int] | None = None):
    """A COCOeval of `pair`, evaluated and accumulated (on `image_ids` only, when given)."""
    evaluator = COCOeval(pair[0], pair[1], iou_type)
    if image_ids is not None:
        evaluator.params.imgIds = image_ids
    with _quiet():
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else float("nan")


def _all_areas(evaluator: COCOeval) -> tuple[np.ndarray, np.ndarray]:
    """Precision [T, R, K] and recall [T, K] over all areas at 100 detections per image."""
    params = evaluator.params
    area, dets = params.areaRngLbl.index("all"), params.maxDets.index(100)
    return (
        evaluator.eval["precision"][:, :, :, area, dets],
        evaluator.eval["recall"][:, :, area, dets],
    )


def _summary(evaluator: COCOeval) -> dict[str, float]:
    """AP (IoU .50:.95), AP50, AP75 and AR (100 detections), all areas, as in `summarize()`."""
    precision, recall = _all_areas(evaluator)
    thresholds = evaluator.params.iouThrs
    at = {thr: int(np.argmin(np.abs(thresholds - thr))) for thr in (0.5, 0.75)}
    return {
        "AP": _mean_defined(precision),
        "AP50": _mean_defined(precision[at[0.5]]),
        "AP75": _mean_defined(precision[at[0.75]]),
        "AR": _mean_defined(recall),
    }


def coco_mask_metrics(
    predictions: Sequence[Instances],
    targets: Sequence[Instances],
    iou_type: str = "segm",
    mask_threshold: float = 0.5,
) -> dict[str, float]:
    """COCO `AP`, `AP50`, `AP75` and `AR` (AR@100) over all images, computed by pycocotools'
    COCOeval; `iou_type` "segm" matches masks, "bbox" boxes. NaN when there is no ground truth."""
    return _summary(_evaluate(coco_pair(predictions, targets, mask_threshold), iou_type))


def per_class_mask_ap(
    predictions: Sequence[Instances],
    targets: Sequence[Instances],
    iou_type: str = "segm",
    mask_threshold: float = 0.5,
) -> dict[int, float]:
    """Each category's COCO AP (IoU .50:.95, all areas, 100 detections), keyed by class id;
    NaN for a category without ground truth. Read from the same COCOeval as `AP`."""
    evaluator = _evaluate(coco_pair(predictions, targets, mask_threshold), iou_type)
    precision = _all_areas(evaluator)[0]
    return {
        int(cat): _mean_defined(precision[:, :, k]) for k, cat in enumerate(evaluator.params.catIds)
    }


def per_image_mask_ap(
    predictions: Sequence[Instances],
    targets: Sequence[Instances],
    iou_type: str = "segm",
    mask_threshold: float = 0.5,
) -> dict[int, float]:
    """Each image's own COCO AP (IoU .50:.95), keyed by its position; NaN for an image without
    ground truth. One COCOeval restricted to each image (`params.imgIds = [id]`) in turn."""
    pair = coco_pair(predictions, targets, mask_threshold)
    return {i: _summary(_evaluate(pair, iou_type, [i]))["AP"] for i in range(len(targets))}


def semantic_from_instances(
    pred: Instances,
    num_classes: int,
    height: int,
    width: int,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """An [H,W] int64 class map (0 background) painted from the instances scoring at least
    `score_threshold`, higher scores on top; without `scores`, later instances go on top."""
    out = np.zeros((height, width), np.int64)
    labels = _np(pred["labels"]).reshape(-1).astype(np.int64)
    if labels.size == 0:
        return out
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"instance labels must be in 0..{num_classes - 1}, got {labels.max()}")
    scores = _np(pred["scores"]).reshape(-1) if "scores" in pred else np.ones(labels.size)
    masks = _binary_masks(pred["masks"], mask_threshold).astype(bool)
    for k in np.argsort(scores, kind="stable"):
        if scores[k] >= score_threshold:
            out[masks[k]] = labels[k]
    return out

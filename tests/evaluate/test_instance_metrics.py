"""COCO mask metrics (pycocotools) and semantic maps painted from instances."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segops.metrics.confusion import ConfusionMatrix
from segops.metrics.instance import (
    coco_mask_metrics,
    per_image_mask_ap,
    semantic_from_instances,
)
from segops.metrics.semantic import iou

H = W = 48


def _rect(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[y0 : y0 + h, x0 : x0 + w] = 1
    return mask


def _targets() -> list[dict]:
    """Three images: two objects, one object, two objects of different classes."""
    layouts = [
        [((4, 4, 16, 16), 1), ((26, 24, 14, 18), 2)],
        [((10, 10, 20, 12), 1)],
        [((2, 30, 12, 12), 2), ((20, 2, 18, 20), 1)],
    ]
    return [
        {
            "masks": np.stack([_rect(*box) for box, _ in objs]),
            "labels": np.array([c for _, c in objs], np.int64),
        }
        for objs in layouts
    ]


def _perfect(targets: list[dict]) -> list[dict]:
    """Torchvision-style predictions equal to the truth: float [N,1,H,W] masks, score 1."""
    return [
        {
            "masks": torch.from_numpy(t["masks"]).float()[:, None],
            "labels": torch.from_numpy(t["labels"]),
            "scores": torch.ones(len(t["labels"])),
        }
        for t in targets
    ]


def _shifted(targets: list[dict], dy: int, dx: int) -> list[dict]:
    preds = _perfect(targets)
    for p in preds:
        p["masks"] = torch.roll(p["masks"], shifts=(dy, dx), dims=(2, 3))
    return preds


def test_perfect_predictions_score_one():
    targets = _targets()
    metrics = coco_mask_metrics(_perfect(targets), targets)
    assert metrics == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR": 1.0})
    assert per_image_mask_ap(_perfect(targets), targets) == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0})


def test_shifted_masks_score_less_and_ap75_below_ap50():
    targets = _targets()
    metrics = coco_mask_metrics(_shifted(targets, 3, 3), targets)
    assert metrics["AP"] < 1.0
    assert metrics["AP75"] < metrics["AP50"]
    bigger = coco_mask_metrics(_shifted(targets, 6, 6), targets)
    assert bigger["AP"] < metrics["AP"]
    assert all(v < 1.0 for v in per_image_mask_ap(_shifted(targets, 3, 3), targets).values())


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _library_stats(predictions: list[dict], targets: list[dict]) -> np.ndarray:
    """pycocotools used directly, the documented way: a ground-truth COCO, loadRes on a results
    list, evaluate, accumulate, summarize."""
    anns = []
    for i, t in enumerate(targets):
        for m, c in zip(t["masks"], t["labels"], strict=True):
            anns.append(
                {"id": len(anns) + 1, "image_id": i, "category_id": int(c), "iscrowd": 0,
                 "segmentation": _rle(m), "area": float(m.sum()), "bbox": [0, 0, 1, 1]}
            )  # fmt: skip
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "height": H, "width": W} for i in range(len(targets))],
        "categories": [{"id": 1}, {"id": 2}],
        "annotations": anns,
    }
    results = [
        {"image_id": i, "category_id": int(c), "segmentation": _rle(m[0].numpy() > 0.5),
         "score": float(s)}
        for i, p in enumerate(predictions)
        for m, c, s in zip(p["masks"], p["labels"], p["scores"], strict=True)
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_matches_pycocotools_summarize():
    targets = _targets()
    preds = _shifted(targets, 2, 1)
    preds[0]["scores"] = torch.tensor([0.9, 0.3])
    extra = torch.from_numpy(_rect(30, 30, 10, 10)).float()[None, None]  # a false positive
    preds[1] = {
        "masks": torch.cat([preds[1]["masks"], extra]),
        "labels": torch.tensor([1, 1]),
        "scores": torch.tensor([0.6, 0.8]),
    }
    stats = _library_stats(preds, targets)
    metrics = coco_mask_metrics(preds, targets)
    assert metrics["AP"] == pytest.approx(stats[0])
    assert metrics["AP50"] == pytest.approx(stats[1])
    assert metrics["AP75"] == pytest.approx(stats[2])
    assert metrics["AR"] == pytest.approx(stats[8])  # AR@100, all areas


def test_image_without_predictions_scores_zero():
    targets = _targets()
    preds = _perfect(targets)
    preds[1] = {
        "masks": torch.zeros(0, 1, H, W),
        "labels": torch.zeros(0),
        "scores": torch.zeros(0),
    }
    per_image = per_image_mask_ap(preds, targets)
    assert per_image == pytest.approx({0: 1.0, 1: 0.0, 2: 1.0})
    assert coco_mask_metrics(preds, targets)["AR"] < 1.0


def test_no_predictions_at_all():
    targets = _targets()
    empty = [{"masks": np.zeros((0, H, W)), "labels": [], "scores": []} for _ in targets]
    assert coco_mask_metrics(empty, targets) == pytest.approx(
        {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR": 0.0}
    )


def test_empty_ground_truth_is_undefined():
    targets = _targets()
    targets[2] = {"masks": np.zeros((0, H, W), np.uint8), "labels": np.zeros(0, np.int64)}
    preds = _perfect(_targets())  # image 2 has two false positives, scored above the rest
    for pred in preds[:2]:
        pred["scores"] = pred["scores"] * 0.5
    per_image = per_image_mask_ap(preds, targets)
    assert math.isnan(per_image[2]) and per_image[0] == pytest.approx(1.0)
    assert coco_mask_metrics(preds, targets)["AP"] < 1.0  # its false positives still count
    no_truth = [{"masks": np.zeros((0, H, W)), "labels": []}] * 2
    assert all(math.isnan(v) for v in coco_mask_metrics(preds[:2], no_truth).values())


def test_bbox_iou_type_uses_boxes():
    targets = _targets()
    preds = _perfect(targets)
    assert coco_mask_metrics(preds, targets, iou_type="bbox")["AP"] == pytest.approx(1.0)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions for 3 targets"):
        coco_mask_metrics(_perfect(_targets())[:2], _targets())


def test_semantic_from_instances_paints_higher_scores_on_top():
    pred = {
        "masks": torch.from_numpy(np.stack([_rect(0, 0, 20, 20), _rect(10, 10, 20, 20)]))[:, None]
        * 0.9,
        "labels": torch.tensor([1, 2]),
        "scores": torch.tensor([0.95, 0.7]),
    }
    out = semantic_from_instances(pred, 3, H, W)
    assert out.dtype == np.int64 and out.shape == (H, W)
    assert out[15, 15] == 1 and out[25, 25] == 2 and out[40, 40] == 0
    assert (semantic_from_instances(pred, 3, H, W, score_threshold=0.8) == 2).sum() == 0
    with pytest.raises(ValueError, match="labels"):
        semantic_from_instances(pred, 2, H, W)


def test_semantic_metrics_from_perfect_instances():
    targets = _targets()
    matrix = ConfusionMatrix(3)
    for pred, target in zip(_perfect(targets), targets, strict=True):
        painted = semantic_from_instances(pred, 3, H, W)
        truth = semantic_from_instances(target, 3, H, W, score_threshold=0)
        matrix.update(torch.from_numpy(painted)[None], torch.from_numpy(truth)[None])
    assert np.allclose(iou(matrix.compute()), 1.0)

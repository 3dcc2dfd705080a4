import numpy as np
import pytest
import torch

from segops.metrics import semantic as M
from segops.metrics.confusion import ConfusionMatrix, batch_confusion

# 3 classes; rows truth, columns prediction; class 2 is absent from truth and prediction.
HAND = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])


def test_hand_computed_matrix():
    np.testing.assert_allclose(M.iou(HAND)[:2], [5 / 8, 4 / 7])
    np.testing.assert_allclose(M.dice(HAND)[:2], [10 / 13, 8 / 11])
    np.testing.assert_allclose(M.precision(HAND)[:2], [5 / 7, 4 / 5])
    np.testing.assert_allclose(M.recall(HAND)[:2], [5 / 6, 4 / 6])
    np.testing.assert_allclose(M.f1(HAND)[:2], M.dice(HAND)[:2])
    assert M.pixel_accuracy(HAND) == pytest.approx(9 / 12)
    assert np.isnan(M.iou(HAND)[2])  # absent: excluded, not counted as 0 or 1
    summary = M.summarize(HAND, ["bg", "a", "gone"])
    assert summary["mean_iou"] == pytest.approx((5 / 8 + 4 / 7) / 2, abs=1e-6)
    assert summary["absent_classes"] == ["gone"] and summary["per_class"]["gone"]["iou"] is None


def test_present_but_never_predicted_scores_zero():
    mat = np.array([[3, 2], [0, 0]])  # class 1 predicted twice, never true
    assert M.recall(mat)[1] == 0.0 and M.iou(mat)[1] == 0.0 and M.precision(mat)[1] == 0.0
    assert M.nanmean(np.array([np.nan, np.nan])) != M.nanmean(np.array([np.nan, np.nan]))


def test_confusion_matrix_counts_and_ignore():
    target = torch.tensor([[[0, 1, 255], [2, 2, 1]]])
    pred = torch.tensor([[[0, 2, 1], [2, 0, 1]]])
    cm = ConfusionMatrix(3)
    per_image = cm.update(pred, target)
    expected = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(cm.compute(), expected)
    np.testing.assert_array_equal(per_image[0].numpy(), expected)


def _reference(pred, target, c, ignore=255):
    """Independent per-class metrics: boolean masks, one class at a time."""
    keep = target != ignore
    out = {}
    for k in range(c):
        t, p = (target == k) & keep, (pred == k) & keep
        tp, fp, fn = (t & p).sum(), (~t & p).sum(), (t & ~p).sum()
        present = tp + fp + fn > 0
        out.setdefault("iou", []).append(tp / (tp + fp + fn) if present else np.nan)
        out.setdefault("dice", []).append(2 * tp / (2 * tp + fp + fn) if present else np.nan)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        out.setdefault("precision", []).append(prec if present else np.nan)
        out.setdefault("recall", []).append(rec if present else np.nan)
    out["pixel_accuracy"] = ((pred == target) & keep).sum() / keep.sum()
    return out


@pytest.mark.parametrize("seed", range(5))
def test_against_independent_implementation_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 7))
    target = rng.integers(0, c, (4, 9, 11))
    target[rng.random(target.shape) < 0.1] = 255  # ignore pixels
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, c, target.shape))
    pred[pred == 255] = 0
    cm = ConfusionMatrix(c)
    for i in range(0, 4, 2):  # two batches accumulate
        cm.update(torch.from_numpy(pred[i : i + 2]), torch.from_numpy(target[i : i + 2]))
    mat, ref = cm.compute(), _reference(pred, target, c)
    for name in ("iou", "dice", "precision", "recall"):
        np.testing.assert_allclose(M.PER_CLASS[name](mat), ref[name], err_msg=name)
    assert M.pixel_accuracy(mat) == pytest.approx(ref["pixel_accuracy"])


def test_per_image_scores():
    target = torch.tensor([[[0, 0], [1, 1]], [[0, 0], [0, 0]]])
    pred = torch.tensor([[[0, 0], [1, 0]], [[0, 0], [0, 0]]])
    ious, dices = M.per_image_scores(batch_confusion(pred, target, 3).numpy())
    np.testing.assert_allclose(ious, [(2 / 3 + 1 / 2) / 2, 1.0])
    np.testing.assert_allclose(dices, [(4 / 5 + 2 / 3) / 2, 1.0])

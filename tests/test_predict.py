"""Batch prediction: sliding-window inference for large images, masks, overlays, summary."""

import csv

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from segops.inference import (
    load_trained,
    predict_image,
    sliding_probs,
    window_starts,
    with_tiles,
)
from segops.predict import predict_local
from segops.train.loop import train


@pytest.fixture(scope="module")
def model(shapes_root, tmp_path_factory):
    """A tiny U-Net trained on 32x32 shapes."""
    cfg = tiny_config(shapes_root, tmp_path_factory.mktemp("run"))
    train(cfg)
    return load_trained(f"{cfg.train.out_dir}/checkpoints/best.pt")


@pytest.mark.parametrize(
    ("length", "window", "stride", "expected"),
    [
        (20, 32, 16, [0]),  # smaller than a window: one (padded) window
        (32, 32, 16, [0]),
        (64, 32, 16, [0, 16, 32]),
        (70, 32, 16, [0, 16, 32, 38]),  # the last window ends exactly at the edge
        (64, 32, 32, [0, 32]),
    ],
)
def test_window_starts_cover_the_image(length, window, stride, expected):
    assert window_starts(length, window, stride) == expected


def _sample(shapes_root, i: int) -> np.ndarray:
    return np.array(Image.open(sorted((shapes_root / "images").glob("*.png"))[i]).convert("RGB"))


def test_sliding_without_overlap_equals_predicting_each_tile(model, shapes_root):
    tiles = [_sample(shapes_root, i) for i in range(4)]  # 32x32 each: the model's input size
    big = np.concatenate(
        [np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0
    )
    probs = sliding_probs(with_tiles(model, 0), big, overlap=0.0)  # windows of the input size
    assert probs.shape == (5, 64, 64)
    for k, (i, j) in enumerate([(0, 0), (0, 32), (32, 0), (32, 32)]):
        _, alone = predict_image(model, tiles[k], sliding=False)
        assert torch.allclose(probs[:, i : i + 32, j : j + 32], torch.from_numpy(alone), atol=1e-5)


def test_sliding_with_overlap_averages_to_probabilities_at_original_size(model, shapes_root):
    big = np.tile(_sample(shapes_root, 0), (3, 3, 1))[:90, :70]  # 90x70: tiled automatically
    mask, probs = predict_image(model, big)
    assert mask.shape == (90, 70) and probs.shape == (5, 90, 70)
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5)
    small = _sample(shapes_root, 1)[:20, :24]  # smaller than a window: padded, then cropped
    assert sliding_probs(model, small).shape == (5, 20, 24)


def test_predict_local_writes_masks_overlays_and_a_summary(model, shapes_root, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_sample(shapes_root, 2)).save(src / "small.png")
    Image.fromarray(np.tile(_sample(shapes_root, 3), (4, 4, 1))).save(src / "large.png")
    summary = predict_local(model, src, tmp_path / "out")
    assert (summary.scored, summary.errors, summary.out) == (2, 0, str(tmp_path / "out"))
    with open(summary.summary_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == ["large.png", "small.png"]
    assert [r["tiled"] for r in rows] == ["True", "False"]
    assert rows[0]["width"] == "128" and rows[0]["height"] == "128"
    for row in rows:
        fractions = [float(v) for k, v in row.items() if k.startswith("frac_")]
        assert len(fractions) == 5 and sum(fractions) == pytest.approx(1.0, abs=1e-5)
    mask = np.asarray(Image.open(tmp_path / "out" / "large_mask.png"))
    assert mask.shape == (128, 128) and mask.max() < 5
    assert Image.open(tmp_path / "out" / "large_overlay.png").size == (128, 128)

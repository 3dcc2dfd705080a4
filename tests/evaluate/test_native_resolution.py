"""Metrics at the original resolution, whatever size the model sees; native-resolution
training with random crops (`data.crop_size`) and sliding-window inference of that side."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_sample

from segops.config import AugmentConfig
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import load_dataset
from segops.data.transforms import eval_transform, to_tv, train_transform
from segops.evaluate.report import evaluate_model
from segops.inference import load_trained, predict_image
from segops.promotion.gate import scores_from_files
from segops.train.loop import train


@pytest.fixture(scope="module")
def large_images(tmp_path_factory):
    """12 samples of 72x56 (larger than the 32-px model input), 2 classes, 3 val."""
    root = tmp_path_factory.mktemp("large") / "cells"
    rng = np.random.default_rng(1)
    for i in range(12):
        mask = np.zeros((56, 72), np.uint8)
        y, x = rng.integers(2, 40), rng.integers(2, 56)
        mask[y : y + 12, x : x + 12] = 1
        image = rng.integers(0, 80, (56, 72, 3), dtype=np.uint8)
        image[mask == 1] += 160
        write_sample(root, f"c{i:02d}", image, mask)
    (root / "classes.txt").write_text("background\ncell\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("".join(f"c{i:02d}\n" for i in range(9)))
    (root / "splits" / "val.txt").write_text("".join(f"c{i:02d}\n" for i in range(9, 12)))
    return root


def _train(root, out, *extra):
    cfg = tiny_config(root, out, "train.epochs=1", "train.deterministic=true", *extra)
    return cfg, train(cfg)


def test_crop_transform_keeps_native_scale_and_pads_small_images_with_ignore():
    aug = AugmentConfig(hflip=0, vflip=0, color_jitter=0)
    image = np.full((20, 24, 3), 200, dtype=np.uint8)
    mask = np.ones((20, 24), dtype=np.uint8)
    out_img, out_mask = train_transform(aug, 64, crop=32)(*to_tv(image, mask))
    assert tuple(out_img.shape) == (3, 32, 32) and tuple(out_mask.shape) == (32, 32)
    assert int((out_mask == 1).sum()) == 20 * 24  # nothing resized: every pixel kept once
    assert int((out_mask == 255).sum()) == 32 * 32 - 20 * 24  # padding is ignored
    native = eval_transform(aug, 64, native=True)(to_tv(image)[0])
    assert tuple(native.shape) == (3, 20, 24)


def test_metrics_count_every_original_pixel_whatever_the_input_size(large_images, tmp_path):
    cfg, result = _train(large_images, tmp_path / "run")  # image_size 32: resized input
    trained = load_trained(result.best_checkpoint)
    report = evaluate_model(trained, cfg, "val", tmp_path / "eval")
    matrix = np.loadtxt(
        tmp_path / "eval" / "confusion_matrix.csv", delimiter=",", skiprows=1, usecols=(1, 2)
    )
    assert matrix.sum() == 3 * 56 * 72  # scored on the 72x56 masks, not on 32x32 ones
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["protocol"]["resolution"] == "original"
    # the figure is the one predict_image (segops predict, the served model) gives
    info = load_dataset(cfg.data, eval_split="val")
    inter = union = 0
    ds = SegmentationDataset(info.root, info.split("val"))
    for i in range(len(ds)):
        image, truth = ds.load(i)
        pred, _ = predict_image(trained, image)
        inter += int(((pred == 1) & (truth == 1)).sum())
        union += int(((pred == 1) | (truth == 1)).sum())
    assert report.metrics_json and metrics["per_class"]["cell"]["iou"] == pytest.approx(
        inter / union, abs=1e-6
    )


def test_native_training_crops_and_predicts_at_native_scale(large_images, tmp_path):
    cfg, result = _train(large_images, tmp_path / "run", "data.crop_size=32")
    trained = load_trained(result.best_checkpoint)
    assert trained.input_size == 32 and trained.config.data.crop_size == 32
    calls = []
    hook = trained.model.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    image = np.zeros((56, 72, 3), np.uint8)
    mask, probs = predict_image(trained, image)
    hook.remove()
    assert mask.shape == (56, 72) and probs.shape == (2, 56, 72)
    assert calls == [(1, 3, 64, 96)]  # native scale: the whole image, padded to 32s, one tile
    evaluate_model(trained, cfg, "val", tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["protocol"].pop("threads") == torch.get_num_threads()  # predict.threads
    assert "whole image" in metrics["protocol"].pop("tiling")
    assert metrics["protocol"] == {
        "resolution": "original",
        "inference": "sliding",
        "input_size": 32,
        "overlap": 0.5,
        "max_tile": 1024,
    }


def test_a_champion_scored_at_model_input_size_or_in_small_windows_is_not_compared_as_is(tmp_path):
    metrics = {"dataset_hash": "abc", "mean_iou": 0.5, "per_class": {"a": {"iou": 0.5}}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "per_image.csv").write_text("id,iou\nx,0.5\n")
    old = scores_from_files(tmp_path / "metrics.json", tmp_path / "per_image.csv")
    assert old.data_version != "abc"  # so the gate re-evaluates that champion
    metrics["protocol"] = {"resolution": "original"}  # windows of the input size, then
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    windows = scores_from_files(tmp_path / "metrics.json", tmp_path / "per_image.csv")
    assert windows.data_version not in ("abc", old.data_version)
    metrics["protocol"] |= {"max_tile": 1024, "tiling": "the whole image ..."}  # today's
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    new = scores_from_files(tmp_path / "metrics.json", tmp_path / "per_image.csv")
    assert new.data_version == "abc"
    metrics |= {"kind": "instance", "protocol": {"resolution": "original"}}  # no tiles
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    instance = scores_from_files(tmp_path / "metrics.json", tmp_path / "per_image.csv", "mean_iou")
    assert instance.data_version == "abc"

"""Mask R-CNN trains a few steps on tiny instance data on the CPU (weights never downloaded)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_config
from torch.utils.data import Dataset

from segops.errors import ConfigError
from segops.train.callbacks import Callback
from segops.train.checkpoint import load_checkpoint
from segops.train.instance import (
    build_instance_model,
    build_optimizer,
    collate,
    evaluate_instance,
    train_instance,
)

SIZE = 64
CLASSES = ["background", "square", "disc"]


class TinyInstances(Dataset):
    """`n` 64x64 images with 1-3 bright squares/discs on noise, targets like coco.py's."""

    classes = CLASSES

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.samples = [self._sample(rng) for _ in range(n)]

    @staticmethod
    def _sample(rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        image = rng.uniform(0, 0.3, (3, SIZE, SIZE)).astype(np.float32)
        yy, xx = np.mgrid[:SIZE, :SIZE]
        masks, labels = [], []
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(12, 52), rng.integers(12, 52), rng.integers(6, 12)
            label = int(rng.integers(1, 3))
            if label == 1:
                mask = (abs(yy - cy) < r) & (abs(xx - cx) < r)
            else:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            image[:, mask] = rng.uniform(0.6, 1.0, (3, 1))
            masks.append(mask.astype(np.uint8))
            labels.append(label)
        boxes = [
            [np.flatnonzero(m.any(0))[0], np.flatnonzero(m.any(1))[0],
             np.flatnonzero(m.any(0))[-1] + 1, np.flatnonzero(m.any(1))[-1] + 1]
            for m in masks
        ]  # fmt: skip
        target = {
            "boxes": np.array(boxes, np.float32),
            "labels": np.array(labels, np.int64),
            "masks": np.stack(masks),
        }
        return torch.from_numpy(image), target

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        return self.samples[i]


class Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        self.losses.append(loss)


def _config(root, out, *extra):
    return tiny_config(
        root, out, "model.name=maskrcnn_resnet50_fpn", "data.image_size=64",
        "model.options={min_size: 64, max_size: 64, trainable_backbone_layers: 0}",
        "train.batch_size=2", "train.lr=0.0005", "train.warmup_epochs=0", "train.device=cpu",
        "evaluate.batch_size=2", "train.threads=2", *extra,
    )  # fmt: skip


def test_collate_keeps_lists():
    images, targets = collate([TinyInstances(2)[0], TinyInstances(2)[1]])
    assert len(images) == len(targets) == 2 and "masks" in targets[0]


@pytest.mark.slow
def test_maskrcnn_trains_checkpoints_and_evaluates(tmp_path):
    cfg = _config(tmp_path / "unused", tmp_path / "run", "train.epochs=2")
    losses = Losses()
    result = train_instance(cfg, TinyInstances(4), TinyInstances(2, seed=1), callbacks=[losses])
    assert len(losses.losses) == 4 and all(math.isfinite(x) for x in losses.losses)
    assert result.epochs_run == 2 and result.best_epoch in (1, 2)
    ckpt = load_checkpoint(result.last_checkpoint)  # verifies the sha256; weights_only=True
    assert torch.load(result.best_checkpoint, weights_only=True)["classes"] == CLASSES
    assert ckpt["kind"] == "instance" and ckpt["state"]["epoch"] == 2
    assert ckpt["config"]["model"]["name"] == "maskrcnn_resnet50_fpn"
    history = (tmp_path / "run" / "history.csv").read_text()
    assert "val_AP" in history and "val_miou" in history

    model = build_instance_model(cfg, len(CLASSES))
    model.load_state_dict(ckpt["model"])
    metrics = evaluate_instance(model, TinyInstances(2, seed=1), CLASSES)
    assert {"AP", "AP50", "AP75", "AR", "mean_iou", "pixel_accuracy", "semantic"} <= set(metrics)
    assert set(metrics["per_image_ap"]) == {0, 1}
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("AP", "AP50", "AP75", "AR"))


@pytest.mark.slow
def test_loss_decreases_on_a_repeated_batch(tmp_path):
    """A few optimiser steps on the same two images lower the summed loss."""
    cfg = _config(tmp_path / "unused", tmp_path / "run", "train.epochs=4", "train.lr=0.0001")
    losses = Losses()
    data = TinyInstances(2)
    train_instance(cfg, data, TinyInstances(1, seed=1), callbacks=[losses])
    assert len(losses.losses) == 4 and losses.losses[-1] < losses.losses[0]


def test_optimizer_choice_and_class_names(tmp_path):
    cfg = _config(tmp_path, tmp_path / "run")
    layer = torch.nn.Linear(2, 2)
    assert isinstance(build_optimizer(layer, cfg, "sgd"), torch.optim.SGD)
    assert isinstance(build_optimizer(layer, cfg), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="adamw or sgd"):
        build_optimizer(layer, cfg, "adam")
    with pytest.raises(ConfigError, match="class names"):
        train_instance(cfg, [], [], classes=["background"])


@pytest.mark.slow
def test_resume_after_a_crash_gives_identical_weights(tmp_path):
    """An interrupted instance run resumed from last.pt ends exactly like an uninterrupted
    one (what a retried flow step relies on); a checkpoint of other data is refused."""
    import pandas as pd
    from train.test_loop import Crash

    from segops.errors import CheckpointError

    train_data, val_data = TinyInstances(4), TinyInstances(2, seed=1)
    straight = _config(tmp_path, tmp_path / "straight", "train.epochs=2")
    train_instance(straight, train_data, val_data, dataset_hash="d")
    crashed = _config(tmp_path, tmp_path / "crashed", "train.epochs=2")
    with pytest.raises(KeyboardInterrupt):
        train_instance(crashed, train_data, val_data, callbacks=[Crash(after=1)], dataset_hash="d")
    started = []

    class Start(Callback):
        def on_train_start(self, info: dict) -> None:
            started.append(info["start_epoch"])

    train_instance(
        crashed, train_data, val_data, callbacks=[Start()], resume=True, dataset_hash="d"
    )
    assert started == [2]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "crashed" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = ["seconds", "images_per_s"]
    history_a = pd.read_csv(tmp_path / "straight" / "history.csv").drop(columns=drop)
    history_b = pd.read_csv(tmp_path / "crashed" / "history.csv").drop(columns=drop)
    pd.testing.assert_frame_equal(history_a, history_b)
    with pytest.raises(CheckpointError, match="different dataset"):
        train_instance(crashed, train_data, val_data, resume=True, dataset_hash="other")

"""The semantic task for `segops.train.fit.fit`: a per-pixel classifier (U-Net and friends)
trained with `train.loss` on the dataset's train split and validated by mean IoU on its val
split. Its history rows hold `val_loss`, `val_miou` (the score that picks best.pt) and
`val_pixel_acc`. Under torchrun each rank validates whole batches of the val split and the
confusion matrix is summed over ranks: the metrics equal one process's exactly."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from segops.config import Config, config_hash
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import DatasetInfo, dataset_fingerprint
from segops.data.transforms import eval_transform, train_transform
from segops.metrics.confusion import ConfusionMatrix
from segops.metrics.semantic import iou, nanmean, pixel_accuracy
from segops.models import require_semantic
from segops.train.device import Runtime, autocast
from segops.train.distributed import (
    SINGLE,
    World,
    all_reduce_sum,
    gather_objects,
    ordered,
    shard_batches,
    train_loader,
)
from segops.train.fit import Setup
from segops.train.parts import build_parts


def make_loaders(
    cfg: Config, info: DatasetInfo, runtime: Runtime, world: World = SINGLE
) -> tuple[DataLoader, ...]:
    """Training loader (shuffled by a generator reseeded each epoch) and validation loader, of
    this rank's share under torchrun (`segops.train.distributed`).

    With `data.crop_size` both work at native resolution (or resized by `data.scale`): random
    crops for training, whole images one at a time for validation (their sizes may differ)."""
    size, crop, scale = cfg.data.image_size, cfg.data.crop_size, cfg.data.scale
    train_ds = SegmentationDataset(
        info.root,
        info.split("train"),
        train_transform(cfg.augment, size, crop, scale),
        cfg.data.cache,
    )
    val_ds = SegmentationDataset(
        info.root,
        info.split("val"),
        eval_transform(cfg.augment, size, native=crop is not None, scale=scale),
        cfg.data.cache,
    )
    val_batch = cfg.evaluate.batch_size if crop is None else 1
    common = {
        "num_workers": cfg.data.num_workers,
        "pin_memory": runtime.pin_memory,
        "persistent_workers": cfg.data.num_workers > 0,
    }
    generator, batch = torch.Generator(), cfg.train.batch_size
    drop = len(train_ds) > batch
    train = train_loader(train_ds, batch, generator, world, drop_last=drop, **common)
    if not world.distributed:
        return train, DataLoader(val_ds, val_batch, shuffle=False, **common), generator
    shard = shard_batches(len(val_ds), val_batch, world)
    return train, DataLoader(val_ds, batch_sampler=shard, **common), generator


def _to_device(images: torch.Tensor, masks: torch.Tensor, runtime: Runtime) -> tuple:
    fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
    images = images.to(runtime.device, non_blocking=True, memory_format=fmt)
    return images, masks.to(runtime.device, non_blocking=True)


def pixel_loss(criterion: nn.Module, model: nn.Module, batch: tuple, runtime: Runtime) -> tuple:
    """(`criterion` of the model's logits [B,C,H,W] against masks [B,H,W], images in batch)."""
    images, masks = _to_device(*batch, runtime)
    with autocast(runtime):
        return criterion(model(images), masks), images.shape[0]


@torch.inference_mode()
def validate(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    runtime: Runtime,
    num_classes: int,
    world: World = SINGLE,
) -> dict[str, float]:
    """Validation loss, mean IoU and pixel accuracy over `loader` (over every rank's: the
    int64 confusion matrix summed, the batch losses added in single-process order)."""
    model.eval()
    matrix, losses, count = ConfusionMatrix(num_classes), [], 0
    for images, masks in loader:
        images, masks = _to_device(images, masks, runtime)
        with autocast(runtime):
            logits = model(images)
        losses.append(float(criterion(logits.float(), masks)) * images.shape[0])
        count += images.shape[0]
        matrix.update(logits.argmax(1), masks)
    counts = torch.from_numpy(matrix.compute())  # [C, C] int64; zeros on a rank with no batch
    mat = all_reduce_sum(counts, world).numpy()
    total = 0.0
    for value in ordered(gather_objects(losses, world)):
        total += value  # one process's order, so the sum is the same float
    count = sum(gather_objects(count, world))
    return {
        "loss": total / max(1, count),
        "miou": nanmean(iou(mat)),
        "pixel_acc": pixel_accuracy(mat),
    }


class SemanticTask:
    """A semantic `cfg.model` on the train and val splits of `info`."""

    score_key, state_key = "val_miou", "best_miou"

    def __init__(self, cfg: Config, info: DatasetInfo) -> None:
        require_semantic(cfg.model.name)
        self.cfg, self.info = cfg, info
        self.hashes = (config_hash(cfg), dataset_fingerprint(info))
        self.criterion: nn.Module | None = None  # set by build, like the validation loader
        self.val_loader: DataLoader | None = None

    def build(self, runtime: Runtime, epochs: int, world: World = SINGLE) -> Setup:
        train, self.val_loader, generator = make_loaders(self.cfg, self.info, runtime, world)
        parts = build_parts(self.cfg, self.info, runtime, len(train), epochs)
        self.criterion = parts.criterion
        optim = (parts.optimizer, parts.scheduler, parts.scaler)
        return Setup(parts.model, *optim, train, generator, len(self.val_loader.dataset))  # type: ignore[arg-type]

    def batch_loss(self, model: nn.Module, batch: tuple, runtime: Runtime) -> tuple:
        return pixel_loss(self.criterion, model, batch, runtime)

    def validate(self, model: nn.Module, runtime: Runtime, world: World = SINGLE) -> dict:
        classes = self.info.num_classes
        val = validate(model, self.val_loader, self.criterion, runtime, classes, world)
        return {"val_loss": val["loss"], "val_miou": val["miou"], "val_pixel_acc": val["pixel_acc"]}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"classes": list(self.info.classes)}

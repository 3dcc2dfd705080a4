"""The instance task for `segops.train.fit.fit`: a torchvision detection model (e.g. Mask R-CNN)
trained on the sum of its losses and validated by COCO mask AP (`val_AP`, the score that picks
best.pt), with `val_AP50`, `val_AP75`, `val_AR` and the mean IoU / pixel accuracy of the
painted masks (`val_miou`, `val_pixel_acc`) beside it; `val_loss` is NaN (detection models
give losses in train mode only).

Datasets are those of `segops.train.instance_eval`. Class names include the background
first, so the model gets `num_classes = len(classes)`. Checkpoints add `kind: "instance"`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from segops.config import Config, config_hash
from segops.data.instance_dataset import InstanceDataset, collate_instances, instance_transforms
from segops.data.manifest import DatasetInfo, dataset_fingerprint
from segops.errors import ConfigError
from segops.models import build_model
from segops.train.callbacks import Callback
from segops.train.device import Runtime, autocast
from segops.train.distributed import SINGLE, World, train_loader
from segops.train.fit import Setup, TrainResult, fit
from segops.train.instance_eval import evaluate_instance, predict_instances
from segops.train.schedule import build_scheduler

collate = collate_instances  # detection batches stay lists: (images, targets)
__all__ = ["InstanceTask", "collate", "evaluate_instance", "predict_instances", "train_instance"]
AP_KEYS = ("AP", "AP50", "AP75", "AR")


def build_optimizer(model: nn.Module, cfg: Config, kind: str = "adamw") -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9) over the trainable parameters, with `cfg.train` lr/decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr, decay = cfg.train.lr, cfg.train.weight_decay
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=decay)
    raise ConfigError(f"optimizer must be adamw or sgd, not {kind!r}")


def build_instance_model(cfg: Config, num_classes: int) -> nn.Module:
    """`cfg.model` built with `num_classes`; images resized to `data.image_size` by default."""
    options = {"min_size": cfg.data.image_size, **cfg.model.options}
    return build_model(
        cfg.model.name, num_classes=num_classes, pretrained=cfg.model.pretrained, **options
    )


def _classes(classes: list[str] | None, dataset: Dataset) -> list[str]:
    found = classes if classes is not None else getattr(dataset, "classes", None)
    if not found or len(found) < 2:
        raise ConfigError("instance training needs class names (background first): pass classes")
    return list(found)


def _to_device(images, targets, device: torch.device) -> tuple[list, list]:
    images = [torch.as_tensor(im).to(device) for im in images]
    targets = [{k: torch.as_tensor(v).to(device) for k, v in t.items()} for t in targets]
    return images, targets


class InstanceTask:
    """An instance `cfg.model` trained on `dataset_train` with `optimizer` ("adamw" or "sgd"),
    validated on `dataset_val`; `classes` default to `dataset_train.classes`; `dataset_hash`
    (the data's fingerprint) is stored in the checkpoints and checked on resume."""

    score_key, state_key = "val_AP", "best_ap"

    def __init__(
        self,
        cfg: Config,
        dataset_train: Dataset,
        dataset_val: Dataset,
        *,
        classes: list[str] | None = None,
        optimizer: str = "adamw",
        dataset_hash: str = "unknown",
    ) -> None:
        self.cfg, self.train_data, self.val_data = cfg, dataset_train, dataset_val
        self.classes, self.optimizer = _classes(classes, dataset_train), optimizer
        self.hashes = (config_hash(cfg), dataset_hash)

    def build(self, runtime: Runtime, epochs: int, world: World = SINGLE) -> Setup:
        cfg, generator = self.cfg, torch.Generator()
        loader = train_loader(
            self.train_data,
            cfg.train.batch_size,
            generator,
            world,
            collate_fn=collate,
            num_workers=cfg.data.num_workers,
            pin_memory=runtime.pin_memory,
        )
        model = build_instance_model(cfg, len(self.classes)).to(runtime.device)
        opt = build_optimizer(model, cfg, self.optimizer)
        total = len(loader) * epochs
        warmup = min(total - 1, round(len(loader) * cfg.train.warmup_epochs))
        scheduler = build_scheduler(opt, total, warmup, cfg.train.schedule)
        scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.use_scaler)
        return Setup(model, opt, scheduler, scaler, loader, generator, len(self.val_data))

    def batch_loss(self, model: nn.Module, batch: tuple, runtime: Runtime) -> tuple:
        """(sum of the model's losses, images in the batch)."""
        images, targets = _to_device(*batch, runtime.device)
        with autocast(runtime):
            return sum(model(images, targets).values()), len(images)

    def validate(self, model: nn.Module, runtime: Runtime, world: World = SINGLE) -> dict:
        batch, device = self.cfg.evaluate.batch_size, runtime.device
        val = evaluate_instance(
            model, self.val_data, self.classes, device=device, batch_size=batch, world=world
        )
        return {
            "val_loss": math.nan,  # detection models give losses in train mode only
            **{f"val_{k}": val[k] for k in AP_KEYS},
            "val_miou": val["mean_iou"],
            "val_pixel_acc": val["pixel_accuracy"],
        }

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "kind": "instance"}


def instance_task(cfg: Config, info: DatasetInfo) -> InstanceTask:
    """The task over `info`'s instance targets (`data.format` with instances): train split
    flipped when `augment.hflip` > 0, val split as is."""
    flip = instance_transforms(cfg.augment.hflip) if cfg.augment.hflip > 0 else None
    train = InstanceDataset(info.split("train"), root=info.root, transforms=flip)
    val = InstanceDataset(info.split("val"), root=info.root)
    return InstanceTask(
        cfg, train, val, classes=list(info.classes), dataset_hash=dataset_fingerprint(info)
    )


def train_instance(
    cfg: Config,
    dataset_train: Dataset,
    dataset_val: Dataset,
    out_dir: str | Path | None = None,
    epochs: int | None = None,
    callbacks: list[Callback] | tuple = (),
    *,
    classes: list[str] | None = None,
    optimizer: str = "adamw",
    dataset_hash: str = "unknown",
    resume: bool = False,
) -> TrainResult:
    """Train instance `cfg.model` through `fit` (see `InstanceTask` for the arguments) for
    `epochs` (default `cfg.train.epochs`) into `out_dir` (default `cfg.train.out_dir`)."""
    task = InstanceTask(
        cfg,
        dataset_train,
        dataset_val,
        classes=classes,
        optimizer=optimizer,
        dataset_hash=dataset_hash,
    )
    return fit(cfg, task, resume=resume, callbacks=callbacks, out_dir=out_dir, epochs=epochs)

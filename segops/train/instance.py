"""Training and evaluation of `instance` models (torchvision detection API, e.g. Mask R-CNN).

Datasets are any torch Dataset yielding `(image float [3,H,W] in 0..1, target)` with target a
dict of `boxes` float [N,4] xyxy, `labels` int64 [N] (1..K) and `masks` uint8 [N,H,W] (tensors
or numpy arrays, as `segops.data.coco.instance_targets` returns). Class names include the
background first, so the model gets `num_classes = len(classes)`.

Output directory: `config.yaml`, `history.csv` (one row per epoch), `checkpoints/last.pt` (every
epoch) and `checkpoints/best.pt` (best validation mask AP), written like the semantic loop's.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import segops
from segops.config import Config, config_hash, save_config
from segops.errors import ConfigError
from segops.evaluate.confusion import ConfusionMatrix
from segops.evaluate.instance_metrics import (
    coco_mask_metrics,
    per_image_mask_ap,
    semantic_from_instances,
)
from segops.evaluate.metrics import summarize
from segops.models import build_model
from segops.train.callbacks import Callback, CallbackList
from segops.train.checkpoint import rng_state, save_checkpoint
from segops.train.device import Runtime, configure_determinism, resolve_runtime
from segops.train.loop import epoch_seed
from segops.train.parts import restore_state
from segops.train.schedule import build_scheduler


@dataclass(frozen=True)
class InstanceTrainResult:
    out_dir: str
    last_checkpoint: str
    best_checkpoint: str
    best_epoch: int
    best_mask_ap: float
    epochs_run: int
    config_hash: str
    history_csv: str


@dataclass
class InstanceRunState:
    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_ap: float = -1.0  # best validation mask AP (NaN counts as -1)
    best_epoch: int = 0


def collate(batch: list) -> tuple:
    """Detection batches stay lists: `(images, targets)` as tuples, one entry per sample."""
    return tuple(zip(*batch, strict=True))


def _autocast(runtime: Runtime) -> torch.autocast:
    dtype = runtime.amp_dtype or torch.float32
    return torch.autocast(runtime.device.type, dtype=dtype, enabled=runtime.amp_dtype is not None)


def _to_device(images, targets, device: torch.device) -> tuple[list, list]:
    images = [torch.as_tensor(im).to(device) for im in images]
    targets = [{k: torch.as_tensor(v).to(device) for k, v in t.items()} for t in targets]
    return images, targets


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


def train_instance_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    *,
    epoch: int = 1,
    callbacks: Callback | None = None,
    grad_clip: float | None = None,
) -> dict[str, float]:
    """One pass over `loader` summing the model's losses; returns mean loss, images, seconds."""
    model.train()
    total, seen, start = 0.0, 0, time.perf_counter()
    for step, (images, targets) in enumerate(loader, 1):
        images, targets = _to_device(images, targets, runtime.device)
        with _autocast(runtime):
            loss = sum(model(images, targets).values())
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"epoch {epoch} step {step}: loss is {loss_value}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total, seen = total + loss_value * len(images), seen + len(images)
        if callbacks is not None:
            callbacks.on_step(epoch, step, len(loader), loss_value)
    return {"loss": total / max(1, seen), "images": seen, "seconds": time.perf_counter() - start}


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
) -> tuple[list[dict], list[dict]]:
    """(predictions, targets) for every sample of `dataset`, in order, as numpy dicts; images go
    to `device` (default: the model's)."""
    model.eval()
    device = device or next(model.parameters()).device
    preds, targets = [], []
    for images, batch_targets in DataLoader(dataset, batch_size, collate_fn=collate):
        outputs = model([torch.as_tensor(im).to(device) for im in images])
        preds += [_compact(out, mask_threshold) for out in outputs]
        targets += [{k: np.asarray(v) for k, v in t.items()} for t in batch_targets]
    return preds, targets


def evaluate_instance(
    model: nn.Module,
    dataset: Dataset,
    classes: list[str] | tuple[str, ...],
    *,
    batch_size: int = 2,
    device: str | torch.device | None = None,
    score_threshold: float = 0.5,
) -> dict[str, Any]:
    """COCO mask `AP`, `AP50`, `AP75`, `AR`; `mean_iou`, `pixel_accuracy` and `semantic` (the
    summary of `segops.evaluate.metrics`) from masks painted with instances scoring at least
    `score_threshold`; and `per_image_ap` {sample index: mask AP (NaN without ground truth)}."""
    preds, targets = predict_instances(model, dataset, batch_size, device)
    matrix = ConfusionMatrix(len(classes))
    for pred, target in zip(preds, targets, strict=True):
        height, width = target["masks"].shape[-2:]
        painted = semantic_from_instances(pred, len(classes), height, width, score_threshold)
        truth = semantic_from_instances(target, len(classes), height, width, 0.0)
        matrix.update(torch.from_numpy(painted)[None], torch.from_numpy(truth)[None])
    semantic = summarize(matrix.compute(), list(classes))
    return {
        **coco_mask_metrics(preds, targets),
        "mean_iou": _number(semantic["mean_iou"]),
        "pixel_accuracy": _number(semantic["pixel_accuracy"]),
        "semantic": semantic,
        "per_image_ap": per_image_mask_ap(preds, targets),
    }


def _checkpoint(
    model, optimizer, scheduler, scaler, state, cfg, classes, dataset_hash
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "state": asdict(state),
        "config": cfg.to_dict(),
        "config_hash": config_hash(cfg),
        "classes": list(classes),
        "model_name": cfg.model.name,
        "kind": "instance",
        "dataset_hash": dataset_hash,
        "versions": {"segops": segops.__version__, "torch": str(torch.__version__)},
    }


def _record(state: InstanceRunState, row: dict, ckpt: dict, out: Path, callbacks: Callback) -> None:
    """Append the epoch's row, write history.csv, last.pt and (when AP improved) best.pt."""
    state.history.append(row)
    ap = row["val_AP"] if not math.isnan(row["val_AP"]) else -1.0
    improved = state.best_epoch == 0 or ap > state.best_ap
    if improved:
        state.best_ap, state.best_epoch = ap, row["epoch"]
    pd.DataFrame(state.history).to_csv(out / "history.csv", index=False)
    ckpt["state"] = asdict(state)
    last = out / "checkpoints" / "last.pt"
    save_checkpoint(ckpt, last)
    callbacks.on_checkpoint(last, False)
    if improved:
        for suffix in ("", ".sha256"):
            shutil.copyfile(f"{last}{suffix}", f"{last.with_name('best.pt')}{suffix}")
        callbacks.on_checkpoint(last.with_name("best.pt"), True)
    callbacks.on_epoch_end(row)


def _classes(classes, dataset: Dataset) -> list[str]:
    found = classes if classes is not None else getattr(dataset, "classes", None)
    if not found or len(found) < 2:
        raise ConfigError("instance training needs class names (background first): pass classes")
    return list(found)


def _setup(cfg: Config, dataset: Dataset, num_classes: int, epochs: int, optimizer: str):
    """Runtime, loader and the model with its optimiser, per-step schedule and grad scaler."""
    runtime = resolve_runtime(cfg.train)
    configure_determinism(runtime)
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    generator = torch.Generator()  # reseeded each epoch: shuffling depends on (seed, epoch)
    loader = DataLoader(
        dataset,
        cfg.train.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=generator,
        num_workers=cfg.data.num_workers,
        pin_memory=runtime.pin_memory,
    )
    model = build_instance_model(cfg, num_classes).to(runtime.device)
    opt = build_optimizer(model, cfg, optimizer)
    total = len(loader) * epochs
    warmup = min(total - 1, round(len(loader) * cfg.train.warmup_epochs))
    scheduler = build_scheduler(opt, total, warmup, cfg.train.schedule)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.use_scaler)
    return runtime, loader, generator, model, opt, scheduler, scaler


def _row(epoch: int, fit: dict, val: dict, lr: float) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": fit["loss"],
        "val_loss": float("nan"),  # detection models give losses in train mode only
        **{f"val_{k}": val[k] for k in ("AP", "AP50", "AP75", "AR")},
        "val_miou": val["mean_iou"],
        "val_pixel_acc": val["pixel_accuracy"],
        "lr": lr,
        "seconds": fit["seconds"],
        "images_per_s": fit["images"] / fit["seconds"],
    }


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
) -> InstanceTrainResult:
    """Train `cfg.model` (an instance model) for `epochs` (default `cfg.train.epochs`) with the
    `optimizer` ("adamw" or "sgd"), saving to `out_dir` (default `cfg.train.out_dir`; see the
    module docstring). `classes` default to `dataset_train.classes`; `dataset_hash` (the
    data's fingerprint) is stored in the checkpoints. With `resume`, continues from
    `checkpoints/last.pt` when it exists (refusing one of another config or dataset) and ends
    with the same weights as an uninterrupted run. Returns where things are and the best
    epoch by validation mask AP."""
    cbs, names = CallbackList(list(callbacks)), _classes(classes, dataset_train)
    epochs, out = epochs or cfg.train.epochs, Path(out_dir or cfg.train.out_dir)
    setup = _setup(cfg, dataset_train, len(names), epochs, optimizer)
    runtime, loader, generator, model, *optim = setup
    last = out / "checkpoints" / "last.pt"
    state = InstanceRunState()
    if resume and last.is_file():
        opt, scheduler, scaler = optim
        parts = SimpleNamespace(model=model, optimizer=opt, scheduler=scheduler, scaler=scaler)
        state = InstanceRunState(**restore_state(last, parts, (config_hash(cfg), dataset_hash)))
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    sizes = {"train_images": len(dataset_train), "val_images": len(dataset_val)}
    cbs.on_train_start(
        {**runtime.describe(), **sizes, "epochs": epochs, "start_epoch": state.epoch + 1,
         "steps_per_epoch": len(loader), "out_dir": str(out)}
    )  # fmt: skip
    for epoch in range(state.epoch + 1, epochs + 1):
        generator.manual_seed(epoch_seed(cfg.train.seed, epoch))
        torch.manual_seed(epoch_seed(cfg.train.seed, epoch))
        lr = optim[0].param_groups[0]["lr"]
        fit = train_instance_epoch(
            model, loader, *optim, runtime, epoch=epoch, callbacks=cbs,
            grad_clip=cfg.train.grad_clip,
        )  # fmt: skip
        val = evaluate_instance(
            model, dataset_val, names, device=runtime.device, batch_size=cfg.evaluate.batch_size
        )
        state.epoch = epoch
        ckpt = _checkpoint(model, *optim, state, cfg, names, dataset_hash)
        _record(state, _row(epoch, fit, val, lr), ckpt, out, cbs)
    result = InstanceTrainResult(
        str(out), str(last), str(last.with_name("best.pt")), state.best_epoch, state.best_ap,
        state.epoch, config_hash(cfg), str(out / "history.csv"),
    )  # fmt: skip
    cbs.on_train_end(result)
    return result

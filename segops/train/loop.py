"""The training loop: plain PyTorch, seeded, resumable, reporting through callbacks.

Output directory (`train.out_dir`): `config.yaml` (resolved config), `history.csv` (one row per
epoch), `checkpoints/last.pt` (every epoch) and `checkpoints/best.pt` (best validation mean IoU).
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

import segops
from segops.config import Config, config_hash, save_config
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import DatasetInfo, dataset_fingerprint, load_dataset
from segops.data.transforms import eval_transform, train_transform
from segops.errors import CheckpointError, ConfigError
from segops.evaluate.confusion import ConfusionMatrix
from segops.evaluate.metrics import iou, nanmean, pixel_accuracy
from segops.models import build_model
from segops.train.callbacks import Callback, CallbackList
from segops.train.checkpoint import load_checkpoint, save_checkpoint
from segops.train.device import Runtime, configure_determinism, resolve_runtime
from segops.train.losses import balanced_weights, build_loss
from segops.train.schedule import build_scheduler


@dataclass(frozen=True)
class TrainResult:
    out_dir: str
    last_checkpoint: str
    best_checkpoint: str
    best_epoch: int
    best_miou: float
    epochs_run: int
    stopped_early: bool
    config_hash: str
    dataset_hash: str
    history_csv: str


@dataclass
class _State:
    """What a checkpoint restores besides the model and optimiser."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_miou: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best, for early stopping


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (numpy's global one is not used)."""
    random.seed(seed)
    torch.manual_seed(seed)


def make_loaders(cfg: Config, info: DatasetInfo, runtime: Runtime) -> tuple[DataLoader, ...]:
    """Training loader (shuffled by a generator reseeded each epoch) and validation loader."""
    size = cfg.data.image_size
    train_ds = SegmentationDataset(
        info.root, info.split("train"), train_transform(cfg.augment, size), cfg.data.cache
    )
    val_ds = SegmentationDataset(
        info.root, info.split("val"), eval_transform(cfg.augment, size), cfg.data.cache
    )
    common = {
        "num_workers": cfg.data.num_workers,
        "pin_memory": runtime.pin_memory,
        "persistent_workers": cfg.data.num_workers > 0,
    }
    generator = torch.Generator()
    train = DataLoader(
        train_ds,
        cfg.train.batch_size,
        shuffle=True,
        drop_last=len(train_ds) > cfg.train.batch_size,
        generator=generator,
        **common,
    )
    val = DataLoader(val_ds, cfg.evaluate.batch_size, shuffle=False, **common)
    return train, val, generator


def _to_device(images: torch.Tensor, masks: torch.Tensor, runtime: Runtime) -> tuple:
    fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
    images = images.to(runtime.device, non_blocking=True, memory_format=fmt)
    return images, masks.to(runtime.device, non_blocking=True)


def _autocast(runtime: Runtime) -> torch.autocast:
    dtype = runtime.amp_dtype or torch.float32
    return torch.autocast(runtime.device.type, dtype=dtype, enabled=runtime.amp_dtype is not None)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    *,
    epoch: int = 1,
    callbacks: Callback | None = None,
    grad_clip: float | None = None,
) -> dict[str, float]:
    """One pass over `loader`; returns mean loss, images seen and seconds taken."""
    model.train()
    total, images_seen, start = torch.zeros((), device=runtime.device), 0, time.perf_counter()
    steps = len(loader)
    for step, (images, masks) in enumerate(loader, 1):
        images, masks = _to_device(images, masks, runtime)
        with _autocast(runtime):
            loss = criterion(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += loss.detach() * images.shape[0]
        images_seen += images.shape[0]
        if callbacks is not None:
            callbacks.on_step(epoch, step, steps, loss.item())  # syncs: cheap on CPU
    seconds = time.perf_counter() - start
    return {"loss": float(total) / max(1, images_seen), "images": images_seen, "seconds": seconds}


@torch.inference_mode()
def validate(
    model: nn.Module, loader: DataLoader, criterion: nn.Module, runtime: Runtime, num_classes: int
) -> dict[str, float]:
    """Validation loss, mean IoU and pixel accuracy over `loader`."""
    model.eval()
    matrix, total, count = ConfusionMatrix(num_classes), 0.0, 0
    for images, masks in loader:
        images, masks = _to_device(images, masks, runtime)
        with _autocast(runtime):
            logits = model(images)
        total += float(criterion(logits.float(), masks)) * images.shape[0]
        count += images.shape[0]
        matrix.update(logits.argmax(1), masks)
    mat = matrix.compute()
    return {
        "loss": total / max(1, count),
        "miou": nanmean(iou(mat)),
        "pixel_acc": pixel_accuracy(mat),
    }


def _class_weights(cfg: Config, info: DatasetInfo) -> list[float] | None:
    weights = cfg.train.class_weights
    if weights == "none":
        return None
    if weights == "balanced":
        return balanced_weights(info.class_pixels("train"))
    if len(weights) != info.num_classes:
        raise ConfigError(
            f"train.class_weights has {len(weights)} values but the dataset has "
            f"{info.num_classes} classes ({', '.join(info.classes)})"
        )
    return list(weights)


@dataclass
class _Parts:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module


def _build_parts(cfg: Config, info: DatasetInfo, runtime: Runtime, steps: int) -> _Parts:
    model = build_model(
        cfg.model.name,
        num_classes=info.num_classes,
        pretrained=cfg.model.pretrained,
        **cfg.model.options,
    )
    fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
    model = model.to(runtime.device, memory_format=fmt)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    total = steps * cfg.train.epochs
    warmup = min(total - 1, round(steps * cfg.train.warmup_epochs))
    scheduler = build_scheduler(optimizer, total, warmup, cfg.train.schedule)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.use_scaler)
    criterion = build_loss(cfg.train.loss, _class_weights(cfg, info)).to(runtime.device)
    return _Parts(model, optimizer, scheduler, scaler, criterion)


def _checkpoint_state(
    parts: _Parts, state: _State, cfg: Config, info: DatasetInfo, hashes: tuple[str, str]
) -> dict[str, Any]:
    return {
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "state": asdict(state),
        "config": cfg.to_dict(),
        "config_hash": hashes[0],
        "dataset_hash": hashes[1],
        "classes": list(info.classes),
        "model_name": cfg.model.name,
        "versions": {"segops": segops.__version__, "torch": str(torch.__version__)},
    }


def _restore(path: Path, parts: _Parts, hashes: tuple[str, str]) -> _State:
    """Load `path` into `parts`; refuse a checkpoint made with another config or dataset."""
    ckpt = load_checkpoint(path)
    for key, want, what in (
        ("config_hash", hashes[0], "config"),
        ("dataset_hash", hashes[1], "dataset"),
    ):
        if ckpt[key] != want:
            raise CheckpointError(
                f"{path}: was made with a different {what} ({key} {ckpt[key][:12]} != "
                f"{want[:12]}); resume with the same params and data, or train without --resume"
            )
    parts.model.load_state_dict(ckpt["model"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    parts.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    random.setstate(ckpt["rng"]["python"])
    if ckpt["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return _State(**ckpt["state"])


def _write_history(history: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(history).to_csv(tmp, index=False)
    tmp.replace(path)


def _end_epoch(
    cfg: Config, parts: _Parts, state: _State, row: dict, ckpt: dict, out: Path, callbacks: Callback
) -> bool:
    """Record the epoch, write checkpoints; returns True when early stopping triggers."""
    state.history.append(row)
    improved = row["val_miou"] > state.best_miou
    if improved:
        state.best_miou, state.best_epoch, state.bad_epochs = row["val_miou"], row["epoch"], 0
    else:
        state.bad_epochs += 1
    _write_history(state.history, out / "history.csv")
    ckpt["state"] = asdict(state)
    last = out / "checkpoints" / "last.pt"
    save_checkpoint(ckpt, last)
    callbacks.on_checkpoint(last, False)
    if improved:
        best = last.with_name("best.pt")
        for suffix in ("", ".sha256"):  # the file is identical: copy rather than re-serialise
            shutil.copyfile(f"{last}{suffix}", f"{best}{suffix}")
        callbacks.on_checkpoint(best, True)
    callbacks.on_epoch_end(row)
    patience = cfg.train.early_stopping_patience
    return patience is not None and state.bad_epochs >= patience


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def train(
    cfg: Config,
    *,
    resume: bool = False,
    callbacks: list[Callback] | tuple = (),
    dataset: DatasetInfo | None = None,
) -> TrainResult:
    """Train `cfg.model` on `cfg.data` (checked first); see the module docstring for outputs.

    With `resume`, continues from `out_dir/checkpoints/last.pt` when it exists (refusing one
    made with another config or dataset) and ends with the same weights as an uninterrupted run.
    """
    cbs = CallbackList(list(callbacks))
    info = dataset or load_dataset(cfg.data, eval_split="val")
    runtime = resolve_runtime(cfg.train)
    configure_determinism(runtime)
    seed_everything(cfg.train.seed)
    out = Path(cfg.train.out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    train_loader, val_loader, generator = make_loaders(cfg, info, runtime)
    parts = _build_parts(cfg, info, runtime, len(train_loader))
    hashes = (config_hash(cfg), dataset_fingerprint(info))
    last = out / "checkpoints" / "last.pt"
    state = _restore(last, parts, hashes) if resume and last.is_file() else _State()
    save_config(cfg, out / "config.yaml")
    cbs.on_train_start(
        {
            **runtime.describe(),
            "epochs": cfg.train.epochs,
            "start_epoch": state.epoch + 1,
            "train_images": len(train_loader.dataset),
            "val_images": len(val_loader.dataset),
            "steps_per_epoch": len(train_loader),
            "out_dir": str(out),
        }
    )
    stopped = False
    for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
        # Shuffling and augmentation of each epoch depend only on (seed, epoch).
        generator.manual_seed(_epoch_seed(cfg.train.seed, epoch))
        torch.manual_seed(_epoch_seed(cfg.train.seed, epoch))
        lr = parts.optimizer.param_groups[0]["lr"]
        fit = train_one_epoch(
            parts.model,
            train_loader,
            parts.criterion,
            parts.optimizer,
            parts.scheduler,
            parts.scaler,
            runtime,
            epoch=epoch,
            callbacks=cbs,
            grad_clip=cfg.train.grad_clip,
        )
        val = validate(parts.model, val_loader, parts.criterion, runtime, info.num_classes)
        row = {
            "epoch": epoch,
            "train_loss": fit["loss"],
            "val_loss": val["loss"],
            "val_miou": val["miou"],
            "val_pixel_acc": val["pixel_acc"],
            "lr": lr,
            "seconds": fit["seconds"],
            "images_per_s": fit["images"] / fit["seconds"],
        }
        state.epoch = epoch
        ckpt = _checkpoint_state(parts, state, cfg, info, hashes)
        if _end_epoch(cfg, parts, state, row, ckpt, out, cbs):
            stopped = True
            break
    result = TrainResult(
        str(out),
        str(last),
        str(out / "checkpoints" / "best.pt"),
        state.best_epoch,
        state.best_miou,
        state.epoch,
        stopped,
        *hashes,
        str(out / "history.csv"),
    )
    cbs.on_train_end(result)
    return result

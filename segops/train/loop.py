"""The training loop: plain PyTorch, seeded, resumable, reporting through callbacks.

Output directory (`train.out_dir`): `config.yaml` (resolved config), `history.csv` (one row per
epoch), `checkpoints/last.pt` (every epoch) and `checkpoints/best.pt` (best validation mean IoU).
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from segops.config import Config, config_hash, save_config
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import DatasetInfo, dataset_fingerprint, load_dataset
from segops.data.transforms import eval_transform, train_transform
from segops.evaluate.confusion import ConfusionMatrix
from segops.evaluate.metrics import iou, nanmean, pixel_accuracy
from segops.train.callbacks import Callback, CallbackList
from segops.train.checkpoint import save_checkpoint
from segops.train.device import Runtime, configure_determinism, resolve_runtime
from segops.train.parts import RunState, build_parts, checkpoint_state, restore


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


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (numpy's global one is not used)."""
    random.seed(seed)
    torch.manual_seed(seed)


def make_loaders(cfg: Config, info: DatasetInfo, runtime: Runtime) -> tuple[DataLoader, ...]:
    """Training loader (shuffled by a generator reseeded each epoch) and validation loader.

    With `data.crop_size` both work at native resolution: random crops for training, whole
    images one at a time for validation (their sizes may differ)."""
    size, crop = cfg.data.image_size, cfg.data.crop_size
    train_ds = SegmentationDataset(
        info.root, info.split("train"), train_transform(cfg.augment, size, crop), cfg.data.cache
    )
    val_ds = SegmentationDataset(
        info.root,
        info.split("val"),
        eval_transform(cfg.augment, size, native=crop is not None),
        cfg.data.cache,
    )
    val_batch = cfg.evaluate.batch_size if crop is None else 1
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
    val = DataLoader(val_ds, val_batch, shuffle=False, **common)
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


def _write_history(history: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(history).to_csv(tmp, index=False)
    tmp.replace(path)


def _end_epoch(
    cfg: Config,
    state: RunState,
    row: dict,
    ckpt: dict,
    out: Path,
    callbacks: Callback,
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


def epoch_seed(seed: int, epoch: int) -> int:
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
    parts = build_parts(cfg, info, runtime, len(train_loader))
    hashes = (config_hash(cfg), dataset_fingerprint(info))
    last = out / "checkpoints" / "last.pt"
    state = restore(last, parts, hashes) if resume and last.is_file() else RunState()
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
        generator.manual_seed(epoch_seed(cfg.train.seed, epoch))
        torch.manual_seed(epoch_seed(cfg.train.seed, epoch))
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
        ckpt = checkpoint_state(parts, state, cfg, info, hashes)
        if _end_epoch(cfg, state, row, ckpt, out, cbs):
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

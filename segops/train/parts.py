"""What a semantic training run is made of (model, optimiser, schedule, scaler, loss), and how
a checkpoint of any kind saves and restores model, optimiser, schedule, scaler and RNG states."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import segops
from segops.config import Config
from segops.data.manifest import DatasetInfo
from segops.errors import CheckpointError, ConfigError
from segops.models import build_model, require_semantic
from segops.train.checkpoint import load_checkpoint, rng_state
from segops.train.device import Runtime
from segops.train.losses import balanced_weights, build_loss
from segops.train.schedule import build_scheduler


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
class Parts:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module


def build_parts(
    cfg: Config, info: DatasetInfo, runtime: Runtime, steps: int, epochs: int | None = None
) -> Parts:
    """Semantic model, AdamW, per-step schedule over `steps` x `epochs` (default
    `train.epochs`), grad scaler and loss, on `runtime`'s device."""
    require_semantic(cfg.model.name)
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
    total = steps * (epochs or cfg.train.epochs)
    warmup = min(total - 1, round(steps * cfg.train.warmup_epochs))
    scheduler = build_scheduler(optimizer, total, warmup, cfg.train.schedule)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.use_scaler)
    criterion = build_loss(cfg.train.loss, _class_weights(cfg, info)).to(runtime.device)
    return Parts(model, optimizer, scheduler, scaler, criterion)


def checkpoint_state(
    parts: Any, state: dict[str, Any], cfg: Config, hashes: tuple[str, str], meta: dict
) -> dict[str, Any]:
    """A checkpoint of `parts` (anything with model, optimizer, scheduler and scaler), the
    loop's `state`, the RNGs and what describes the run; `meta` adds the task's `classes`
    (and an instance model's `kind`)."""
    return {
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "rng": rng_state(),
        "state": state,
        "config": cfg.to_dict(),
        "config_hash": hashes[0],
        "dataset_hash": hashes[1],
        "model_name": cfg.model.name,
        **meta,
        "versions": {"segops": segops.__version__, "torch": str(torch.__version__)},
    }


def restore_state(path: Path, parts: Any, hashes: tuple[str, str]) -> dict[str, Any]:
    """Load checkpoint `path` into `parts` (anything with model, optimizer, scheduler and
    scaler) and the RNGs; returns the loop's saved state dict. Refuses a checkpoint made with
    another config or dataset (`hashes` = (config hash, dataset hash))."""
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
    return ckpt["state"]

"""One training driver for every model kind: `fit(cfg, task)`.

A *task* (`segops.train.semantic.SemanticTask`, `segops.train.instance.InstanceTask`) knows its
model, data, loss and validation metrics. `fit` owns the rest, alike for every kind: runtime
and determinism, seeding per (seed, epoch), exact resume from `checkpoints/last.pt`, the
epoch loop with its non-finite-loss check, best-model selection on `task.score_key`, early
stopping (`train.early_stopping_patience`) and callbacks.

Output directory (`train.out_dir`): `config.yaml` (resolved config), `history.csv` (one row per
epoch, replaced atomically), `checkpoints/last.pt` (every epoch) and `checkpoints/best.pt`
(best `task.score_key`), each checkpoint with a `.sha256` sidecar.

Under torchrun (`world`, see `segops.train.distributed`) every rank runs this same loop on its
share of the batches; only rank 0 writes files and reports to the callbacks.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from segops.config import Config, save_config
from segops.train.callbacks import Callback, CallbackList
from segops.train.checkpoint import save_checkpoint
from segops.train.device import Runtime, configure_determinism, keep_threads, resolve_runtime
from segops.train.distributed import (
    SINGLE,
    World,
    epoch_over_ranks,
    rank_seed,
    set_epoch,
    sync_buffers,
    wrap_model,
)
from segops.train.parts import checkpoint_state, restore_state
from segops.train.state import RunState, record_epoch, should_stop

BatchLoss = Callable[[nn.Module, Any, Runtime], tuple[torch.Tensor, int]]


@dataclass(frozen=True)
class TrainResult:
    out_dir: str
    last_checkpoint: str
    best_checkpoint: str
    best_epoch: int
    best_miou: float  # validation mean IoU at the best epoch (instance: of the painted masks)
    epochs_run: int
    stopped_early: bool
    config_hash: str
    dataset_hash: str
    history_csv: str
    score_key: str  # the history column that chose the best epoch
    best_score: float  # its value at the best epoch


@dataclass
class Setup:
    """What a task builds for a run; `fit` checkpoints and restores the first four."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader: DataLoader  # training batches, shuffled with `generator`
    generator: torch.Generator  # reseeded each epoch
    val_images: int
    world: World = SINGLE  # set by fit
    trained: nn.Module | None = None  # what the steps run: `model`, or DDP over it (fit sets)


class Task(Protocol):
    """What `fit` needs to know about a kind of model."""

    score_key: str  # history column that picks best.pt (higher is better)
    state_key: str  # the best score's name in a checkpoint's `state`
    hashes: tuple[str, str]  # (config hash, dataset hash): a resume must match both

    def build(self, runtime: Runtime, epochs: int, world: World = SINGLE) -> Setup:
        """The run's model, optimiser, schedule over `epochs`, scaler and training loader
        (of this rank's share of the batches)."""

    def batch_loss(self, model: nn.Module, batch: Any, runtime: Runtime) -> tuple:
        """(scalar training loss of `batch`, images in it), under the runtime's autocast."""

    def validate(self, model: nn.Module, runtime: Runtime, world: World = SINGLE) -> dict:
        """The epoch's `val_*` history columns, `score_key` among them (over all ranks)."""

    def checkpoint_meta(self) -> dict[str, Any]:
        """Keys that describe the model in every checkpoint: `classes`, maybe `kind`."""


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (numpy's global one is not used)."""
    random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def check_finite(loss: float, epoch: int, step: int) -> None:
    """FloatingPointError for a NaN or infinite training loss, before it reaches the weights."""
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"epoch {epoch} step {step}: loss is {loss}; the step was not applied and "
            "checkpoints/last.pt holds the last finished epoch. Train again with a lower "
            "train.lr, a train.grad_clip, or train.amp=off"
        )


def _apply(loss, optimizer, scheduler, scaler, model: nn.Module, grad_clip: float | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


def run_epoch(
    model: nn.Module,
    loader: DataLoader,
    batch_loss: BatchLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    *,
    epoch: int = 1,
    callbacks: Callback | None = None,
    grad_clip: float | None = None,
) -> dict[str, float]:
    """One optimiser pass over `loader`; returns mean loss, images seen and seconds taken."""
    model.train()
    total, seen, start = 0.0, 0, time.perf_counter()
    for step, batch in enumerate(loader, 1):
        loss, images = batch_loss(model, batch, runtime)
        value = loss.item()  # one sync per step: the finite check and callbacks need it
        check_finite(value, epoch, step)
        _apply(loss, optimizer, scheduler, scaler, model, grad_clip)
        total, seen = total + value * images, seen + images
        if callbacks is not None:
            callbacks.on_step(epoch, step, len(loader), value)
    return {"loss": total / max(1, seen), "images": seen, "seconds": time.perf_counter() - start}


def write_history(history: list[dict[str, Any]], path: Path) -> None:
    """Replace `path` with `history` as CSV atomically: a crash leaves the old file whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(history).to_csv(tmp, index=False)
    tmp.replace(path)


def _train_and_validate(cfg: Config, task: Task, setup: Setup, runtime, epoch: int, cbs) -> dict:
    """The epoch's history row. Its shuffling and augmentation depend only on (seed, epoch) and,
    under torchrun, the rank."""
    world, seed = setup.world, epoch_seed(cfg.train.seed, epoch)
    setup.generator.manual_seed(seed)
    set_epoch(setup.loader, epoch)
    torch.manual_seed(rank_seed(seed, world.rank))
    lr = setup.optimizer.param_groups[0]["lr"]
    optim = (setup.optimizer, setup.scheduler, setup.scaler)
    train = run_epoch(
        setup.trained,
        setup.loader,
        task.batch_loss,
        *optim,
        runtime,
        epoch=epoch,
        callbacks=cbs,
        grad_clip=cfg.train.grad_clip,
    )
    train = epoch_over_ranks(train, world)
    sync_buffers(setup.model, world)
    return {
        "epoch": epoch,
        "train_loss": train["loss"],
        **task.validate(setup.model, runtime, world),
        "lr": lr,
        "seconds": train["seconds"],
        "images_per_s": train["images"] / train["seconds"],
    }


def _save_epoch(ckpt: dict[str, Any], out: Path, improved: bool, callbacks: Callback) -> None:
    """Write last.pt and, when the epoch is the best so far, best.pt beside it."""
    last = out / "checkpoints" / "last.pt"
    save_checkpoint(ckpt, last)
    callbacks.on_checkpoint(last, False)
    if improved:
        best = last.with_name("best.pt")
        for suffix in ("", ".sha256"):  # the file is identical: copy rather than re-serialise
            shutil.copyfile(f"{last}{suffix}", f"{best}{suffix}")
        callbacks.on_checkpoint(best, True)


def _end_epoch(cfg: Config, task: Task, setup: Setup, state: RunState, row: dict, out: Path, cbs):
    """Record the epoch's row, write history.csv and the checkpoints, report the epoch."""
    improved = record_epoch(state, row, task.score_key)
    if not setup.world.is_main:
        return
    write_history(state.history, out / "history.csv")
    meta = task.checkpoint_meta()
    ckpt = checkpoint_state(setup, state.to_dict(task.state_key), cfg, task.hashes, meta)
    _save_epoch(ckpt, out, improved, cbs)
    cbs.on_epoch_end(row)


def _start_info(runtime: Runtime, setup: Setup, state: RunState, epochs: int, out: Path) -> dict:
    return {
        **runtime.describe(),
        "world_size": setup.world.size,
        "epochs": epochs,
        "start_epoch": state.epoch + 1,
        "train_images": len(setup.loader.dataset),
        "val_images": setup.val_images,
        "steps_per_epoch": len(setup.loader),
        "out_dir": str(out),
    }


def _result(out: Path, task: Task, state: RunState, stopped: bool) -> TrainResult:
    best = next((row for row in state.history if row["epoch"] == state.best_epoch), {})
    ckpts = out / "checkpoints"
    return TrainResult(
        out_dir=str(out),
        last_checkpoint=str(ckpts / "last.pt"),
        best_checkpoint=str(ckpts / "best.pt"),
        best_epoch=state.best_epoch,
        best_miou=float(best.get("val_miou", math.nan)),
        epochs_run=state.epoch,
        stopped_early=stopped,
        config_hash=task.hashes[0],
        dataset_hash=task.hashes[1],
        history_csv=str(out / "history.csv"),
        score_key=task.score_key,
        best_score=float(best.get(task.score_key, math.nan)),
    )


def fit(
    cfg: Config,
    task: Task,
    *,
    resume: bool = False,
    callbacks: list[Callback] | tuple = (),
    out_dir: str | Path | None = None,
    epochs: int | None = None,
    world: World = SINGLE,
) -> TrainResult:
    """Train `task` for `epochs` (default `cfg.train.epochs`) into `out_dir` (default
    `cfg.train.out_dir`; see the module docstring); returns where things are and the best epoch.

    With `resume`, continues from `checkpoints/last.pt` when it exists (refusing one made with
    another config or dataset) and ends with the same weights as an uninterrupted run. Under
    torchrun every rank resumes from that same file; `callbacks` hear rank 0 only."""
    cbs = CallbackList(list(callbacks) if world.is_main else [])
    out, epochs = Path(out_dir or cfg.train.out_dir), epochs or cfg.train.epochs
    runtime = resolve_runtime(cfg.train, cfg.model.name, cfg.data.crop_size or cfg.data.image_size)
    configure_determinism(runtime)
    seed_everything(cfg.train.seed)
    if world.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    setup = task.build(runtime, epochs, world)
    last = out / "checkpoints" / "last.pt"
    state = RunState()
    if resume and last.is_file():
        state = RunState.from_dict(restore_state(last, setup, task.hashes), task.state_key)
    threads = out / "checkpoints" / "threads.txt"  # one count for the run's whole life
    runtime = keep_threads(runtime, cfg.train.threads, threads, resume and last.is_file())
    setup.world, setup.trained = world, wrap_model(setup.model, world, runtime.device)
    if world.is_main:
        save_config(cfg, out / "config.yaml")
    cbs.on_train_start(_start_info(runtime, setup, state, epochs, out))
    stopped = False
    for epoch in range(state.epoch + 1, epochs + 1):
        row = _train_and_validate(cfg, task, setup, runtime, epoch, cbs)
        state.epoch = epoch
        _end_epoch(cfg, task, setup, state, row, out, cbs)
        if should_stop(state.bad_epochs, cfg.train.early_stopping_patience):
            stopped = True
            break
    result = _result(out, task, state, stopped)
    cbs.on_train_end(result)
    return result

"""Callbacks through which the training loop reports progress; subclass what you need.

The loop knows nothing about progress bars or MLflow: the CLI hands it a callback that draws
bars, the tracking module one that logs metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Callback:
    def on_train_start(self, info: dict[str, Any]) -> None:
        """Once, before the first epoch: device, sizes, epochs, resumed-from epoch."""

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        """After each optimiser step (1-based `step` of `steps` in the epoch)."""

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        """After validation: the epoch's history row (losses, val metrics, lr, speed)."""

    def on_checkpoint(self, path: Path, is_best: bool) -> None:
        """After a checkpoint was written."""

    def on_train_end(self, result: Any) -> None:
        """Once, with the TrainResult."""


class CallbackList(Callback):
    """Fans each event out to several callbacks, in order."""

    def __init__(self, callbacks: list[Callback] | tuple[Callback, ...] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_train_start(self, info: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_train_start(info)

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        for cb in self.callbacks:
            cb.on_step(epoch, step, steps, loss)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(row)

    def on_checkpoint(self, path: Path, is_best: bool) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(path, is_best)

    def on_train_end(self, result: Any) -> None:
        for cb in self.callbacks:
            cb.on_train_end(result)


class EpochPrinter(Callback):
    """One line per epoch on stdout: for logs (Prefect captures it) where no bar can be drawn."""

    def on_train_start(self, info: dict[str, Any]) -> None:
        ranks = info.get("world_size", 1)
        where = f"{info['device']}" + (f" x {ranks} DDP ranks" if ranks > 1 else "")
        print(
            f"training on {where} (amp {info['amp']}): {info['train_images']} train / "
            f"{info['val_images']} val images, epochs {info['start_epoch']}..{info['epochs']}",
            flush=True,
        )

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        ap = f"val mask AP {row['val_AP']:.4f}  " if "val_AP" in row else ""
        print(
            f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  val loss "
            f"{row['val_loss']:.4f}  val mIoU {row['val_miou']:.4f}  {ap}"
            f"{row['images_per_s']:.0f} img/s",
            flush=True,
        )

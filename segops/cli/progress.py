"""Rich progress bars: a training callback and a simple counter for scans and predictions."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from segops.train.callbacks import Callback

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@contextmanager
def counter(description: str):
    """Yields `update(done, total)` drawing one progress bar."""
    with _progress() as bar:
        task = bar.add_task(description, total=None, info="")

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


class RichTrainProgress(Callback):
    """Epoch and step bars, and one summary line per epoch."""

    def __init__(self) -> None:
        self.bar = _progress()
        self.epochs = self.steps = None

    def on_train_start(self, info: dict[str, Any]) -> None:
        console.print(
            f"training on [bold]{info['device']}[/] (amp {info['amp']}): "
            f"{info['train_images']} train / {info['val_images']} val images, "
            f"{info['steps_per_epoch']} steps per epoch -> {info['out_dir']}"
        )
        if info["start_epoch"] > 1:
            console.print(f"resuming at epoch {info['start_epoch']}")
        self.bar.start()
        done = info["start_epoch"] - 1
        self.epochs = self.bar.add_task("epochs", total=info["epochs"], completed=done, info="")
        self.steps = self.bar.add_task("steps", total=info["steps_per_epoch"], info="")

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        self.bar.update(self.steps, completed=step, total=steps, info=f"loss {loss:.4f}")

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.bar.update(self.epochs, completed=row["epoch"], info=f"val mIoU {row['val_miou']:.4f}")
        self.bar.reset(self.steps)
        ap = f"mask AP {row['val_AP']:.4f}  " if "val_AP" in row else ""
        self.bar.console.print(
            f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  val loss "
            f"{row['val_loss']:.4f}  val mIoU {row['val_miou']:.4f}  pixel acc "
            f"{row['val_pixel_acc']:.4f}  {ap}{row['images_per_s']:.0f} img/s"
        )

    def close(self) -> None:
        """Stop drawing (also after a failure, so the terminal is left clean)."""
        self.bar.stop()

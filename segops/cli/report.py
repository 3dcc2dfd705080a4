"""Tables the CLI prints for datasets and evaluation reports."""

from __future__ import annotations

from rich.table import Table

from segops.cli.progress import console


def print_dataset_summary(info) -> None:
    """Split counts, class pixel frequencies and image sizes of a `DatasetInfo`."""
    frame = info.manifest
    console.print(f"[bold]{info.root}[/]: {len(frame)} samples, {info.num_classes} classes")
    splits = Table("split", "images")
    for name, count in frame["split"].value_counts().sort_index().items():
        splits.add_row(str(name), str(count))
    console.print(splits)
    pixels = info.class_pixels()
    present = [(frame[f"px_{i}"] > 0).sum() for i in range(info.num_classes)]
    classes = Table("id", "class", "pixel share", "images containing it")
    for i, name in enumerate(info.classes):
        share = pixels[i] / max(1, pixels.sum())
        classes.add_row(str(i), name, f"{share:.2%}", str(present[i]))
    console.print(classes)
    sizes = frame.groupby(["width", "height"]).size().sort_values(ascending=False)
    shown = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.head(5).items())
    console.print(f"image sizes (w x h): {shown}; ignore pixels: {int(frame['px_ignore'].sum())}")


def print_eval_report(report) -> None:
    """Headline metrics and the files an `EvalReport` wrote."""
    console.print(
        f"[bold]{report.split}[/] split: mean IoU {report.mean_iou:.4f}, mean Dice "
        f"{report.mean_dice:.4f}, pixel accuracy {report.pixel_accuracy:.4f}"
    )
    console.print(f"metrics: {report.metrics_json}\nper image: {report.per_image_csv}")
    console.print("plots: " + ", ".join(report.plots))

"""Tables the CLI prints for datasets and evaluation reports."""

from __future__ import annotations

import time

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


def print_registered(name: str) -> None:
    """Versions of registered model `name`: aliases, mean IoU, data md5, decision."""
    from segops.promotion.registry import list_versions

    versions = list_versions(name)
    if not versions:
        console.print(f"no registered versions of {name!r}")
        return
    table = Table("version", "aliases", "mean IoU", "data md5", "promoted", "decision", "created")
    for v in versions:
        tags = v["tags"]
        table.add_row(
            v["version"],
            ", ".join(v["aliases"]),
            tags.get("metrics.mean_iou", ""),
            tags.get("segops.data.md5", "")[:12],
            tags.get("promotion.promote", ""),
            tags.get("promotion.reasons", "")[:80],
            time.strftime("%Y-%m-%d %H:%M", time.localtime(v["created"] / 1000)),
        )
    console.print(table)


def print_run_result(result: dict) -> None:
    """What `segops run` made, and how to look at it in the UIs."""
    model, decision, metrics = result["model"], result["decision"], result["metrics"]
    alias = "champion" if decision["promote"] else "challenger"
    console.print(
        f"registered [bold]{model['uri']}[/] (alias {alias}); mean IoU {metrics['mean_iou']:.4f} "
        f"on data {result['data']['md5']}"
    )
    for reason in decision["reasons"]:
        console.print(f"  - {reason}")
    console.print(
        "open the UIs:\n  make mlflow-ui    -> http://127.0.0.1:5000 (runs, metrics, registry)\n"
        "  make prefect-ui   -> http://127.0.0.1:4200 (then run with "
        "PREFECT_API_URL=http://127.0.0.1:4200/api to keep flow runs there)"
    )

"""Tables the CLI prints for datasets and evaluation reports."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.table import Table

from segops.cli.progress import console
from segops.record import TAGS

# lazy imports: pandas and MLflow (segops.promotion) load in the printers that need them:
# `segops run` prints its result through this module (docs/development.md "Imports").


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
    """Headline metrics and the files an `EvalReport` wrote (COCO mask metrics too for an
    instance model)."""
    metrics = json.loads(Path(report.metrics_json).read_text())
    if "mask_ap" in metrics:
        console.print(
            f"[bold]{report.split}[/] split: mask AP {metrics['mask_ap']:.4f}, AP50 "
            f"{metrics['mask_ap50']:.4f}, AP75 {metrics['mask_ap75']:.4f}, "
            f"AR {metrics['mask_ar']:.4f}"
        )
    console.print(
        f"[bold]{report.split}[/] split: mean IoU {report.mean_iou:.4f}, mean Dice "
        f"{report.mean_dice:.4f}, pixel accuracy {report.pixel_accuracy:.4f}"
    )
    _print_per_class(Path(report.per_class_csv))
    console.print(f"metrics: {report.metrics_json}\nper image: {report.per_image_csv}")
    console.print("plots: " + ", ".join(report.plots))


def _print_per_class(path: Path) -> None:
    """The per-class CSV as a table (every column, figures to 4 places)."""
    import pandas as pd

    if not path.is_file():
        return
    frame = pd.read_csv(path)
    table = Table(*map(str, frame.columns))
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)


def print_registered(name: str) -> None:
    """Versions of registered model `name`: aliases, the gate's metric (mean IoU or mask AP),
    data md5, decision."""
    from segops.promotion.registry import list_versions

    versions = list_versions(name)
    if not versions:
        console.print(f"no registered versions of {name!r}")
        return
    columns = ("version", "aliases", "metric", "dataset", "run folder", "promoted", "decision")
    table = Table(*columns, "created")
    for v in versions:
        tags = v["tags"]
        metric = tags.get("promotion.metric", "mean_iou")
        dataset = tags.get(TAGS["dataset_path"], tags.get(TAGS["data_path"], ""))
        md5 = tags.get(TAGS["dataset_md5"], tags.get(TAGS["data_md5"], ""))[:8]
        table.add_row(
            v["version"],
            ", ".join(v["aliases"]),
            f"{metric} {tags.get(f'metrics.{metric}', '')}",
            f"{dataset} ({md5})" if md5 else dataset,
            _relative(tags.get("segops.run_dir", "")),
            tags.get("promotion.promote", ""),
            tags.get("promotion.reasons", "")[:80],
            time.strftime("%Y-%m-%d %H:%M", time.localtime(v["created"] / 1000)),
        )
    console.print(table)


def print_run_result(result: dict) -> None:
    """What `segops run` made, and how to look at it in the UIs."""
    model, decision, metrics = result["model"], result["decision"], result["metrics"]
    if result.get("skipped"):
        console.print(
            f"nothing to retrain: [bold]{model['uri']}[/] was made from {_dataset(result)}, "
            "this config and this code (use --force to retrain)"
        )
        return
    from segops.promotion.decide import METRICS

    alias = "champion" if decision["promote"] else "challenger"
    metric = decision.get("metric", "mean_iou")
    label = METRICS[metric].label if metric in METRICS else metric
    figures = f"{label} {decision['challenger_mean']:.4f}"
    if metric != "mean_iou":
        figures += f", mean IoU {metrics['mean_iou']:.4f}"
    console.print(
        f"registered [bold]{model['uri']}[/] (alias {alias}); {figures}, on {_dataset(result)}"
    )
    for reason in decision["reasons"]:
        console.print(f"  - {reason}")
    report = result.get("report") or {}
    if report.get("html"):
        console.print(f"model report: {report['html']}")
    console.print(
        "open the UIs:\n  make mlflow-ui    -> http://127.0.0.1:5000 (runs, metrics, registry)\n"
        "  make prefect-ui   -> http://127.0.0.1:4200 (then run with "
        "PREFECT_API_URL=http://127.0.0.1:4200/api to keep flow runs there)"
    )


def _relative(path: str) -> str:
    """`path` relative to the working directory when it lies below it (shorter in tables)."""
    here = Path.cwd()
    return str(Path(path).relative_to(here)) if path and Path(path).is_relative_to(here) else path


def _dataset(result: dict) -> str:
    data = result["data"]
    if data.get("dataset"):
        return f"dataset {data['dataset']} ({data['dataset_md5']})"
    return f"data {data['md5']}"


_STATUS = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "unchecked": "unchecked"}


def print_audit(report, paths) -> None:
    """One row per lineage link of an `AuditReport`, the verdict and where the reports are."""
    table = Table("link", "status", "detail")
    for link in report.links:
        table.add_row(link.name, _STATUS.get(link.status, "[red]BROKEN[/]"), link.detail)
    console.print(table)
    verdict = "[green]intact[/]" if report.ok else f"[red]broken: {', '.join(report.broken)}[/]"
    console.print(f"{report.version_uri or report.model_uri}: lineage {verdict}")
    console.print(f"reports: {paths[0]}, {paths[1]}")


def _fixed(text: str, digits: int = 4) -> str:
    """A metric tag (a string) rounded for a table; empty or non-numeric text unchanged."""
    try:
        return f"{float(text):.{digits}f}"
    except ValueError:
        return text


def _identity(event: dict) -> str:
    """An event's data identity with its kind: `md5 0123456789ab` (a registration's DVC md5),
    `listing ...` (a scored folder) or `s3-listing ...` (a scored prefix); '' when none."""
    data = event.get("data", "")[:12]
    kind = event.get("data_kind") or ("md5" if event["event"] == "registered" else "listing")
    return f"{kind} {data}" if data else ""


def print_history(name: str, events: list[dict]) -> None:
    """The events of `segops.lineage.history.build_history` as a table; the data identity
    column names its kind (a registration's md5, a scoring's listing hash)."""
    if not events:
        console.print(f"no registered versions of {name!r}")
        return
    table = Table(
        "time (UTC)", "version", "event", "data identity", "mean IoU", "flow run", "detail"
    )
    for e in events:
        table.add_row(
            e["at"][:19].replace("T", " "),
            e["version"],
            e["event"],
            _identity(e),
            _fixed(e.get("mean_iou", "")),
            e.get("flow_run", "")[:8],
            e["detail"][:90],
        )
    console.print(table)

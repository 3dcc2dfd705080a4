"""What an evaluation writes and returns, for semantic and instance models alike: the report
record, the headline metrics logged per run, the recorded inference protocol, metrics.json and
the CSVs, and the plots. `report` (semantic) and `instance_report` both build on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segops.data.manifest import DatasetInfo, dataset_fingerprint
from segops.errors import DatasetError
from segops.evaluate import plots
from segops.inference import TrainedModel
from segops.predict_config import tiling_rule


@dataclass(frozen=True)
class EvalReport:
    out_dir: str
    split: str
    checkpoint: str
    dataset_hash: str
    mean_iou: float
    mean_dice: float
    pixel_accuracy: float
    metrics_json: str
    per_image_csv: str
    per_class_csv: str
    plots: tuple[str, ...]


Progress = Callable[[int, int], None] | None  # told (images done, images in all) as it scores


@dataclass(frozen=True)
class Scored:
    """What scoring a split gives, for either kind: the summary (metrics.json's values), one row
    per image, the split's confusion matrix and the worst images to draw."""

    summary: dict
    scores: pd.DataFrame
    mat: np.ndarray
    worst: list[dict]


HEADLINE = ("mean_iou", "mean_dice", "pixel_accuracy", "mean_precision", "mean_recall", "mean_f1")
INSTANCE_HEADLINE = ("mask_ap", "mask_ap50", "mask_ap75", "mask_ar")  # instance models only


def headline_metrics(summary: dict) -> dict[str, float]:
    """The flat metrics logged per run, from metrics.json: the means and `iou.<class>`; for an
    instance model also the COCO mask metrics and `ap.<class>`."""
    metrics = {k: summary[k] for k in HEADLINE + INSTANCE_HEADLINE if k in summary}
    per_class = summary["per_class"].items()
    metrics |= {f"iou.{name}": v["iou"] for name, v in per_class}
    return metrics | {f"ap.{name}": v["ap"] for name, v in per_class if v.get("ap") is not None}


def inference_protocol(trained: TrainedModel) -> dict[str, object]:
    """How the figures of an evaluation were made (recorded in metrics.json; the gate compares
    a champion and a challenger only when both were scored at the original resolution)."""
    native, predict = trained.config.data.crop_size is not None, trained.config.predict
    how = "sliding" if native else "resize (sliding window above 1.5x the input)"
    tiles = tiling_rule(predict.max_tile, trained.input_size, predict.overlap)
    return {
        "resolution": "original",
        "inference": how if trained.kind == "semantic" else "detections painted at image size",
        "input_size": trained.input_size,
        "overlap": predict.overlap,
        "max_tile": predict.max_tile,
        "tiling": tiles if trained.kind == "semantic" else "none",
        "threads": trained.threads,
    } | ({"scale": trained.config.data.scale} if trained.config.data.scale else {})


def per_class_table(summary: dict, mat: np.ndarray) -> pd.DataFrame:
    rows = [
        {
            "class": name,
            **values,
            "true_pixels": int(mat[i].sum()),
            "predicted_pixels": int(mat[:, i].sum()),
        }
        for i, (name, values) in enumerate(summary["per_class"].items())
    ]
    frame = pd.DataFrame(rows)
    return frame.astype({c: float for c in ("iou", "dice", "ap") if c in frame})


def check_classes(trained: TrainedModel, info: DatasetInfo) -> None:
    if tuple(trained.classes) != tuple(info.classes):
        raise DatasetError(
            f"{trained.checkpoint} was trained on classes {list(trained.classes)} but "
            f"{info.root} declares {list(info.classes)}; evaluate on data with the same classes"
        )


def write_tables(
    out: Path,
    summary: dict,
    scores: pd.DataFrame,
    per_class: pd.DataFrame,
    mat: np.ndarray,
    split: str,
    checkpoint: Path,
    info: DatasetInfo,
    protocol: dict,
) -> tuple:
    """metrics.json (scalars and per-class values: what `dvc metrics` reads), the CSVs, and
    confusion_matrix.csv (rows true class, columns predicted)."""
    metrics = {
        **summary,
        "split": split,
        "images": len(scores),
        "checkpoint": str(checkpoint),
        "dataset_hash": dataset_fingerprint(info),
        "protocol": protocol,
    }
    paths = (out / "metrics.json", out / "per_image.csv", out / "per_class.csv")
    paths[0].write_text(json.dumps(metrics, indent=2) + "\n")
    scores.to_csv(paths[1], index=False)
    per_class.to_csv(paths[2], index=False)
    pd.DataFrame(mat, index=info.classes, columns=info.classes).to_csv(out / "confusion_matrix.csv")
    return tuple(str(p) for p in paths)


def write_plots(
    plot_dir: Path,
    history: Path | None,
    per_class: pd.DataFrame,
    mat: np.ndarray,
    info: DatasetInfo,
    worst: list[dict],
) -> list[str]:
    figures = [
        plots.plot_per_class(per_class, plot_dir / "per_class_iou.png"),
        plots.plot_confusion(mat, list(info.classes), plot_dir / "confusion_matrix.png"),
        plots.plot_overlays(worst, plot_dir / "worst_overlays.png"),
    ]
    if history is not None and history.is_file():
        figures.insert(0, plots.plot_curves(pd.read_csv(history), plot_dir / "curves.png"))
    return [str(f) for f in figures]


def write_evaluation(
    trained: TrainedModel,
    scored: Scored,
    info: DatasetInfo,
    split: str,
    out: Path,
    history: Path | None = None,
) -> EvalReport:
    """Write what an evaluation writes under `out` (metrics.json with the inference protocol,
    per_image.csv, per_class.csv, confusion_matrix.csv, plots/) and return its EvalReport."""
    per_class = per_class_table(scored.summary, scored.mat)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    protocol = inference_protocol(trained)
    files = write_tables(
        out,
        scored.summary,
        scored.scores,
        per_class,
        scored.mat,
        split,
        trained.checkpoint,
        info,
        protocol,
    )
    figures = write_plots(out / "plots", history, per_class, scored.mat, info, scored.worst)
    means = [scored.summary[k] for k in ("mean_iou", "mean_dice", "pixel_accuracy")]
    fingerprint = dataset_fingerprint(info)
    return EvalReport(
        str(out), split, str(trained.checkpoint), fingerprint, *means, *files, tuple(figures)
    )

"""Evaluate a checkpoint on a dataset split: metrics.json, per-class and per-image tables, plots.

Metrics are computed at the model's input resolution (masks resized with nearest neighbour by
the evaluation preset), over every non-ignored pixel of the split.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from segops.config import Config
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import DatasetInfo, dataset_fingerprint, load_dataset
from segops.errors import DatasetError
from segops.evaluate import plots
from segops.inference import TrainedModel, default_device, load_trained, predict_image
from segops.metrics.confusion import ConfusionMatrix
from segops.metrics.semantic import per_image_scores, summarize


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


HEADLINE = ("mean_iou", "mean_dice", "pixel_accuracy", "mean_precision", "mean_recall", "mean_f1")
INSTANCE_HEADLINE = ("mask_ap", "mask_ap50", "mask_ap75", "mask_ar")  # instance models only


def headline_metrics(summary: dict) -> dict[str, float]:
    """The flat metrics logged per run, from metrics.json: the means and `iou.<class>`; for an
    instance model also the COCO mask metrics and `ap.<class>`."""
    metrics = {k: summary[k] for k in HEADLINE + INSTANCE_HEADLINE if k in summary}
    per_class = summary["per_class"].items()
    metrics |= {f"iou.{name}": v["iou"] for name, v in per_class}
    return metrics | {f"ap.{name}": v["ap"] for name, v in per_class if v.get("ap") is not None}


@torch.inference_mode()
def score_split(
    trained: TrainedModel,
    ds: SegmentationDataset,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple:
    """Dataset confusion matrix `[C, C]` and per-image matrices `[N, C, C]` (numpy int64),
    counted on the masks at their original resolution, predicted by `predict_image`: the
    inference `segops predict` and the served model run, so each figure is what users get.
    (`batch_size` is kept for callers; images are predicted one at a time.)"""
    matrix, per_image = ConfusionMatrix(len(trained.classes)), []
    for index in range(len(ds)):
        image, truth = ds.load(index)
        pred, _ = predict_image(trained, image)
        pair = torch.from_numpy(pred).long()[None], torch.from_numpy(truth).long()[None]
        per_image.append(matrix.update(*pair).cpu())
        if progress:
            progress(index + 1, len(ds))
    if not per_image:
        return matrix.compute(), np.zeros((0, len(trained.classes), len(trained.classes)), int)
    return matrix.compute(), torch.cat(per_image).numpy()


def inference_protocol(trained: TrainedModel) -> dict[str, object]:
    """How the figures of an evaluation were made (recorded in metrics.json; the gate compares
    a champion and a challenger only when both were scored at the original resolution)."""
    native = trained.config.data.crop_size is not None
    how = "sliding" if native else "resize (sliding window above 1.5x the input)"
    return {
        "resolution": "original",
        "inference": how if trained.kind == "semantic" else "detections painted at image size",
        "input_size": trained.input_size,
        "overlap": 0.5,
    } | ({"scale": trained.config.data.scale} if trained.config.data.scale else {})


def _per_class_table(summary: dict, mat: np.ndarray) -> pd.DataFrame:
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


def _worst_samples(
    trained: TrainedModel, ds: SegmentationDataset, scores: pd.DataFrame, k: int
) -> list[dict]:
    """Original-size image, truth and prediction of the `k` lowest-IoU images."""
    out = []
    for index in scores.sort_values("iou").index[:k]:
        image, truth = ds.load(int(index))
        pred, _ = predict_image(trained, image)
        out.append(
            {
                "id": ds.ids[index],
                "image": image,
                "truth": truth,
                "pred": pred,
                "iou": float(scores.loc[index, "iou"]),
            }
        )
    return out


def _check_classes(trained: TrainedModel, info: DatasetInfo) -> None:
    if tuple(trained.classes) != tuple(info.classes):
        raise DatasetError(
            f"{trained.checkpoint} was trained on classes {list(trained.classes)} but "
            f"{info.root} declares {list(info.classes)}; evaluate on data with the same classes"
        )


def evaluate_checkpoint(
    cfg: Config,
    checkpoint: str | Path | None = None,
    split: str | None = None,
    out_dir: str | Path | None = None,
    dataset: DatasetInfo | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Evaluate `checkpoint` (default: best of `cfg.train.out_dir`) on `split` of `cfg.data`.

    Writes under `out_dir` (default: `<train.out_dir>/eval`); see `evaluate_model`.
    """
    run_dir = Path(cfg.train.out_dir)
    checkpoint = Path(checkpoint or run_dir / "checkpoints" / "best.pt")
    trained = load_trained(checkpoint, default_device())
    out = Path(out_dir or run_dir / "eval")
    return evaluate_model(trained, cfg, split, out, dataset, progress, run_dir / "history.csv")


def evaluate_model(
    trained: TrainedModel,
    cfg: Config,
    split: str | None,
    out: Path,
    dataset: DatasetInfo | None = None,
    progress: Callable[[int, int], None] | None = None,
    history: Path | None = None,
) -> EvalReport:
    """Score `trained` on `split` of `cfg.data`: metrics.json, per_class.csv, per_image.csv and
    plots/ (curves too when a `history` CSV exists) under `out`. Returns the EvalReport.
    An instance model is scored by `segops.evaluate.instance_report` (same files, plus AP)."""
    if trained.kind == "instance":
        from segops.evaluate.instance_report import evaluate_instance_model

        return evaluate_instance_model(trained, cfg, split, out, dataset, progress, history)
    split = split or cfg.evaluate.split
    info = dataset or load_dataset(cfg.data, eval_split=split)
    _check_classes(trained, info)
    ds = SegmentationDataset(info.root, info.split(split), trained.transform())
    mat, per_image = score_split(trained, ds, cfg.evaluate.batch_size, progress)
    summary = summarize(mat, info.classes)
    ious, dices = per_image_scores(per_image)
    correct = np.trace(per_image, axis1=1, axis2=2) / np.maximum(per_image.sum((1, 2)), 1)
    scores = pd.DataFrame({"id": ds.ids, "iou": ious, "dice": dices, "pixel_accuracy": correct})
    per_class = _per_class_table(summary, mat)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    protocol = inference_protocol(trained)
    files = _write_tables(
        out, summary, scores, per_class, mat, split, trained.checkpoint, info, protocol
    )
    worst = _worst_samples(trained, ds, scores, cfg.evaluate.worst_k)
    figures = _write_plots(out / "plots", history, per_class, mat, info, worst)
    return EvalReport(
        str(out),
        split,
        str(trained.checkpoint),
        dataset_fingerprint(info),
        summary["mean_iou"],
        summary["mean_dice"],
        summary["pixel_accuracy"],
        *files,
        tuple(figures),
    )


def _write_tables(
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


def _write_plots(
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

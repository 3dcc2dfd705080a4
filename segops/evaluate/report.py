"""Evaluate a checkpoint on a dataset split: metrics.json, per-class and per-image tables, plots.

Metrics are computed on the masks at their original resolution, predicted the way `segops
predict` and the served model predict (`predict_image`), over every non-ignored pixel of the
split. What is written is defined in `segops.evaluate.outputs`; instance models are scored by
`segops.evaluate.instance_report`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from segops.config import Config
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import DatasetInfo, load_dataset

__all__ = [  # also read from here by the steps, the gate, the CLI and the HTML report
    "HEADLINE",
    "INSTANCE_HEADLINE",
    "EvalReport",
    "evaluate_checkpoint",
    "evaluate_model",
    "headline_metrics",
    "inference_protocol",
    "score_split",
]
from segops.evaluate.instance_report import score_instances
from segops.evaluate.outputs import (
    HEADLINE,
    INSTANCE_HEADLINE,
    EvalReport,
    Progress,
    Scored,
    check_classes,
    headline_metrics,
    inference_protocol,
    write_evaluation,
)
from segops.inference import TrainedModel, default_device, load_trained, predict_image
from segops.metrics.confusion import ConfusionMatrix
from segops.metrics.semantic import per_image_scores, summarize
from segops.train.device import inference_threads


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
    history, threads = run_dir / "history.csv", run_threads(cfg, checkpoint)
    return evaluate_model(trained, cfg, split, out, dataset, progress, history, threads)


def run_threads(cfg: Config, checkpoint: Path) -> int | None:
    """The thread count a run's own evaluation uses: `train.threads` when it is a number, else
    the count its training kept (`checkpoints/threads.txt`), so that reproduce, which trains
    with the recorded count, evaluates alike; None (`predict.threads`) when there is neither."""
    if cfg.train.threads != "auto":
        return int(cfg.train.threads)
    record = Path(checkpoint).parent / "threads.txt"
    text = record.read_text().strip() if record.is_file() else ""
    return int(text) if text.isdigit() and int(text) > 0 else None


def evaluate_model(
    trained: TrainedModel,
    cfg: Config,
    split: str | None,
    out: Path,
    dataset: DatasetInfo | None = None,
    progress: Callable[[int, int], None] | None = None,
    history: Path | None = None,
    threads: int | str | None = None,
) -> EvalReport:
    """Score `trained` on `split` of `cfg.data`: metrics.json, per_class.csv, per_image.csv and
    plots/ (curves too when a `history` CSV exists) under `out`. Returns the EvalReport.
    torch uses `threads` CPU threads (default `predict.threads`; recorded in the protocol).
    An instance model is scored by `segops.evaluate.instance_report` (same files, plus AP)."""
    setting, key = (
        (cfg.predict.threads, "predict.threads")
        if threads is None
        else (threads, "the run's threads")
    )
    trained.threads = inference_threads(setting, key).threads
    split = split or cfg.evaluate.split
    info = dataset or load_dataset(cfg.data, eval_split=split)
    check_classes(trained, info)
    score = score_instances if trained.kind == "instance" else _score_semantic
    scored = score(trained, cfg, info, split, progress)
    return write_evaluation(trained, scored, info, split, out, history)


def _score_semantic(
    trained: TrainedModel, cfg: Config, info: DatasetInfo, split: str, progress: Progress = None
) -> Scored:
    """Score semantic model `trained` on `split` of `info`: every original pixel counts."""
    ds = SegmentationDataset(info.root, info.split(split), trained.transform())
    mat, per_image = score_split(trained, ds, cfg.evaluate.batch_size, progress)
    summary = summarize(mat, info.classes)
    ious, dices = per_image_scores(per_image)
    correct = np.trace(per_image, axis1=1, axis2=2) / np.maximum(per_image.sum((1, 2)), 1)
    scores = pd.DataFrame({"id": ds.ids, "iou": ious, "dice": dices, "pixel_accuracy": correct})
    return Scored(summary, scores, mat, _worst_samples(trained, ds, scores, cfg.evaluate.worst_k))

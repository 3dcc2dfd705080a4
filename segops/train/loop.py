"""`train`: a semantic model trained by `segops.train.fit.fit` (see there for what it writes).

The semantic loop's pieces live in `segops.train.semantic`; this module keeps the names
callers (CLI, tests, benchmarks) import from it.
"""

from __future__ import annotations

from segops.config import Config
from segops.data.manifest import DatasetInfo, load_dataset
from segops.train.callbacks import Callback
from segops.train.fit import TrainResult, epoch_seed, fit, seed_everything
from segops.train.semantic import SemanticTask, make_loaders, validate

__all__ = [
    "TrainResult",
    "epoch_seed",
    "make_loaders",
    "seed_everything",
    "train",
    "validate",
]


def train(
    cfg: Config,
    *,
    resume: bool = False,
    callbacks: list[Callback] | tuple = (),
    dataset: DatasetInfo | None = None,
) -> TrainResult:
    """Train semantic `cfg.model` on `cfg.data` (loaded and checked unless `dataset` is given).

    With `resume`, continues from `out_dir/checkpoints/last.pt` when it exists (refusing one
    made with another config or dataset) and ends with the same weights as an uninterrupted run.
    """
    info = dataset or load_dataset(cfg.data, eval_split="val")
    return fit(cfg, SemanticTask(cfg, info), resume=resume, callbacks=callbacks)

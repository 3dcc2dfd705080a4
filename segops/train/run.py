"""Train whatever `cfg.model` names: one entry point for `segops train`, the flow and reproduce.

Semantic models go through `segops.train.loop.train`; instance models (Mask R-CNN) through
`segops.train.instance.train_instance` on the dataset's instance targets (`data.format` coco or
folder_instance). Both return a `TrainResult` (for an instance model, `best_miou` is the
validation mean IoU of the painted masks at the epoch with the best mask AP).
"""

from __future__ import annotations

import math

import pandas as pd

from segops.config import Config
from segops.data.manifest import DatasetInfo, dataset_fingerprint, load_dataset
from segops.data.registry import format_info, format_names
from segops.errors import ConfigError
from segops.models import check_options, model_info
from segops.models.pretrained import check_pretrained_file
from segops.train.callbacks import Callback
from segops.train.loop import TrainResult, train


def model_kind(cfg: Config) -> str:
    """The kind of `cfg.model.name`, "semantic" or "instance" (ConfigError if unknown)."""
    return model_info(cfg.model.name).kind


def check_model_config(cfg: Config) -> None:
    """ConfigError for an unknown `model.name`, `model.options` it does not take, or an
    instance model asked to train on data without instances: cheap, so callers check first."""
    check_options(cfg.model.name, dict(cfg.model.options))
    check_pretrained_file(cfg.model.pretrained)  # a bad weights file, before anything runs
    if model_kind(cfg) == "instance" and not format_info(cfg.data.format).instances:
        raise ConfigError(
            f"model.name {cfg.model.name!r} is an instance model and needs instance annotations,"
            f" but data.format is {cfg.data.format!r}: use one of {format_names(instances=True)} "
            "(e.g. `segops data shapes --instances folder` and data.format=folder_instance)"
        )


def train_configured(
    cfg: Config,
    *,
    resume: bool = False,
    callbacks: list[Callback] | tuple = (),
    dataset: DatasetInfo | None = None,
) -> TrainResult:
    """Train `cfg.model` on `cfg.data` whatever its kind (see the module docstring).

    `resume` continues from `<train.out_dir>/checkpoints/last.pt` when it exists, exactly.
    """
    check_model_config(cfg)
    if model_kind(cfg) == "semantic":
        return train(cfg, resume=resume, callbacks=callbacks, dataset=dataset)
    info = dataset or load_dataset(cfg.data, eval_split="val")
    return _train_instance(cfg, callbacks, info, resume)


def _train_instance(cfg: Config, callbacks, info: DatasetInfo, resume: bool) -> TrainResult:
    from segops.data.instance_dataset import InstanceDataset, instance_transforms
    from segops.train.instance import train_instance

    flip = instance_transforms(cfg.augment.hflip) if cfg.augment.hflip > 0 else None
    fit = InstanceDataset(info.split("train"), root=info.root, transforms=flip)
    val = InstanceDataset(info.split("val"), root=info.root)
    fingerprint = dataset_fingerprint(info)
    result = train_instance(
        cfg, fit, val, callbacks=callbacks, classes=list(info.classes),
        dataset_hash=fingerprint, resume=resume,
    )  # fmt: skip
    history = pd.read_csv(result.history_csv)
    best = history.loc[history["epoch"] == result.best_epoch, "val_miou"]
    miou = float(best.iloc[0]) if len(best) else math.nan
    return TrainResult(
        result.out_dir, result.last_checkpoint, result.best_checkpoint, result.best_epoch, miou,
        result.epochs_run, False, result.config_hash, fingerprint, result.history_csv,
    )  # fmt: skip

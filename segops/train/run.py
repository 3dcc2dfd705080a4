"""Train whatever `cfg.model` names: one entry point for `segops train`, the flow and reproduce.

Both kinds go through `segops.train.fit.fit`: semantic models as a `SemanticTask`
(`segops.train.semantic`), instance models (Mask R-CNN) as an `InstanceTask`
(`segops.train.instance`) on the dataset's instance targets (a `data.format` with instances).
Both return a `TrainResult` (for an instance model, `best_miou` is the validation mean IoU of
the painted masks at the epoch with the best mask AP).

With `train.distributed` asking for more than one process, `train_configured` launches torchrun
(`segops.train.launch`), whose ranks come back here with their `world`.
"""

from __future__ import annotations

from segops.config import Config
from segops.data.manifest import DatasetInfo, load_dataset
from segops.data.registry import format_info, format_names
from segops.errors import ConfigError
from segops.models import check_options, model_info
from segops.models.pretrained import check_pretrained_file
from segops.train.callbacks import Callback
from segops.train.distributed import SINGLE, World
from segops.train.fit import TrainResult, fit
from segops.train.instance import instance_task
from segops.train.launch import launch, plan_launch
from segops.train.semantic import SemanticTask


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
    world: World | None = None,
) -> TrainResult:
    """Train `cfg.model` on `cfg.data` whatever its kind (see the module docstring).

    `resume` continues from `<train.out_dir>/checkpoints/last.pt` when it exists, exactly.
    `world` is given inside a torchrun rank only; elsewhere a world size above one (or a
    rendezvous endpoint) launches torchrun and returns rank 0's result.
    """
    check_model_config(cfg)
    if world is None and (plan_launch(cfg).world_size > 1 or cfg.train.distributed.rdzv_endpoint):
        if dataset is None:  # checked, and its split files written, before ranks read it
            load_dataset(cfg.data, eval_split="val")
        return launch(cfg, resume=resume, callbacks=callbacks)
    info = dataset or load_dataset(cfg.data, eval_split="val", write_splits=world is None)
    semantic = model_kind(cfg) == "semantic"
    task = SemanticTask(cfg, info) if semantic else instance_task(cfg, info)
    return fit(cfg, task, resume=resume, callbacks=callbacks, world=world or SINGLE)

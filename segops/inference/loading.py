"""Trained models back from checkpoints or from a logged model's files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from segops.config import Config, build_config
from segops.data.transforms import eval_transform
from segops.errors import CheckpointError, ConfigError
from segops.models import build_model, model_info
from segops.predict_config import PredictConfig
from segops.train.checkpoint import load_checkpoint
from segops.train.device import inference_threads
from segops.weights import load_state_dict_file


@dataclass
class TrainedModel:
    model: nn.Module  # in eval mode, on `device`
    config: Config  # the resolved config it was trained with
    classes: tuple[str, ...]
    checkpoint: Path
    device: torch.device
    kind: str = "semantic"  # "semantic" (logits) or "instance" (torchvision detection API)
    threads: int = 0  # torch CPU threads its loading applied (`predict.threads`); 0: not set
    _transform: Any = field(default=None, init=False, repr=False, compare=False)

    def transform(self) -> Any:
        """The evaluation transform (`eval_transform`), built once: it is stateless."""
        if self._transform is None:
            data = self.config.data
            native = data.crop_size is not None
            self._transform = eval_transform(self.config.augment, data.image_size, native)
        return self._transform

    @property
    def input_size(self) -> int:
        """Side of the windows the model sees: `data.crop_size` at native resolution, else
        `data.image_size` (whole images resized to it)."""
        return self.config.data.crop_size or self.config.data.image_size


def _assemble(
    state: dict, config: dict, classes: list[str], source: Path, device: str | torch.device
) -> TrainedModel:
    cfg = build_config(config, f"{source} (embedded config)")
    kind = model_info(cfg.model.name).kind
    options = dict(cfg.model.options)
    if kind == "instance":  # as segops.train.instance.build_instance_model builds it
        options = {"min_size": cfg.data.image_size, **options}
    model = build_model(cfg.model.name, num_classes=len(classes), **options)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:  # names or shapes do not fit
        detail = str(exc).splitlines()[1:4] or [type(exc).__name__]
        raise CheckpointError(
            f"{source}: its weights do not fit model {cfg.model.name!r} with {len(classes)} "
            f"classes ({' '.join(line.strip() for line in detail)[:400]})"
        ) from None
    device = torch.device(device)
    threads = inference_threads(cfg.predict.threads).threads  # as it will score
    model = model.to(device).eval()
    return TrainedModel(model, cfg, tuple(classes), source, device, kind, threads)


def with_predict(trained: TrainedModel, settings: dict[str, Any]) -> TrainedModel:
    """`trained` scoring with its `predict` section updated by `settings` (e.g. `threads`,
    `max_tile`, `overlap` from `segops predict` flags or a served model's config), validated
    as in params.yaml; a new `threads` is applied now. ConfigError for a bad key or value."""
    if not settings:
        return trained
    try:
        predict = PredictConfig.model_validate(trained.config.predict.model_dump() | settings)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"predict settings {settings}: {details}") from None
    threads = trained.threads
    if "threads" in settings:
        threads = inference_threads(predict.threads).threads
    config = trained.config.model_copy(update={"predict": predict})
    return replace(trained, config=config, threads=threads)


def require_semantic_model(trained: TrainedModel, what: str) -> None:
    """ConfigError unless `trained` is a semantic model: `what` says what needs one."""
    if trained.kind != "semantic":
        raise ConfigError(
            f"{what} works on semantic models; {trained.checkpoint} is a {trained.kind} model "
            f"({trained.config.model.name})"
        )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_trained(checkpoint: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model a checkpoint describes and load its weights (weights_only)."""
    ckpt = load_checkpoint(checkpoint)
    return _assemble(ckpt["model"], ckpt["config"], ckpt["classes"], Path(checkpoint), device)


def load_model_files(
    weights: str | Path, meta: str | Path, device: str | torch.device = "cpu"
) -> TrainedModel:
    """Rebuild a model from a logged model's `weights.pt` (state dict) and `model.json`.

    CheckpointError (naming the file) for weights that are not a plain state dict (loaded
    with `weights_only=True`, see `segops.weights`) or a `model.json` that is not one."""
    try:
        info = json.loads(Path(meta).read_text())
        config, classes = info["config"], list(info["classes"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{meta}: not a model description (model.json with config and classes): {exc!r}"
        ) from None
    state = load_state_dict_file(weights)
    return _assemble(state, config, classes, Path(weights), device)

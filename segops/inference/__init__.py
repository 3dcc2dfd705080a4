"""Trained models back from checkpoints, and prediction at an image's original size."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segops.config import Config, build_config
from segops.data.transforms import eval_transform, to_tv
from segops.models import build_model, model_info
from segops.train.checkpoint import load_checkpoint


@dataclass
class TrainedModel:
    model: nn.Module  # in eval mode, on `device`
    config: Config  # the resolved config it was trained with
    classes: tuple[str, ...]
    checkpoint: Path
    device: torch.device
    kind: str = "semantic"  # "semantic" (logits) or "instance" (torchvision detection API)

    def transform(self):
        data = self.config.data
        return eval_transform(self.config.augment, data.image_size, data.crop_size is not None)

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
        from segops.errors import CheckpointError

        detail = str(exc).splitlines()[1:4] or [type(exc).__name__]
        raise CheckpointError(
            f"{source}: its weights do not fit model {cfg.model.name!r} with {len(classes)} "
            f"classes ({' '.join(line.strip() for line in detail)[:400]})"
        ) from None
    device = torch.device(device)
    return TrainedModel(model.to(device).eval(), cfg, tuple(classes), source, device, kind)


def require_semantic_model(trained: TrainedModel, what: str) -> None:
    """ConfigError unless `trained` is a semantic model: `what` says what needs one."""
    from segops.errors import ConfigError

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
    from segops.errors import CheckpointError
    from segops.weights import load_state_dict_file

    try:
        info = json.loads(Path(meta).read_text())
        config, classes = info["config"], list(info["classes"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{meta}: not a model description (model.json with config and classes): {exc!r}"
        ) from None
    state = load_state_dict_file(weights)
    return _assemble(state, config, classes, Path(weights), device)


@torch.inference_mode()
def predict_instances_image(
    trained: TrainedModel, image: np.ndarray, mask_threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """An instance model's detections on one HxWx3 uint8 image, at the image's size:
    `masks` bool [N,H,W], `labels` int64 [N] (class ids 1..K), `scores` float32 [N] (highest
    first) and `boxes` float32 [N,4] (x0, y0, x1, y1). The model resizes internally."""
    if trained.kind != "instance":
        raise ValueError(f"{trained.checkpoint} is a {trained.kind} model, not an instance model")
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
    (out,) = trained.model([tensor.to(trained.device)])
    masks = out["masks"].detach().float().cpu()
    masks = masks[:, 0] if masks.ndim == 4 else masks
    return {
        "masks": (masks > mask_threshold).numpy(),
        "labels": out["labels"].cpu().numpy().astype(np.int64),
        "scores": out["scores"].float().cpu().numpy(),
        "boxes": out["boxes"].float().cpu().numpy(),
    }


SLIDE_ABOVE = 1.5  # a side longer than this many input sizes is predicted tile by tile


@torch.inference_mode()
def predict_image(
    trained: TrainedModel, image: np.ndarray, sliding: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mask (HxW uint8 class ids) and class probabilities (CxHxW float32) at the image's size.

    An instance model's mask is painted from its detections (`predict_instances_image`).
    A model trained at native resolution (`data.crop_size`) always predicts with a sliding
    window of that side. Otherwise images up to `SLIDE_ABOVE` times the model's input size
    are resized to it and the logits resized back bilinearly; larger ones (or `sliding=True`)
    are predicted at native resolution with a sliding window, so small objects are not shrunk
    away.
    """
    if trained.kind == "instance":
        return _painted(trained, image)
    if trained.config.data.crop_size is not None:
        sliding = True
    elif sliding is None:
        sliding = max(image.shape[:2]) > SLIDE_ABOVE * trained.config.data.image_size
    probs = sliding_probs(trained, image) if sliding else _resized_probs(trained, image)
    return probs.argmax(0).byte().cpu().numpy(), probs.cpu().numpy()


def _painted(trained: TrainedModel, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An instance model's (class map painted from its detections scoring >= 0.5, one-hot
    probabilities of that map): what semantic consumers of `predict_image` need."""
    from segops.metrics.instance import semantic_from_instances

    found = predict_instances_image(trained, image)
    classes = len(trained.classes)
    mask = semantic_from_instances(found, classes, *image.shape[:2]).astype(np.uint8)
    return mask, np.eye(classes, dtype=np.float32)[mask].transpose(2, 0, 1)


def _resized_probs(trained: TrainedModel, image: np.ndarray) -> torch.Tensor:
    (tensor,) = to_tv(image)
    tensor = trained.transform()(tensor).as_subclass(torch.Tensor)
    logits = trained.model(tensor.unsqueeze(0).to(trained.device)).float()
    logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits.softmax(1)[0]


def _normalised(trained: TrainedModel, image: np.ndarray) -> torch.Tensor:
    """`[3, H, W]` float image normalised as in training, at its own size."""
    aug = trained.config.augment
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(aug.mean).view(3, 1, 1), torch.tensor(aug.std).view(3, 1, 1)
    return (tensor - mean) / std


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of windows covering `[0, length)`; the last one ends exactly at `length`."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


@torch.inference_mode()
def sliding_probs(
    trained: TrainedModel, image: np.ndarray, overlap: float = 0.5, batch: int = 8
) -> torch.Tensor:
    """Class probabilities `[C, H, W]` averaged over overlapping windows of the input size.

    The image is zero-padded (the mean colour, after normalising) up to one window where it is
    smaller; windows go through the model `batch` at a time.
    """
    win = trained.input_size
    stride = max(1, int(win * (1 - overlap)))
    x = _normalised(trained, image)
    height, width = x.shape[1:]
    x = F.pad(x, (0, max(0, win - width), 0, max(0, win - height)))
    tiles = [
        (i, j)
        for i in window_starts(x.shape[1], win, stride)
        for j in window_starts(x.shape[2], win, stride)
    ]
    total = torch.zeros(len(trained.classes), *x.shape[1:])
    count = torch.zeros(1, *x.shape[1:])
    for k in range(0, len(tiles), batch):
        chunk = tiles[k : k + batch]
        windows = torch.stack([x[:, i : i + win, j : j + win] for i, j in chunk])
        logits = trained.model(windows.to(trained.device)).float()
        logits = F.interpolate(logits, size=(win, win), mode="bilinear", align_corners=False)
        for (i, j), probs in zip(chunk, logits.softmax(1).cpu(), strict=True):
            total[:, i : i + win, j : j + win] += probs
            count[:, i : i + win, j : j + win] += 1
    return (total / count)[:, :height, :width]

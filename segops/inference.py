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
from segops.models import build_model
from segops.train.checkpoint import load_checkpoint


@dataclass
class TrainedModel:
    model: nn.Module  # in eval mode, on `device`
    config: Config  # the resolved config it was trained with
    classes: tuple[str, ...]
    checkpoint: Path
    device: torch.device

    def transform(self):
        return eval_transform(self.config.augment, self.config.data.image_size)


def _assemble(
    state: dict, config: dict, classes: list[str], source: Path, device: str | torch.device
) -> TrainedModel:
    cfg = build_config(config, f"{source} (embedded config)")
    model = build_model(cfg.model.name, num_classes=len(classes), **cfg.model.options)
    model.load_state_dict(state)
    device = torch.device(device)
    return TrainedModel(model.to(device).eval(), cfg, tuple(classes), source, device)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_trained(checkpoint: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model a checkpoint describes and load its weights (weights_only)."""
    ckpt = load_checkpoint(checkpoint)
    return _assemble(ckpt["model"], ckpt["config"], ckpt["classes"], Path(checkpoint), device)


def load_model_files(
    weights: str | Path, meta: str | Path, device: str | torch.device = "cpu"
) -> TrainedModel:
    """Rebuild a model from a logged model's `weights.pt` (state dict) and `model.json`."""
    info = json.loads(Path(meta).read_text())
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return _assemble(state, info["config"], info["classes"], Path(weights), device)


@torch.inference_mode()
def predict_image(trained: TrainedModel, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask (HxW uint8 class ids) and class probabilities (CxHxW float32) at the image's size.

    The image is resized to the model's input size; logits are resized back bilinearly.
    """
    (tensor,) = to_tv(image)
    tensor = trained.transform()(tensor).as_subclass(torch.Tensor)
    logits = trained.model(tensor.unsqueeze(0).to(trained.device)).float()
    logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    probs = logits.softmax(1)[0]
    return probs.argmax(0).byte().cpu().numpy(), probs.cpu().numpy()

"""Trained models back from checkpoints, and prediction at an image's original size."""

from __future__ import annotations

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


def load_trained(checkpoint: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model a checkpoint describes and load its weights (weights_only)."""
    ckpt = load_checkpoint(checkpoint)
    cfg = build_config(ckpt["config"], f"{checkpoint} (embedded config)")
    model = build_model(cfg.model.name, num_classes=len(ckpt["classes"]), **cfg.model.options)
    model.load_state_dict(ckpt["model"])
    device = torch.device(device)
    return TrainedModel(
        model.to(device).eval(), cfg, tuple(ckpt["classes"]), Path(checkpoint), device
    )


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

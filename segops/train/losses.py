"""Losses over logits `[N, C, H, W]` and targets `[N, H, W]` with 255 as ignore."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segops.config import IGNORE_INDEX


class DiceLoss(nn.Module):
    """1 - mean soft Dice over classes, computed over the whole batch; ignore pixels masked."""

    def __init__(self, smooth: float = 1.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.smooth = smooth
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = logits.shape[1]
        valid = (target != IGNORE_INDEX).unsqueeze(1)  # [N, 1, H, W]
        probs = logits.float().softmax(1) * valid
        onehot = F.one_hot(target.clamp(max=c - 1), c).permute(0, 3, 1, 2) * valid
        inter = (probs * onehot).sum((0, 2, 3))
        card = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        score = (2 * inter + self.smooth) / (card + self.smooth)  # [C]
        if self.weight is None:
            return 1 - score.mean()
        return 1 - (score * self.weight).sum() / self.weight.sum()


class CombinedLoss(nn.Module):
    """Cross-entropy plus Dice, equally weighted."""

    def __init__(self, weight: torch.Tensor | None) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE_INDEX)
        self.dice = DiceLoss(weight=weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, target) + self.dice(logits, target)


def balanced_weights(class_pixels: np.ndarray) -> list[float]:
    """Inverse-frequency weights normalised to mean 1; classes never seen get 1."""
    counts = np.asarray(class_pixels, dtype=np.float64)
    seen = counts > 0
    weights = np.ones_like(counts)
    weights[seen] = counts[seen].sum() / (seen.sum() * counts[seen])
    weights[seen] /= weights[seen].mean()
    return [round(float(w), 6) for w in weights]


def build_loss(name: str, weights: list[float] | None) -> nn.Module:
    """`ce`, `dice` or `ce_dice`, with optional per-class weights."""
    w = torch.tensor(weights, dtype=torch.float32) if weights else None
    if name == "ce":
        return nn.CrossEntropyLoss(weight=w, ignore_index=IGNORE_INDEX)
    if name == "dice":
        return DiceLoss(weight=w)
    if name == "ce_dice":
        return CombinedLoss(w)
    raise ValueError(f"unknown loss {name!r}; choose ce, dice or ce_dice")

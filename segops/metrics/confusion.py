"""Confusion-matrix accumulators: one `bincount` per batch, for the dataset and per image.

Rows are the true class, columns the predicted class. Pixels whose truth is `ignore_index` are
left out entirely.
"""

from __future__ import annotations

import numpy as np
import torch

from segops.config import IGNORE_INDEX


def batch_confusion(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per-image confusion matrices `[N, C, C]` (int64) of `pred` and `target` (`[N, H, W]`)."""
    n, c = target.shape[0], num_classes
    valid = target != ignore_index  # [N, H, W]
    image = torch.arange(n, device=target.device).view(n, 1, 1).expand_as(target)
    index = image[valid] * c * c + target[valid].long() * c + pred[valid].long()
    return torch.bincount(index, minlength=n * c * c).view(n, c, c)


class ConfusionMatrix:
    """Accumulates a `[C, C]` confusion matrix over batches (kept on the data's device)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat: torch.Tensor | None = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add a batch; returns its per-image matrices `[N, C, C]`."""
        per_image = batch_confusion(pred, target, self.num_classes, self.ignore_index)
        total = per_image.sum(0)
        self.mat = total if self.mat is None else self.mat + total
        return per_image

    def compute(self) -> np.ndarray:
        """The accumulated `[C, C]` matrix as int64 numpy (zeros before any update)."""
        if self.mat is None:
            return np.zeros((self.num_classes, self.num_classes), np.int64)
        return self.mat.cpu().numpy().astype(np.int64)

"""Many images through a semantic model in few forward passes, each mask as if predicted alone.

Every image becomes pieces of one shape: a model trained on whole images sees each image
resized to `data.image_size` (one piece), or, above `SLIDE_ABOVE` times that size, sliding
windows of the same side; a model trained on crops sees windows of `data.crop_size`. Pieces go
through the network `batch_size` at a time in image order, whatever the images' sizes, and
each image's logits are brought back to its own size exactly as `predict_image` does: bilinear
resizing, or windows averaged. An image's mask is finished (and its buffers freed) as soon as
its last piece has been through the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F

from segops.inference.inputs import (
    WindowSum,
    resized_input,
    uses_sliding,
    window_grid,
    window_probs,
)
from segops.inference.loading import TrainedModel


@dataclass
class _Pending:
    """One image on its way through: its pieces not yet predicted, and where they add up."""

    index: int
    size: tuple[int, int]
    left: int
    windows: WindowSum | None = None  # None: one resized piece
    probs: torch.Tensor | None = field(default=None, repr=False)


def _pieces(
    trained: TrainedModel, images: list[np.ndarray]
) -> Iterator[tuple[_Pending, tuple[int, int] | None, torch.Tensor]]:
    """(image state, window corner or None, `[3, s, s]` input) for every piece, in order."""
    win = trained.input_size
    for index, image in enumerate(images):
        size = tuple(image.shape[:2])
        if not uses_sliding(trained, image):
            yield _Pending(index, size, 1), None, resized_input(trained, image)
            continue
        x, tiles = window_grid(trained, image)
        state = _Pending(
            index, size, len(tiles), WindowSum(len(trained.classes), x.shape[1:], size)
        )
        for i, j in tiles:
            yield state, (i, j), x[:, i : i + win, j : j + win]


def _take(state: _Pending, corner: tuple[int, int] | None, logits: torch.Tensor, win: int):
    """Add one piece's `[1, C, h, w]` logits to its image."""
    if corner is None:  # as segops.inference._resized_probs
        logits = F.interpolate(
            logits.float(), size=state.size, mode="bilinear", align_corners=False
        )
        state.probs = logits.softmax(1)[0]
    else:
        state.windows.add(*corner, window_probs(logits, win)[0])
    state.left -= 1


@torch.inference_mode()
def batched_masks(
    trained: TrainedModel, images: list[np.ndarray], batch_size: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, HxW uint8 mask) for each of `images` (HxWx3 uint8, any sizes), in order, from
    forward passes of up to `batch_size` pieces."""
    win = trained.input_size
    stream = _pieces(trained, images)
    while batch := list(islice(stream, batch_size)):
        logits = trained.model(torch.stack([t for *_, t in batch]).to(trained.device))
        for k, (state, corner, _) in enumerate(batch):
            _take(state, corner, logits[k : k + 1], win)
            if state.left == 0:
                probs = state.probs if state.windows is None else state.windows.probs()
                yield state.index, probs.argmax(0).byte().cpu().numpy()
                state.probs = state.windows = None

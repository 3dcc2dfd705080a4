"""What the network sees of an image: one resized input, or sliding windows at native size."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from segops.data.transforms import rescale_image, to_tv
from segops.inference.loading import TrainedModel

SLIDE_ABOVE = 1.5  # a side longer than this many input sizes is predicted tile by tile


def uses_sliding(trained: TrainedModel, image: np.ndarray, sliding: bool | None = None) -> bool:
    """Whether a semantic model predicts `image` with a sliding window (see `predict_image`)."""
    if trained.config.data.crop_size is not None:
        return True
    if sliding is None:
        return max(image.shape[:2]) > SLIDE_ABOVE * trained.config.data.image_size
    return sliding


def at_data_scale(
    trained: TrainedModel, image: np.ndarray, probs_of: Callable[[np.ndarray], torch.Tensor]
) -> torch.Tensor:
    """`probs_of(image)` (`[C, h, w]` class probabilities) for a model trained on images
    resized by `data.scale`: the image is resized by it as in training
    (`segops.data.transforms.rescale_image`), the probabilities brought back bilinearly to the
    image's own size (`[C, H, W]`), where masks are compared with the truth."""
    factor = trained.config.data.scale
    if factor is None or factor == 1:
        return probs_of(image)
    probs = probs_of(rescale_image(image, factor))
    return F.interpolate(probs[None], image.shape[:2], mode="bilinear", align_corners=False)[0]


def resized_input(trained: TrainedModel, image: np.ndarray) -> torch.Tensor:
    """`[3, S, S]` float: the image resized to the model's input size and normalised."""
    (tensor,) = to_tv(image)
    return trained.transform()(tensor).as_subclass(torch.Tensor)


def normalised(trained: TrainedModel, image: np.ndarray) -> torch.Tensor:
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


def window_grid(
    trained: TrainedModel, image: np.ndarray, overlap: float = 0.5
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The normalised image zero-padded (the mean colour) up to one window where it is
    smaller, `[3, H', W']`, and the top-left corners of the windows covering it, row by row."""
    win = trained.input_size
    stride = max(1, int(win * (1 - overlap)))
    x = normalised(trained, image)
    height, width = x.shape[1:]
    x = F.pad(x, (0, max(0, win - width), 0, max(0, win - height)))
    tiles = [
        (i, j)
        for i in window_starts(x.shape[1], win, stride)
        for j in window_starts(x.shape[2], win, stride)
    ]
    return x, tiles


class WindowSum:
    """Class probabilities of an image's windows, added up and averaged (`[C, H, W]`)."""

    def __init__(self, classes: int, padded: tuple[int, int], size: tuple[int, int]) -> None:
        self.total = torch.zeros(classes, *padded)
        self.count = torch.zeros(1, *padded)
        self.size = size

    def add(self, i: int, j: int, probs: torch.Tensor) -> None:
        win = probs.shape[-1]
        self.total[:, i : i + win, j : j + win] += probs
        self.count[:, i : i + win, j : j + win] += 1

    def probs(self) -> torch.Tensor:
        height, width = self.size
        return (self.total / self.count)[:, :height, :width]


def window_probs(logits: torch.Tensor, win: int) -> torch.Tensor:
    """`[N, C, win, win]` probabilities from the network's `[N, C, h, w]` window logits."""
    logits = F.interpolate(logits.float(), size=(win, win), mode="bilinear", align_corners=False)
    return logits.softmax(1).cpu()


@torch.inference_mode()
def sliding_probs(
    trained: TrainedModel, image: np.ndarray, overlap: float = 0.5, batch: int = 8
) -> torch.Tensor:
    """Class probabilities `[C, H, W]` averaged over overlapping windows of the input size.

    The image is zero-padded (the mean colour, after normalising) up to one window where it is
    smaller; windows go through the model `batch` at a time.
    """
    win = trained.input_size
    x, tiles = window_grid(trained, image, overlap)
    acc = WindowSum(len(trained.classes), tuple(x.shape[1:]), tuple(image.shape[:2]))
    for k in range(0, len(tiles), batch):
        chunk = tiles[k : k + batch]
        windows = torch.stack([x[:, i : i + win, j : j + win] for i, j in chunk])
        probs = window_probs(trained.model(windows.to(trained.device)), win)
        for (i, j), p in zip(chunk, probs, strict=True):
            acc.add(i, j, p)
    return acc.probs()

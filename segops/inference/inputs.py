"""What the network sees of an image: one resized input, or sliding windows at native size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from segops.data.transforms import rescale_image, to_tv
from segops.inference.loading import TrainedModel
from segops.predict_config import TILE_ALIGN

SLIDE_ABOVE = 1.5  # a side longer than this many input sizes is predicted tile by tile
CPU_BATCH_PIXELS = 8 * 96 * 96  # pixels of one batched forward pass on CPU (`tile_budget`)


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
    """`[3, S, S]` float: the image resized to the model's input size and normalised.

    An `SxS` uint8 image skips the torchvision pipeline (whose resize returns it as it is):
    the same operations in the same order (`to_dtype_image`, `normalize_image`), so the same
    bits, without ~0.4 ms of transform objects per image."""
    size = trained.config.data.image_size
    if image.dtype == np.uint8 and image.shape == (size, size, 3):
        aug = trained.config.augment
        tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous().to(torch.float32)
        tensor = tensor.mul_(1.0 / 255).sub(torch.tensor(aug.mean).view(3, 1, 1))
        return tensor.div_(torch.tensor(aug.std).view(3, 1, 1))
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


def tile_shape(trained: TrainedModel, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of the tiles an image of this size is predicted in at native resolution.

    The whole image when each side, padded up to a multiple of `TILE_ALIGN` (and to at least
    one input size), fits in `predict.max_tile`; else tiles of `max_tile` (rounded down to the
    alignment) on the sides that do not fit. `predict.max_tile: 0` gives square windows of the
    model's input size (the protocol before issue 17: 225 tiles on a 512-pixel image)."""
    win, cap = trained.input_size, trained.config.predict.max_tile
    if cap == 0:
        return win, win
    cap = max(win, cap // TILE_ALIGN * TILE_ALIGN)
    return tuple(min(max(win, _aligned(side)), cap) for side in (height, width))


def _aligned(side: int) -> int:
    return -(-side // TILE_ALIGN) * TILE_ALIGN


def window_grid(
    trained: TrainedModel, image: np.ndarray, overlap: float | None = None
) -> tuple[torch.Tensor, list[tuple[int, int]], tuple[int, int]]:
    """The normalised image zero-padded (the mean colour) `[3, H', W']`, the top-left corners
    of the tiles covering it, row by row, and the tiles' (rows, cols) (`tile_shape`).

    Tiles overlap by `overlap` of their side (default `predict.overlap`). With
    `predict.max_tile: 0` the image is padded up to one window where it is smaller; else each
    side up to a multiple of `TILE_ALIGN`, and tiles start on multiples of it, so that every
    tile sees the pooling grid a whole-image forward would."""
    overlap = trained.config.predict.overlap if overlap is None else overlap
    x = normalised(trained, image)
    height, width = x.shape[1:]
    rows, cols = tile_shape(trained, height, width)
    legacy = trained.config.predict.max_tile == 0
    padded = (rows, cols) if legacy else (_aligned(height), _aligned(width))
    x = F.pad(
        x,
        (0, max(0, padded[1] - width, cols - width), 0, max(0, padded[0] - height, rows - height)),
    )

    def stride(side: int) -> int:  # on the alignment grid where a tile spans it
        step = max(1, int(side * (1 - overlap)))
        return step if legacy or step < TILE_ALIGN else step // TILE_ALIGN * TILE_ALIGN

    tiles = [
        (i, j)
        for i in window_starts(x.shape[1], rows, stride(rows))
        for j in window_starts(x.shape[2], cols, stride(cols))
    ]
    return x, tiles, (rows, cols)


class WindowSum:
    """Class probabilities of an image's tiles, added up and averaged (`[C, H, W]`)."""

    def __init__(self, classes: int, padded: tuple[int, int], size: tuple[int, int]) -> None:
        self.total = torch.zeros(classes, *padded)
        self.count = torch.zeros(1, *padded)
        self.size = size

    def add(self, i: int, j: int, probs: torch.Tensor) -> None:
        rows, cols = probs.shape[-2:]
        self.total[:, i : i + rows, j : j + cols] += probs
        self.count[:, i : i + rows, j : j + cols] += 1

    def probs(self) -> torch.Tensor:
        height, width = self.size
        return (self.total / self.count)[:, :height, :width]


def with_tiles(trained: TrainedModel, max_tile: int, overlap: float | None = None) -> TrainedModel:
    """`trained` predicting with `predict.max_tile` = `max_tile` (and `overlap` if given)."""
    update = {"max_tile": max_tile} | ({} if overlap is None else {"overlap": overlap})
    predict = trained.config.predict.model_copy(update=update)
    return replace(trained, config=trained.config.model_copy(update={"predict": predict}))


def tile_budget(trained: TrainedModel) -> int | None:
    """Pixels one forward pass may hold when pieces are grouped into a batch: on CPU
    `CPU_BATCH_PIXELS` (a batch beyond it falls out of the cache and runs slower than single
    forwards; bench/RESULTS.md), else `predict.max_tile` squared (None: no bound, with
    `max_tile: 0` the windows are small). It never cuts a piece: a tile larger than it goes
    through alone, and how an image is tiled does not depend on it."""
    cap = trained.config.predict.max_tile
    budget = cap * cap if cap else None
    if trained.device.type == "cpu":
        return CPU_BATCH_PIXELS if budget is None else min(budget, CPU_BATCH_PIXELS)
    return budget


def window_probs(logits: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """`[N, C, rows, cols]` probabilities from the network's `[N, C, h, w]` tile logits."""
    logits = F.interpolate(logits.float(), size=tile, mode="bilinear", align_corners=False)
    return logits.softmax(1).cpu()


@torch.inference_mode()
def sliding_probs(
    trained: TrainedModel, image: np.ndarray, overlap: float | None = None, batch: int = 8
) -> torch.Tensor:
    """Class probabilities `[C, H, W]` averaged over overlapping tiles (`window_grid`): one
    tile, the whole image, when it fits. Tiles go through the model `batch` at a time, and no
    more pixels at a time than `tile_budget`."""
    x, tiles, (rows, cols) = window_grid(trained, image, overlap)
    acc = WindowSum(len(trained.classes), tuple(x.shape[1:]), tuple(image.shape[:2]))
    budget = tile_budget(trained)
    batch = batch if budget is None else max(1, min(batch, budget // (rows * cols)))
    for k in range(0, len(tiles), batch):
        chunk = tiles[k : k + batch]
        windows = torch.stack([x[:, i : i + rows, j : j + cols] for i, j in chunk])
        probs = window_probs(trained.model(windows.to(trained.device)), (rows, cols))
        for (i, j), p in zip(chunk, probs, strict=True):
            acc.add(i, j, p)
    return acc.probs()

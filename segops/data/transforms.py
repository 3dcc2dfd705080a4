"""Paired image/mask transforms (torchvision.transforms.v2).

Masks travel as `tv_tensors.Mask`, so geometric transforms resize them with nearest neighbour
and fill new pixels with 255 (ignore); photometric transforms leave them alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from segops.config import IGNORE_INDEX, AugmentConfig

_FILL = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}


def scaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """(height, width) times `factor` (`data.scale`), rounded, at least 1 pixel each."""
    return max(1, round(height * factor)), max(1, round(width * factor))


class ScaleBy(v2.Transform):
    """Resize by a factor (`data.scale`): images bilinear with antialiasing, masks nearest.

    The same kernel on the same uint8 pixels as `rescale_image`, which inference uses."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def make_params(self, flat_inputs: list) -> dict:
        sized = (x for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)))
        return {"size": list(scaled_size(*v2.functional.get_size(next(sized)), self.factor))}

    def transform(self, inpt, params: dict):
        return self._call_kernel(v2.functional.resize, inpt, params["size"], antialias=True)


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """HxWx3 uint8 image resized by `factor` exactly as `ScaleBy` resizes it in training."""
    (tensor,) = to_tv(image)
    return ScaleBy(factor)(tensor).permute(1, 2, 0).contiguous().numpy()


def _finish(aug: AugmentConfig) -> list:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(mean=list(aug.mean), std=list(aug.std)),
    ]


def train_transform(
    aug: AugmentConfig, size: int, crop: int | None = None, scale: float | None = None
) -> v2.Compose:
    """Random resized crop to `size` (or, with `crop`, a random `crop`-sided window at native
    resolution, or of the image resized by `scale`; images smaller than it padded: 0 in the
    image, ignore in the mask), flips, optional rotation, colour jitter, then normalise."""
    if crop is None:
        steps: list = [v2.RandomResizedCrop((size, size), scale=aug.scale, antialias=True)]
    else:
        steps = [ScaleBy(scale)] if scale is not None else []
        steps.append(v2.RandomCrop((crop, crop), pad_if_needed=True, fill=_FILL))
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.vflip:
        steps.append(v2.RandomVerticalFlip(aug.vflip))
    if aug.rotation:
        steps.append(v2.RandomRotation(aug.rotation, fill=_FILL))
    if aug.color_jitter:
        j = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(j, 0.5) / 4))
    return v2.Compose(steps + _finish(aug))


def eval_transform(
    aug: AugmentConfig, size: int, native: bool = False, scale: float | None = None
) -> v2.Compose:
    """Resize to the model's input size (unless `native`: kept as it is, or resized by
    `scale`), then normalise."""
    resize = [] if native else [v2.Resize((size, size), antialias=True)]
    if native and scale is not None:
        resize = [ScaleBy(scale)]
    return v2.Compose([*resize, *_finish(aug)])


def to_tv(image, mask=None) -> tuple:
    """numpy HxWx3 uint8 image (and HxW mask) as tv_tensors."""
    img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
    if mask is None:
        return (img,)
    return img, tv_tensors.Mask(torch.from_numpy(mask))

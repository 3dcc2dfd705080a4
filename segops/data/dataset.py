"""A torch `Dataset` over a manifest; optionally keeps decoded arrays in memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from segops.data.formats import load_sample, ref_from_row
from segops.data.transforms import to_tv


class SegmentationDataset(Dataset):
    """Samples `(image float[3,H,W], mask int64[H,W])` for the rows of `manifest`."""

    def __init__(
        self,
        root: str | Path,
        manifest: pd.DataFrame,
        transform: Callable | None = None,
        cache: bool = False,
    ) -> None:
        self.root = Path(root)
        self.ids = list(manifest["id"])
        self.images = [self.root / p for p in manifest["image"]]
        self.masks = [self.root / p for p in manifest["mask"]]
        # Each row's reader (PNG pair, Cityscapes ids, NIfTI slice, COCO raster): the same
        # `read_sample` the manifest scan used, so training sees the pixels that were checked.
        self.refs = [ref_from_row(row) for row in manifest.to_dict("records")]
        self.transform = transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded (HxWx3 uint8 image, HxW uint8 mask) of sample `index`, untransformed."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        pair = load_sample(self.root, self.refs[index])
        if self._cache is not None:
            self._cache[index] = pair
        return pair

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = to_tv(*self.load(index))
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()

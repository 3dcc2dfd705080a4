"""A torch `Dataset` of instance targets in the form torchvision's Mask R-CNN expects.

Each item is `(image, target)`: image float32 [3, H, W] in 0..1, target a dict with `boxes`
float32 [N, 4] (x0, y0, x1, y1, x1/y1 exclusive), `labels` int64 [N] (class ids 1..K),
`masks` uint8 [N, H, W] and `image_id` (int: the item's index). Targets come from the
`instances` reader of the sample's format (`segops.data.registry`; e.g.
`segops.data.coco.instance_targets`). `collate_instances` batches items as lists
(images may differ in size); `instance_transforms` gives a paired horizontal flip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from segops.data.formats import SampleRef, ref_from_row
from segops.data.io import load_image
from segops.data.registry import FormatEntry, format_info, format_names


def _refs(samples: Any) -> list[SampleRef]:
    """SampleRefs of a DatasetInfo (its manifest), a manifest DataFrame or a list of refs."""
    if hasattr(samples, "manifest"):
        samples = samples.manifest
    if isinstance(samples, pd.DataFrame):
        return [ref_from_row(row) for row in samples.to_dict("records")]
    return list(samples)


def instance_format(fmt: str) -> FormatEntry:
    """The registered format `fmt`; ValueError unless it has instance annotations."""
    entry = format_info(fmt) if fmt != "png" else None
    if entry is None or not entry.instances:
        known = format_names(instances=True)
        raise ValueError(f"format {fmt!r} has no instances; use one of {known}")
    entry.require()
    return entry


def read_targets(root: Path, ref: SampleRef) -> dict[str, Any]:
    """The numpy instance targets (boxes, labels, masks) of `ref`, read by its format's
    `instances` reader; ValueError for formats without instances (e.g. plain PNG masks)."""
    try:
        entry = instance_format(ref.reader)
    except ValueError as exc:
        raise ValueError(f"{ref.id}: {exc}") from None
    return entry.instance_targets(root, ref)  # type: ignore[misc]


class InstanceDataset(Dataset):
    """Items `(image float[3,H,W] in 0..1, target dict)` for Mask R-CNN; see module docstring.

    `info_or_refs`: a DatasetInfo, a manifest DataFrame or a sequence of SampleRefs; `root`:
    the dataset root (default: the DatasetInfo's); `fmt`, when given, must be the samples'
    reader, a format with instances (coco, folder_instance, ...); `transforms(image, target)
    -> (image, target)` is applied to tv_tensors (Image, BoundingBoxes, Mask), e.g.
    `instance_transforms()`.
    """

    def __init__(
        self,
        info_or_refs: Any,
        root: str | Path | None = None,
        fmt: str | None = None,
        transforms: Callable | None = None,
    ) -> None:
        if root is None and not hasattr(info_or_refs, "root"):
            raise ValueError("root is needed unless a DatasetInfo is given")
        self.root = Path(root if root is not None else info_or_refs.root)
        self.refs = _refs(info_or_refs)
        if fmt is not None:
            instance_format(fmt)
            wrong = [r.id for r in self.refs if r.reader != fmt]
            if wrong:
                raise ValueError(f"samples {wrong[:5]} are not read as {fmt!r}")
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        ref = self.refs[index]
        image = load_image(self.root / ref.image)  # decoded once (segops.data.decode_cache)
        raw = read_targets(self.root, ref)
        height, width = image.shape[:2]
        img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(raw["boxes"]), format="XYXY", canvas_size=(height, width)
            ),
            "labels": torch.from_numpy(raw["labels"]),
            "masks": tv_tensors.Mask(torch.from_numpy(raw["masks"])),
            "image_id": index,
        }
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).float()
        target["masks"] = target["masks"].as_subclass(torch.Tensor).to(torch.uint8)
        img = img.as_subclass(torch.Tensor)
        return (img.float() / 255.0 if img.dtype == torch.uint8 else img.float()), target


def collate_instances(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """(list of images, list of targets) of a batch: the input torchvision detection models
    take (images may differ in size, targets in instance count)."""
    return [image for image, _ in batch], [target for _, target in batch]


def instance_transforms(hflip: float = 0.5) -> v2.Compose:
    """Paired augmentation for `InstanceDataset`: horizontal flip with probability `hflip`
    of the image, its boxes and its masks together."""
    return v2.Compose([v2.RandomHorizontalFlip(p=hflip)])

"""The Cityscapes layout: fine annotations read as the 19 train ids.

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The split is the folder a sample lies in; the sample id is `<city>_<seq>_<frame>`. Masks hold
Cityscapes label ids (0..33); they are mapped to the 19 train ids of the official benchmark
(`LABEL_TO_TRAIN`), every other id (void, rare and ignored classes, license plate) to 255.
The manifest hashes the labelIds file as stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segops.config import IGNORE_INDEX
from segops.data.formats import SPLITS, Layout, SampleRef
from segops.data.io import Part, read_file, read_image, read_mask
from segops.data.registry import FormatOptions, register_format

CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# labelId -> trainId of cityscapesScripts' labels.py for the ids with a train id; the rest
# (0-6 void, 9 parking, 10 rail track, 14-16 guard rail/bridge/tunnel, 18 polegroup,
# 29 caravan, 30 trailer, and license plate) are ignored.
LABEL_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}

IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"


def train_id_lookup() -> np.ndarray:
    """A 256-entry uint8 table: label id -> train id, 255 for ids without one."""
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN.items():
        table[label_id] = train_id
    return table


_LOOKUP = train_id_lookup()


def read_train_ids(path: str | Path) -> np.ndarray:
    """A gtFine labelIds PNG as HxW uint8 train ids (255 = ignore); raises ReadError."""
    return _LOOKUP[read_mask(path)]


def _split_refs(root: Path, split: str) -> tuple[list[SampleRef], list[str]]:
    """Samples of one split folder and the problems with their file names."""
    refs, problems = [], []
    for path in sorted((root / "leftImg8bit" / split).glob("*/*.png")):
        if not path.name.endswith(IMAGE_SUFFIX):
            problems.append(f"{path}: name does not end in {IMAGE_SUFFIX}")
            continue
        sid = path.name.removesuffix(IMAGE_SUFFIX)
        mask = Path("gtFine") / split / path.parent.name / f"{sid}{MASK_SUFFIX}"
        refs.append(SampleRef(sid, path.relative_to(root), mask, split, reader="cityscapes"))
    return refs, problems


def read_sample(root: Path, ref: SampleRef) -> tuple[Part, Part]:
    """(image, mask) Parts: the RGB image, and the labelIds mask mapped to train ids."""
    return read_file(root / ref.image, read_image), read_file(root / ref.mask, read_train_ids)


@register_format("cityscapes", read_sample=read_sample)
def read_layout(root: Path, options: FormatOptions) -> Layout:
    """Samples of a Cityscapes tree (see module docstring); splits come from the folders."""
    if not (root / "leftImg8bit").is_dir():
        raise FileNotFoundError(f"{root}/leftImg8bit: no such directory (expected Cityscapes)")
    refs, problems, seen = [], [], {}
    for split in SPLITS:
        found, split_problems = _split_refs(root, split)
        problems += split_problems
        for ref in found:
            if ref.id in seen:
                problems.append(f"{root / ref.image}: id '{ref.id}' is also in {seen[ref.id]}")
                continue
            seen[ref.id] = ref.image
            refs.append(ref)
    if not refs:
        problems.append(f"{root}/leftImg8bit: no <split>/<city>/*{IMAGE_SUFFIX} images")
    return Layout(root, list(CITYSCAPES_CLASSES), refs, True, problems)

"""COCO instances JSON read as semantic masks (polygons and RLE rasterised by pycocotools).

    annotations/instances_<name>.json   one per split; <name> starts with train, val or test
                                        (instances_train.json, instances_val2017.json, ...)
    images/<name>/<file_name>           or `data.options.image_dir` ("{split}" = <name>;
                                        `CocoOptions`; the old key data.coco_image_dir works)

Classes: `background` (0), then the categories sorted by id as 1..K; every annotation file must
list the same categories. Each image is a sample with id = its file name's stem. Masks: crowd
regions (iscrowd=1) are painted 255 (ignore) first; then the other instances, largest pixel
area first, so where instances overlap the SMALLER one wins (equal areas: the later one in the
file). Images without annotations are all background. Manifest: `mask` is the JSON file,
`index` the image id, `mask_sha256` the sha256 of the rasterised mask. `instance_targets`
gives the per-instance boxes, labels and binary masks of the same JSON.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from segops.config import IGNORE_INDEX
from segops.data.decode_cache import signature
from segops.data.formats import SPLITS, Layout, SampleRef
from segops.data.io import Part, ReadError, array_sha256, read_derived, read_file, read_image
from segops.data.registry import FormatOptions, register_format

# lazy imports: pycocotools is imported on first read: every format module loads when any format
# is looked up, and the registry names a missing package (`needs`) instead of failing them all
# (docs/development.md "Imports").


class CocoOptions(FormatOptions):
    image_dir: str = Field(
        "images/{split}", description="image folder; {split} = <name> of instances_<name>"
    )


@dataclass(frozen=True)
class CocoIndex:
    """One instances JSON: category id -> name (sorted by id), category id -> class id
    (1..K), image id -> image record, and image id -> its annotations in file order."""

    categories: dict[int, str]
    class_of: dict[int, int]
    images: dict[int, dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]


def _parse(data: Any) -> CocoIndex:
    """The CocoIndex of a decoded instances JSON; raises ReadError when it is malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ReadError("is not a COCO instances file (no 'images' list)")
    try:
        categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        categories = dict(sorted(categories.items()))
        images = {int(i["id"]): i for i in data["images"]}
        annotations: dict[int, list[dict[str, Any]]] = {}
        for ann in data.get("annotations", []):
            annotations.setdefault(int(ann["image_id"]), []).append(ann)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReadError(f"is not a COCO instances file ({type(exc).__name__}: {exc})") from None
    class_of = {cid: i + 1 for i, cid in enumerate(categories)}
    return CocoIndex(categories, class_of, images, annotations)


@functools.lru_cache(maxsize=4)
def _load(path: str, stamp: tuple[int, ...]) -> CocoIndex:
    """The CocoIndex of the file at `path`; `stamp` (the file's signature: device, inode,
    size, mtime, ctime) keys the cache, so a rewrite that keeps size and mtime is seen."""
    try:
        return _parse(json.loads(Path(path).read_bytes()))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReadError(f"is not valid JSON ({exc})") from None


def read_index(path: Path) -> CocoIndex:
    """The parsed instances JSON at `path`, cached while unchanged; raises ReadError."""
    if path.is_symlink():  # never read through a link: it may point outside the dataset
        raise ReadError("symlink; replace it by the real file")
    try:
        stamp = signature(path)
    except FileNotFoundError:
        raise ReadError("file does not exist") from None
    return _load(str(path), stamp)


def _rle(segm: Any, height: int, width: int) -> Any:
    """A compressed RLE of a polygon list, an uncompressed RLE or a compressed RLE."""
    from pycocotools import mask as mask_utils  # on first read: a compiled extension

    if isinstance(segm, list):
        polygons = [p for p in segm if len(p) >= 6 and len(p) % 2 == 0]  # 3+ (x, y) points
        if not polygons:
            raise ValueError("no polygon with 3 or more points")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if not isinstance(segm, dict) or "counts" not in segm:
        raise ValueError("segmentation is neither polygons nor RLE")
    if [int(v) for v in segm.get("size", [])] != [height, width]:
        raise ValueError(f"RLE size {segm.get('size')} is not the image's [{height}, {width}]")
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, height, width)
    return segm


def rasterise(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    """HxW bool mask of one annotation's segmentation; raises ReadError."""
    from pycocotools import mask as mask_utils

    try:
        return mask_utils.decode(_rle(ann.get("segmentation"), height, width)).astype(bool)
    except (TypeError, ValueError, KeyError) as exc:
        raise ReadError(f"annotation {ann.get('id')}: cannot rasterise it ({exc})") from None


def _instances(
    index: CocoIndex, image_id: int
) -> tuple[tuple[int, int], list[tuple[np.ndarray, int, dict[str, Any]]]]:
    """((height, width), [(bool mask, class id or 255 for crowd, annotation)]) of an image."""
    record = index.images.get(image_id)
    if record is None:
        raise ReadError(f"has no image with id {image_id}")
    height, width = int(record["height"]), int(record["width"])
    found = []
    for ann in index.annotations.get(image_id, []):
        if ann.get("iscrowd"):
            found.append((rasterise(ann, height, width), IGNORE_INDEX, ann))
            continue
        class_id = index.class_of.get(ann.get("category_id"))  # type: ignore[arg-type]
        if class_id is None:
            cid = ann.get("category_id")
            raise ReadError(f"annotation {ann.get('id')}: category_id {cid} is not a category")
        found.append((rasterise(ann, height, width), class_id, ann))
    return (height, width), found


def semantic_mask(index: CocoIndex, image_id: int) -> np.ndarray:
    """HxW uint8 class ids of an image (module docstring: crowd 255, smaller instances win)."""
    shape, found = _instances(index, image_id)
    mask = np.zeros(shape, np.uint8)
    crowd = [(m, c) for m, c, _ in found if c == IGNORE_INDEX]
    instances = [(m, c) for m, c, _ in found if c != IGNORE_INDEX]
    instances.sort(key=lambda pair: -int(pair[0].sum()))  # stable: equal areas keep file order
    for binary, class_id in crowd + instances:
        mask[binary] = class_id
    return mask


def instance_targets(root: Path, ref: SampleRef) -> dict[str, np.ndarray]:
    """Non-crowd instances of a COCO sample, in file order, those with empty masks left out:
    `boxes` float32 [N, 4] (x0, y0, x1, y1, tight around the mask, x1/y1 exclusive),
    `labels` int64 [N] (class ids 1..K) and `masks` uint8 [N, H, W] (0/1). Raises ReadError."""
    (height, width), found = _instances(read_index(root / ref.mask), ref.index)
    kept = [(m, c) for m, c, _ in found if c != IGNORE_INDEX and m.any()]
    return targets_from_masks(kept, (height, width))


def targets_from_masks(
    kept: list[tuple[np.ndarray, int]], shape: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Detection targets from (binary HxW mask, class id) pairs: boxes tight around each mask
    (x0, y0, x1, y1; x1/y1 exclusive) float32 [N, 4], labels int64 [N], masks uint8 [N, H, W]."""
    boxes = []
    for binary, _ in kept:
        rows, cols = np.flatnonzero(binary.any(1)), np.flatnonzero(binary.any(0))
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    return {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "labels": np.array([c for _, c in kept], np.int64),
        "masks": np.array([m for m, _ in kept], np.uint8).reshape(-1, *shape),
    }


def read_sample(root: Path, ref: SampleRef) -> tuple[Part, Part]:
    """(image, mask) Parts: the image file, and the semantic mask rasterised from the JSON
    (once per content of the JSON and process: `segops.data.io.read_derived`)."""
    path = root / ref.mask

    def mask_part() -> Part:
        try:
            mask = semantic_mask(read_index(path), ref.index)
        except ReadError as exc:
            return Part("", None, str(exc))
        return Part(array_sha256(mask), mask, None)

    image = read_file(root / ref.image, read_image)
    return image, read_derived(path, ("coco", ref.index), mask_part)


def _split_of(path: Path) -> str | None:
    """train, val or test from `instances_<name>.json` (the split <name> starts with)."""
    name = path.stem.removeprefix("instances_")
    return next((s for s in SPLITS if name.startswith(s)), None)


def _refs(root: Path, path: Path, index: CocoIndex, image_dir: str) -> list[SampleRef]:
    """One SampleRef per image record of the instances file at `path`."""
    folder = Path(image_dir.replace("{split}", path.stem.removeprefix("instances_")))
    mask, split = path.relative_to(root), _split_of(path)
    return [
        SampleRef(
            Path(str(r["file_name"])).stem,
            folder / str(r["file_name"]),
            mask,
            split,
            reader="coco",
            index=image_id,
        )
        for image_id, r in index.images.items()
    ]


@register_format(
    "coco",
    options=CocoOptions,
    read_sample=read_sample,
    instances=instance_targets,
    needs="pycocotools",
)
def read_layout(root: Path, options: CocoOptions) -> Layout:
    """Samples of a COCO dataset (see module docstring); splits from the annotation files."""
    files = sorted((root / "annotations").glob("instances_*.json"))
    if not files:
        raise FileNotFoundError(f"{root}/annotations: no instances_<split>.json (COCO layout)")
    classes: list[str] | None = None
    refs, problems, seen = [], [], set()
    for path in files:
        if _split_of(path) is None:
            problems.append(f"{path}: name it instances_<split>.json (train, val or test...)")
            continue
        try:
            index = read_index(path)
        except ReadError as exc:
            problems.append(f"{path}: {exc}")
            continue
        names = ["background", *index.categories.values()]
        if classes is not None and names != classes:
            problems.append(f"{path}: its categories differ from the first annotation file's")
        classes = classes or names
        for ref in _refs(root, path, index, options.image_dir):
            if ref.id in seen:
                problems.append(f"{root / ref.image}: two images share the id '{ref.id}'")
                continue
            seen.add(ref.id)
            refs.append(ref)
    if classes is not None and len(classes) > 255:
        problems.append(f"{root}: {len(classes)} classes; at most 255 fit a mask (255 = ignore)")
    return Layout(root, classes or [], refs, True, problems)

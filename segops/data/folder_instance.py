"""The instance variant of the folder layout (`data.format: folder_instance`).

    images/<id>.(png|jpg|tif)   the images, as in the folder layout
    masks/<id>.png              instance ids: 0 = background, 255 = ignore, any other value
                                is an instance of that image (8- or 16-bit PNG)
    instances.csv               columns id, instance, class: the class id (line of
                                classes.txt, 1..K) of each instance; class 255 = ignore region
    classes.txt, splits/        as in the folder layout

The semantic mask seen by the rest of the pipeline is derived pixel by pixel: instance ->
its class, 0 stays 0 and 255 stays 255. An instance id with no row in instances.csv makes
the mask unreadable (the manifest scan reports it). Manifest: `mask_sha256` hashes the
instance PNG's bytes together with the sample's rows of instances.csv. `instance_targets`
gives the per-instance boxes, labels and binary masks (same contract as
`segops.data.coco.instance_targets`). `segops data shapes --instances folder` writes it.
"""

from __future__ import annotations

import csv
import functools
import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from segops.config import IGNORE_INDEX
from segops.data.coco import targets_from_masks
from segops.data.decode_cache import signature
from segops.data.formats import Layout, SampleRef, read_folder_layout
from segops.data.io import Part, ReadError, read_derived, read_file, read_image
from segops.data.registry import FormatOptions, register_format

TABLE = "instances.csv"
READER = "folder_instance"


def _parse_table(path: Path) -> dict[str, dict[int, int]]:
    """Sample id -> {instance id: class id} of an instances.csv; raises ReadError."""
    table: dict[str, dict[int, int]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"id", "instance", "class"} <= set(reader.fieldnames or []):
            raise ReadError("needs the columns id, instance, class")
        for line, row in enumerate(reader, 2):
            try:
                instance, class_id = int(row["instance"]), int(row["class"])
            except (TypeError, ValueError):
                raise ReadError(f"line {line}: instance and class must be integers") from None
            if not 0 < instance < 65536 or instance == IGNORE_INDEX:
                raise ReadError(f"line {line}: instance {instance} is not in 1..65535 (not 255)")
            if not 0 < class_id <= IGNORE_INDEX:
                raise ReadError(f"line {line}: class {class_id} is not in 1..255")
            table.setdefault(str(row["id"]), {})[instance] = class_id
    return table


@functools.lru_cache(maxsize=4)
def _load(path: str, stamp: tuple[int, ...]) -> dict[str, dict[int, int]]:
    """The parsed table at `path`; `stamp` (the file's signature: device, inode, size, mtime,
    ctime) keys the cache."""
    return _parse_table(Path(path))


def read_table(root: Path) -> dict[str, dict[int, int]]:
    """Sample id -> {instance id: class id} from `root/instances.csv`, cached while unchanged;
    raises ReadError (naming the file) when it is missing or malformed."""
    path = root / TABLE
    if path.is_symlink():  # never read through a link: it may point outside the dataset
        raise ReadError(f"{path}: symlink; replace it by the real file")
    try:
        return _load(str(path), signature(path))
    except FileNotFoundError:
        raise ReadError(f"{path}: missing; list each instance's class there") from None
    except ReadError as exc:
        raise ReadError(f"{path}: {exc}") from None


def read_instance_map(path: Path) -> np.ndarray:
    """An instance PNG as HxW int32 instance ids; raises ReadError."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except FileNotFoundError:
        raise ReadError("file does not exist") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ReadError(f"cannot be decoded ({exc})") from None
    if arr.ndim != 2 or arr.dtype.kind not in "iub":
        raise ReadError(f"is a {img.mode} image; instance masks must be 8- or 16-bit grey")
    return arr.astype(np.int32)


def _instance_map(path: Path) -> np.ndarray:
    """`read_instance_map` once per content of the file and process (`read_derived`): every
    epoch and scan after the first gets a copy; raises ReadError."""

    def derive() -> Part:
        try:
            return Part("", read_instance_map(path), None)
        except ReadError as exc:
            return Part("", None, str(exc))

    part = read_derived(path, ("instance-map",), derive)
    if part.array is None:
        raise ReadError(part.problem)
    return part.array


def _classes_of(instances: np.ndarray, classes: dict[int, int]) -> np.ndarray:
    """HxW uint8 class ids of an instance map; raises ReadError for unlisted instances."""
    ids = np.unique(instances)
    missing = [int(k) for k in ids if k not in (0, IGNORE_INDEX) and int(k) not in classes]
    if missing:
        raise ReadError(f"instance ids {missing[:8]} have no row (id, instance, class) in {TABLE}")
    lookup = {0: 0, IGNORE_INDEX: IGNORE_INDEX, **classes}
    table = np.array([lookup[int(k)] for k in ids], np.uint8)
    return table[np.searchsorted(ids, instances)]


def semantic_mask(root: Path, ref: SampleRef) -> np.ndarray:
    """HxW uint8 class ids (0 background, 255 ignore) of a sample; raises ReadError."""
    instances = _instance_map(root / ref.mask)
    return _classes_of(instances, read_table(root).get(ref.id, {}))


def instance_targets(root: Path, ref: SampleRef) -> dict[str, np.ndarray]:
    """Instances of a sample in increasing instance id, ignore (class 255) and empty ones
    left out: `boxes` float32 [N, 4] (x0, y0, x1, y1, tight around the mask, x1/y1
    exclusive), `labels` int64 [N] (class ids 1..K) and `masks` uint8 [N, H, W] (0/1).
    Raises ReadError."""
    instances = _instance_map(root / ref.mask)
    classes = read_table(root).get(ref.id, {})
    _classes_of(instances, classes)  # every instance must have a class
    kept = [
        (instances == k, classes[int(k)])
        for k in np.unique(instances)
        if k not in (0, IGNORE_INDEX) and classes[int(k)] != IGNORE_INDEX
    ]
    return targets_from_masks(kept, instances.shape)


def _mask_sha256(root: Path, ref: SampleRef) -> str:
    """sha256 of the instance PNG's bytes and the sample's table rows."""
    digest = hashlib.sha256((root / ref.mask).read_bytes())
    rows = sorted(read_table(root).get(ref.id, {}).items())
    digest.update(repr(rows).encode())
    return digest.hexdigest()


def read_sample(root: Path, ref: SampleRef) -> tuple[Part, Part]:
    """(image, mask) Parts: the image file, and the semantic mask derived from the instance
    map and instances.csv (problem set when either cannot be read)."""
    image = read_file(root / ref.image, read_image)
    try:
        mask = semantic_mask(root, ref)
        sha = _mask_sha256(root, ref)
    except ReadError as exc:
        return image, Part("", None, str(exc))
    return image, Part(sha, mask, None)


@register_format(READER, read_sample=read_sample, instances=instance_targets)
def read_layout(root: Path, options: FormatOptions) -> Layout:
    """Samples of a folder_instance dataset (see module docstring): the folder layout's
    samples and splits, read through this module; a missing or bad table is a problem."""
    layout = read_folder_layout(root)
    layout.samples = [replace(r, reader=READER) for r in layout.samples]
    try:
        read_table(layout.root)
    except ReadError as exc:
        layout.problems.append(str(exc))
    return layout

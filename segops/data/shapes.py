"""The built-in `shapes` dataset: a seeded generator of hard-enough segmentation scenes.

Each image holds 2-6 shapes (ellipse, rectangle, triangle, cross) of varied size, aspect and
rotation that overlap and occlude each other (never hiding most of an earlier one), on a
blotchy textured background. Object and background colours come from the same distribution,
so colour alone does not solve it; the class mix is imbalanced on purpose. Image i depends
only on (seed, i): the same seed gives byte-identical files, and a larger `n` extends a
smaller one.

Instance annotations (`generate_shapes(instances=...)`): every drawn shape gets an instance id
1..N in drawing order; where shapes overlap, the pixels belong to the shape on top (the one
drawn later), exactly as in the semantic mask; background is 0. Images are the same bytes in
every mode.

- "folder": the `folder_instance` layout (`segops.data.folder_instance`): `masks/<id>.png`
  holds instance ids (uint8 PNG) instead of class ids, and `instances.csv` (columns id,
  instance, class) gives each instance's class id. Read it with `data.format=folder_instance`.
- "coco": the default folder layout plus `annotations/instances_{train,val}.json` (visible
  part of each shape as compressed RLE, categories = CLASSES without background, iscrowd 0),
  split like the folder layout's default seeded split. Read it with `data.format=coco` and
  `data.coco_image_dir=images`: the semantic masks are the same pixel for pixel.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# lazy imports: pycocotools and pandas (segops.data.manifest) are imported inside the functions
# that write COCO instances: the semantic `segops data shapes` needs neither
# (docs/development.md "Imports").

CLASSES = ("background", "ellipse", "rectangle", "triangle", "cross")
# Drawing probabilities of the foreground classes: imbalanced on purpose.
CLASS_PROBS = (0.40, 0.30, 0.20, 0.10)
MAX_HIDDEN = 0.4  # an object may hide at most this share of an earlier object's visible part


def _rotate(points: np.ndarray, angle: float, center: tuple[float, float]) -> list[tuple]:
    c, s = math.cos(angle), math.sin(angle)
    rot = points @ np.array([[c, s], [-s, c]])
    return [(float(x + center[0]), float(y + center[1])) for x, y in rot]


def _polygons(cls: int, radius: float, aspect: float, rng: np.random.Generator) -> list:
    """Polygons (centred at the origin, unrotated) whose union draws one object of class `cls`."""
    rx, ry = radius, radius * aspect
    if cls == 1:  # ellipse
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return [np.stack([rx * np.cos(t), ry * np.sin(t)], 1)]
    if cls == 2:  # rectangle
        return [np.array([[-rx, -ry], [rx, -ry], [rx, ry], [-rx, ry]])]
    if cls == 3:  # triangle, vertices jittered around an equilateral one
        angles = np.array([0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
        radii = radius * rng.uniform(0.85, 1.15, 3)
        return [np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)]
    arm = radius * rng.uniform(0.25, 0.4)  # cross: two bars
    return [
        np.array([[-rx, -arm], [rx, -arm], [rx, arm], [-rx, arm]]),
        np.array([[-arm, -rx], [arm, -rx], [arm, rx], [-arm, rx]]),
    ]


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise: a random `cells`x`cells` grid upsampled bicubically, float in 0..255."""
    grid = rng.uniform(0, 255, (cells, cells, channels)).astype(np.uint8)
    img = Image.fromarray(grid.squeeze(-1) if channels == 1 else grid)
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = _smooth_noise(rng, size, int(rng.integers(3, 7)), 3)
    if rng.random() < 0.5:  # stripes: edges that are not object edges
        period, phase = rng.uniform(6, 16), rng.uniform(0, 2 * math.pi)
        angle = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period + phase)
        base += (wave * rng.uniform(15, 35))[..., None]
    return base


def _draw(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean HxW footprint of one object of class `cls` at a random place, size and angle."""
    radius = size * rng.uniform(0.09, 0.24)
    aspect = rng.uniform(0.45, 1.0)
    center = (rng.uniform(0.1, 0.9) * size, rng.uniform(0.1, 0.9) * size)
    angle = rng.uniform(0, 2 * math.pi)
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    for poly in _polygons(cls, radius, aspect, rng):
        draw.polygon(_rotate(poly, angle, center), fill=255)
    return np.asarray(layer) > 0


def _hides_too_much(inside: np.ndarray, owner: np.ndarray, count: int) -> bool:
    """True when `inside` would hide more than MAX_HIDDEN of an earlier object's visible part:
    occlusion is wanted, but a fragment whose class nobody could tell only adds label noise."""
    for k in range(1, count + 1):
        visible = owner == k
        if visible.any() and (visible & inside).sum() > MAX_HIDDEN * visible.sum():
            return True
    return False


def render_instance_sample(
    seed: int, index: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (HxWx3 uint8), mask (HxW uint8, pixel = class id) and instance map (HxW uint8,
    pixel = instance id 1..N in drawing order, the shape on top wins, 0 = background)."""
    rng = np.random.default_rng([seed, index])
    image = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    owner = np.zeros((size, size), np.int16)  # which object each pixel shows (0: none)
    for _ in range(int(rng.integers(2, 7))):
        cls = int(rng.choice(4, p=CLASS_PROBS)) + 1
        for _attempt in range(8):
            inside = _draw(cls, size, rng)
            if not _hides_too_much(inside, owner, int(owner.max())):
                break
        else:
            continue  # no placement found that keeps earlier objects recognisable
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        texture = (_smooth_noise(rng, size, 4, 1) - 127.5)[..., None] * rng.uniform(0.1, 0.4)
        image[inside] = (colour + texture)[inside]
        mask[inside] = cls
        owner[inside] = owner.max() + 1
    image += rng.normal(0, rng.uniform(4, 14), image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8), mask, owner.astype(np.uint8)


def render_sample(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (HxWx3 uint8) and mask (HxW uint8, pixel = class id) of sample `index`."""
    image, mask, _ = render_instance_sample(seed, index, size)
    return image, mask


def instance_classes(mask: np.ndarray, instances: np.ndarray) -> dict[int, int]:
    """Instance id -> class id of every instance visible in `instances` (0 left out)."""
    ids = [int(k) for k in np.unique(instances) if k != 0]
    return {k: int(mask[instances == k][0]) for k in ids}


def _coco_annotations(image_id: int, mask: np.ndarray, instances: np.ndarray) -> list[dict]:
    """COCO annotations (compressed RLE of the visible part) of one sample, ids left 0."""
    from pycocotools import mask as mask_utils

    anns = []
    for k, cls in instance_classes(mask, instances).items():
        binary = instances == k
        rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
        rows, cols = np.flatnonzero(binary.any(1)), np.flatnonzero(binary.any(0))
        box = [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]
        anns.append(
            {
                "id": 0,
                "image_id": image_id,
                "category_id": cls,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "area": int(binary.sum()),
                "bbox": [float(v) for v in box],
                "iscrowd": 0,
            }
        )
    return anns


def _write_coco(out: Path, records: list[tuple[dict, list[dict]]], split_of: dict) -> None:
    """`annotations/instances_<split>.json` for each split that has samples."""
    (out / "annotations").mkdir(exist_ok=True)
    categories = [{"id": i, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    for split in ("train", "val", "test"):
        chosen = [(r, a) for r, a in records if split_of[Path(r["file_name"]).stem] == split]
        if not chosen:
            continue
        anns = [a for _, group in chosen for a in group]
        for ann_id, ann in enumerate(anns, 1):
            ann["id"] = ann_id
        data = {"images": [r for r, _ in chosen], "annotations": anns, "categories": categories[1:]}
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(data) + "\n")


def _write_table(path: Path, rows: list[tuple[str, int, int]]) -> None:
    """The folder_instance class table: one (id, instance, class) row per instance."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "instance", "class"])
        writer.writerows(rows)


def generate_shapes(
    out: str | Path,
    n: int = 1200,
    size: int = 96,
    seed: int = 0,
    progress: Any = None,
    instances: str | None = None,
    val_fraction: float = 0.15,
    split_seed: int = 0,
) -> Path:
    """Write `n` samples in the folder layout (images/, masks/, classes.txt) under `out`.

    `instances`: None (semantic masks only), "folder" (masks/ hold instance ids, plus
    instances.csv) or "coco" (plus annotations/instances_<split>.json, split with
    `val_fraction` and `split_seed` like the folder layout's default split); see the module
    docstring. `progress`, if given, is called with the number of samples written so far.
    Returns `out`. Existing files with the same names are overwritten.
    """
    if instances not in (None, "folder", "coco"):
        raise ValueError(f"instances must be None, 'folder' or 'coco', not {instances!r}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rows: list[tuple[str, int, int]] = []
    records: list[tuple[dict, list[dict]]] = []
    for i in range(n):
        image, mask, owner = render_instance_sample(seed, i, size)
        name = f"{i:05d}.png"
        Image.fromarray(image).save(out / "images" / name)
        Image.fromarray(owner if instances == "folder" else mask).save(out / "masks" / name)
        if instances == "folder":
            rows += [(f"{i:05d}", k, c) for k, c in instance_classes(mask, owner).items()]
        elif instances == "coco":
            record = {"id": i + 1, "file_name": name, "height": size, "width": size}
            records.append((record, _coco_annotations(i + 1, mask, owner)))
        if progress is not None:
            progress(i + 1)
    if instances == "folder":
        _write_table(out / "instances.csv", rows)
    elif instances == "coco":
        from segops.data.manifest import assign_splits

        ids = [f"{i:05d}" for i in range(n)]
        _write_coco(out, records, assign_splits(ids, val_fraction, 0.0, split_seed))
    return out

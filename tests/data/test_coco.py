"""COCO instances JSON: polygons and RLE rasterised to semantic masks, pixel for pixel."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segops.config import DataConfig
from segops.data.coco import instance_targets
from segops.data.dataset import SegmentationDataset
from segops.data.formats import ref_from_row
from segops.data.manifest import load_dataset
from segops.errors import DatasetError

# pycocotools 2.0.11 calls np.array(copy=False) on numpy 2; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# Categories listed out of id order: dog (id 2) becomes class 1, cat (id 5) class 2.
CATEGORIES = [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}]
# Uncompressed RLE (column-major runs) of rows 3..6 x columns 4..6 in an 8x10 image.
CAT_RLE = {"size": [8, 10], "counts": [35, 4, 4, 4, 4, 4, 25]}
DOG_POLYGON = [[1, 1, 6, 1, 6, 5, 1, 5]]  # x, y corners of the box columns 1..5, rows 1..4


def _crowd_rle() -> dict:
    """Compressed RLE (as stored in JSON) of rows 6..7 x columns 0..4."""
    binary = np.zeros((8, 10), np.uint8)
    binary[6:8, 0:5] = 1
    rle = mask_utils.encode(np.asfortranarray(binary))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _expected_a() -> np.ndarray:
    mask = np.zeros((8, 10), np.uint8)
    mask[6:8, 0:5] = 255  # crowd: ignore, painted first
    mask[1:5, 1:6] = 1  # the dog (20 px)
    mask[3:7, 4:7] = 2  # the cat (12 px) is smaller: it wins where they overlap, and over crowd
    return mask


def _write_json(path, images, annotations):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    path.write_text(json.dumps(data))


def _image(root, rel, value):
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 10, 3), value, np.uint8)).save(root / rel)


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    for rel, value in (("train/a.png", 10), ("train/b.png", 20), ("val/c.png", 30)):
        _image(root / "images", rel, value)
    size = {"height": 8, "width": 10}
    annotations = [  # the cat comes first: "later wins" would let the dog cover it
        {"id": 1, "image_id": 11, "category_id": 5, "segmentation": CAT_RLE, "iscrowd": 0},
        {"id": 2, "image_id": 11, "category_id": 2, "segmentation": DOG_POLYGON, "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 2, "segmentation": _crowd_rle(), "iscrowd": 1},
    ]
    images = [{"id": 11, "file_name": "a.png", **size}, {"id": 12, "file_name": "b.png", **size}]
    _write_json(root / "annotations" / "instances_train.json", images, annotations)
    val_ann = [{"id": 4, "image_id": 13, "category_id": 5, "segmentation": DOG_POLYGON}]
    _write_json(
        root / "annotations" / "instances_val.json",
        [{"id": 13, "file_name": "c.png", **size}],
        val_ann,
    )
    return root


def test_semantic_masks_pixel_for_pixel(coco):
    info = load_dataset(DataConfig(root=coco, format="coco"))
    assert info.classes == ("background", "dog", "cat")
    assert info.split("train")["id"].tolist() == ["a", "b"]
    frame = info.manifest.set_index("id")
    assert frame.loc["a", "mask"] == "annotations/instances_train.json"
    assert frame.loc["c", "image"] == "images/val/c.png"
    val_mask = np.zeros((8, 10), np.uint8)
    val_mask[1:5, 1:6] = 2
    expected = {"a": _expected_a(), "b": np.zeros((8, 10), np.uint8), "c": val_mask}
    ds = SegmentationDataset(info.root, info.manifest)
    for i, sid in enumerate(info.manifest["id"]):
        image, mask = ds.load(i)
        assert np.array_equal(mask, expected[sid]), f"{sid}:\n{mask}"
        assert image.shape == (8, 10, 3)
        assert frame.loc[sid, "mask_sha256"] == hashlib.sha256(expected[sid].tobytes()).hexdigest()
    assert frame.loc["a", "px_ignore"] == 9 and frame.loc["a", "px_2"] == 12


def test_instance_targets(coco):
    info = load_dataset(DataConfig(root=coco, format="coco"))
    row = info.manifest.set_index("id", drop=False).loc["a"]
    targets = instance_targets(info.root, ref_from_row(row.to_dict()))
    assert targets["labels"].tolist() == [2, 1]  # file order; the crowd region is left out
    assert targets["boxes"].tolist() == [[4, 3, 7, 7], [1, 1, 6, 5]]
    cat, dog = np.zeros((8, 10), np.uint8), np.zeros((8, 10), np.uint8)
    cat[3:7, 4:7], dog[1:5, 1:6] = 1, 1
    assert targets["masks"].shape == (2, 8, 10)
    assert np.array_equal(targets["masks"][0], cat) and np.array_equal(targets["masks"][1], dog)
    empty = info.manifest.set_index("id", drop=False).loc["b"]
    assert instance_targets(info.root, ref_from_row(empty.to_dict()))["boxes"].shape == (0, 4)


def test_official_layout_with_image_dir(tmp_path):
    _image(tmp_path, "train2017/x.png", 5)
    _image(tmp_path, "val2017/y.png", 6)
    size = {"height": 8, "width": 10}
    for name, file in (("train2017", "x.png"), ("val2017", "y.png")):
        path = tmp_path / "annotations" / f"instances_{name}.json"
        _write_json(path, [{"id": 1 if name[0] == "t" else 2, "file_name": file, **size}], [])
    info = load_dataset(DataConfig(root=tmp_path, format="coco", coco_image_dir="{split}"))
    assert info.manifest[["id", "split", "image"]].values.tolist() == [
        ["x", "train", "train2017/x.png"],
        ["y", "val", "val2017/y.png"],
    ]


def test_bad_annotations_are_reported(coco):
    path = coco / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(data))
    (coco / "images" / "train" / "b.png").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset(DataConfig(root=coco, format="coco"))
    message = str(err.value)
    assert "instances_val.json: annotation 4: category_id 99 is not a category" in message
    assert "images/train/b.png: missing: no such file" in message


def test_not_a_coco_tree(tmp_path):
    with pytest.raises(DatasetError, match=r"no instances_<split>.json"):
        load_dataset(DataConfig(root=tmp_path, format="coco"))

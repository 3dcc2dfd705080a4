"""Cityscapes layout: label ids become the 19 train ids (others 255), splits from the folders."""

import numpy as np
import pytest
from PIL import Image

from segops.config import DataConfig, load_config
from segops.data.cityscapes import CITYSCAPES_CLASSES, train_id_lookup
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import load_dataset
from segops.errors import DatasetError
from segops.validation import validate_dataset

# label id -> expected train id: road, car, bicycle, unlabeled, parking, license plate (-1 = 255)
PAIRS = {7: 0, 26: 13, 33: 18, 0: 255, 9: 255, 255: 255}


def _label_ids(seed: int) -> np.ndarray:
    """An 8x10 labelIds mask using every id of PAIRS in stripes shifted by `seed`."""
    ids = np.array(list(PAIRS), np.uint8)
    return ids[(np.arange(80).reshape(8, 10) + seed) % len(ids)]


def _write(root, split, city, frame, seed):
    sid = f"{city}_000000_{frame:06d}"
    for folder, suffix, array in (
        ("leftImg8bit", "leftImg8bit", np.full((8, 10, 3), seed * 20, np.uint8)),
        ("gtFine", "gtFine_labelIds", _label_ids(seed)),
    ):
        (root / folder / split / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / folder / split / city / f"{sid}_{suffix}.png")
    return sid


@pytest.fixture
def cityscapes(tmp_path):
    root = tmp_path / "cityscapes"
    _write(root, "train", "aachen", 19, 0)
    _write(root, "train", "bochum", 5, 1)
    _write(root, "val", "frankfurt", 7, 2)
    (root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_color.png").touch()
    return root


def test_official_train_ids():
    table = train_id_lookup()
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[13] == "car"
    assert [int(table[i]) for i in (7, 8, 11, 24, 26, 31, 33)] == [0, 1, 2, 11, 13, 16, 18]
    assert (table[[0, 1, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 255]] == 255).all()
    assert sorted(int(v) for v in set(table.tolist()) - {255}) == list(range(19))


def test_layout_manifest_and_pixels(cityscapes):
    info = load_dataset(DataConfig(root=cityscapes, format="cityscapes"))
    assert info.classes == CITYSCAPES_CLASSES
    assert info.split("train")["id"].tolist() == ["aachen_000000_000019", "bochum_000000_000005"]
    row = info.split("val").iloc[0]
    assert row["id"] == "frankfurt_000000_000007"
    assert row["mask"] == "gtFine/val/frankfurt/frankfurt_000000_000007_gtFine_labelIds.png"
    # 80 pixels, 6 ids in turn: road, car, bicycle get 13 or 14 each, the 3 ignored ids the rest
    assert row["px_0"] + row["px_13"] + row["px_18"] + row["px_ignore"] == 80
    assert not (cityscapes / "splits").exists()
    ds = SegmentationDataset(info.root, info.manifest)
    for i, sid in enumerate(info.manifest["id"]):
        image, mask = ds.load(i)
        seed = {"aachen": 0, "bochum": 1, "frankfurt": 2}[sid.split("_")[0]]
        expected = np.vectorize(PAIRS.get)(_label_ids(seed)).astype(np.uint8)
        assert np.array_equal(mask, expected), sid
        assert image.shape == (8, 10, 3) and (image == seed * 20).all()


def test_missing_label_file_is_reported(cityscapes):
    (cityscapes / "gtFine/train/bochum/bochum_000000_000005_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match=r"bochum_000000_000005_gtFine_labelIds.png: missing"):
        load_dataset(DataConfig(root=cityscapes, format="cityscapes"))


def test_not_a_cityscapes_tree(tmp_path):
    with pytest.raises(DatasetError, match=r"leftImg8bit: no such directory"):
        load_dataset(DataConfig(root=tmp_path, format="cityscapes"))


def test_validation_runs_on_cityscapes(cityscapes, tmp_path):
    cfg = load_config(
        None,
        [f"data.root={cityscapes}", "data.format=cityscapes", f"validation.report_dir={tmp_path}"],
    )
    report = validate_dataset(cfg)
    by_name = {c.expectation: c.success for c in report.checks}
    # only 3 of the 19 classes occur in this tiny tree
    assert by_name.pop("classes_in_train") is False
    assert all(by_name.values()), report.to_markdown()

"""NIfTI volumes: axial slices as samples, CT windowing, labels, and splits by case."""

import hashlib

import nibabel as nib
import numpy as np
import pytest

from segops.config import DataConfig, config_hash, load_config
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import load_dataset
from segops.errors import ConfigError, DatasetError

# HU value -> grey level under the window (level 40, width 400): -160..240 -> 0..255
WINDOWED = {-1000: 0, -160: 0, -60: 64, 40: 128, 140: 191, 240: 255, 1000: 255}


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(array, np.eye(4)).to_filename(path)


def _volumes(seed):
    """A 6x5x3 int16 CT volume of WINDOWED's values and its uint8 label (slice 1 empty)."""
    hu = np.array(list(WINDOWED), np.int16)
    image = hu[np.random.default_rng(seed).integers(0, len(hu), (6, 5, 3))]
    label = np.zeros((6, 5, 3), np.uint8)
    label[1:4, 1:3, 0], label[2:5, 0:4, 2], label[0, 0, 2] = 1, 2, 255
    return image, label


@pytest.fixture
def nifti(tmp_path):
    root = tmp_path / "ct"
    for seed, case in enumerate(("case_a", "case_b", "case_c", "case_d")):
        image, label = _volumes(seed)
        _save(root / "images" / f"{case}.nii.gz", image)
        _save(root / "labels" / f"{case}.nii.gz", label)
    (root / "classes.txt").write_text("background\nliver\ntumour\n")
    return root


def test_slices_windowed_pixel_for_pixel(nifti):
    info = load_dataset(DataConfig(root=nifti, format="nifti", ct_window=(40, 400)))
    frame = info.manifest.set_index("id")
    assert len(frame) == 12 and frame.loc["case_b_002", "mask"] == "labels/case_b.nii.gz"
    ds = SegmentationDataset(info.root, info.manifest)
    for i, sid in enumerate(info.manifest["id"]):
        case, k = sid[:6], int(sid[-3:])
        image, label = _volumes(("case_a", "case_b", "case_c", "case_d").index(case))
        got_image, got_mask = ds.load(i)
        expected = np.vectorize(WINDOWED.get)(image[:, :, k]).astype(np.uint8)
        assert got_image.shape == (6, 5, 3) and np.array_equal(got_image[..., 1], expected)
        assert (got_image == got_image[..., :1]).all()  # grey replicated
        assert np.array_equal(got_mask, label[:, :, k])
        digest = hashlib.sha256(np.ascontiguousarray(image[:, :, k]).tobytes()).hexdigest()
        assert frame.loc[sid, "image_sha256"] == digest
    assert info.class_pixels().tolist() == [4 * (90 - 6 - 12 - 1), 4 * 6, 4 * 12]
    assert frame["px_ignore"].sum() == 4


def test_slices_of_a_case_share_one_split(nifti):
    cfg = DataConfig(root=nifti, format="nifti", val_fraction=0.25, test_fraction=0.25)
    info = load_dataset(cfg)
    frame = info.manifest
    assert frame.groupby("group")["split"].nunique().eq(1).all()
    assert frame.drop_duplicates("group")["split"].value_counts().to_dict() == {
        "train": 2,
        "val": 1,
        "test": 1,
    }
    written = (nifti / "splits" / "val.txt").read_text().split()
    assert written == sorted(set(info.split("val")["group"])) and written[0].startswith("case_")
    assert load_dataset(cfg).manifest.equals(frame)  # read back from the case-level files


def test_given_case_splits_and_skip_empty(nifti):
    (nifti / "splits").mkdir()
    (nifti / "splits" / "train.txt").write_text("case_a\ncase_b\n")
    (nifti / "splits" / "val.txt").write_text("case_c\n")
    info = load_dataset(DataConfig(root=nifti, format="nifti", nifti_skip_empty=True))
    assert info.split("train")["id"].tolist() == [
        "case_a_000",
        "case_a_002",
        "case_b_000",
        "case_b_002",
    ]
    assert info.split("val")["id"].tolist() == ["case_c_000", "case_c_002"]


def test_min_max_scaling_without_window(tmp_path):
    image = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) * 10.0 - 20.0  # -20..90
    _save(tmp_path / "images" / "mr.nii", image)
    _save(tmp_path / "labels" / "mr.nii", np.ones((2, 3, 2), np.int16))
    (tmp_path / "classes.txt").write_text("bg\norgan\n")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("mr\n")
    info = load_dataset(DataConfig(root=tmp_path, format="nifti"), eval_split=None)
    got, mask = SegmentationDataset(info.root, info.manifest).load(1)
    expected = np.floor((image[:, :, 1] + 20.0) / 110.0 * 255.0 + 0.5).astype(np.uint8)
    assert np.array_equal(got[..., 0], expected) and (mask == 1).all()


def test_bad_labels_are_reported(nifti):
    _save(nifti / "labels" / "case_b.nii.gz", np.full((6, 5, 3), 0.5, np.float32))
    _save(nifti / "labels" / "case_c.nii.gz", np.zeros((6, 4, 3), np.uint8))
    (nifti / "labels" / "case_d.nii.gz").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset(DataConfig(root=nifti, format="nifti"))
    message = str(err.value)
    assert "labels/case_b.nii.gz: holds label values that are not integers" in message
    assert "labels/case_c.nii.gz: mask is 4x6 but image case_c.nii.gz is 5x6" in message
    assert "labels/case_d.nii.gz: missing mask for image case_d.nii.gz" in message


def test_ct_window_option():
    with pytest.raises(ConfigError, match="width must be positive"):
        load_config(None, ["data.ct_window=[40, 0]"])
    assert load_config(None, ["data.ct_window=[40, 400]"]).data.ct_window == (40.0, 400.0)
    # options left at their defaults are not dumped: existing configs keep their hash
    assert "ct_window" not in DataConfig().model_dump()
    assert config_hash(load_config(None, ["data.nifti_skip_empty=false"])) == config_hash(
        load_config(None, [])
    )

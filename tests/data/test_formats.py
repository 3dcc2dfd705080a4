import numpy as np
import pytest
from PIL import Image

from segops.config import DataConfig
from segops.data.formats import VOC_CLASSES
from segops.data.io import read_image, read_mask
from segops.data.manifest import MANIFEST_COLUMNS, assign_splits, load_dataset
from segops.errors import DatasetError


def test_folder_layout_manifest(folder_dataset):
    info = load_dataset(DataConfig(root=folder_dataset, val_fraction=0.25))
    frame = info.manifest
    assert list(frame.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert len(frame) == 8 and info.classes == ("bg", "a", "b")
    assert (frame["height"] == 12).all() and (frame["width"] == 16).all()
    assert frame["split"].value_counts().to_dict() == {"train": 6, "val": 2}
    assert frame["image_sha256"].str.len().eq(64).all()
    # pixel counts: class 1 always has the 4x6 box, class 2 the 4x6 box in odd samples
    assert info.class_pixels().tolist() == [8 * (192 - 48), 8 * 24 + 4 * 24, 4 * 24]


def test_missing_splits_are_made_seeded_and_written(folder_dataset):
    cfg = DataConfig(root=folder_dataset, val_fraction=0.25, test_fraction=0.25, split_seed=5)
    info = load_dataset(cfg)
    written = {
        s: (folder_dataset / "splits" / f"{s}.txt").read_text().split()
        for s in ("train", "val", "test")
    }
    assert {k: len(v) for k, v in written.items()} == {"train": 4, "val": 2, "test": 2}
    assert sorted(info.split("val")["id"]) == written["val"]
    again = load_dataset(cfg)  # now read from the files
    assert again.manifest.equals(info.manifest)
    assert assign_splits(list("abcdefgh"), 0.25, 0.25, 5) == assign_splits(
        list("hgfedcba"), 0.25, 0.25, 5
    )


def test_given_splits_are_respected(folder_dataset):
    (folder_dataset / "splits").mkdir()
    (folder_dataset / "splits" / "train.txt").write_text("s0\ns1\ns2\n")
    (folder_dataset / "splits" / "val.txt").write_text("s3\n")
    info = load_dataset(DataConfig(root=folder_dataset))
    assert sorted(info.split("train")["id"]) == ["s0", "s1", "s2"]
    assert list(info.split("val")["id"]) == ["s3"]
    assert len(info.manifest) == 4  # ids not listed in any split are left out


def _palette_png(path, mask):
    img = Image.fromarray(mask).convert("P")
    pal = np.zeros((256, 3), np.uint8)
    pal[1], pal[15], pal[255] = (128, 0, 0), (192, 128, 128), (224, 224, 192)
    img.putpalette(pal.ravel().tolist())
    img.save(path)


def test_voc_layout(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    for sid in ("2007_000001", "2007_000002", "2007_000003"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{sid}.jpg"
        )
        mask = np.zeros((20, 30), np.uint8)
        mask[5:15, 5:15], mask[4, 4:16] = 15, 255  # a person with a border of ignore
        _palette_png(root / "SegmentationClass" / f"{sid}.png", mask)
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000001\n2007_000002\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000003\n")
    info = load_dataset(DataConfig(root=tmp_path, format="voc"))
    assert info.classes == VOC_CLASSES and len(info.classes) == 21
    assert info.split("train")["id"].tolist() == ["2007_000001", "2007_000002"]
    row = info.split("val").iloc[0]
    assert row["px_15"] == 100 and row["px_ignore"] == 12 and row["px_0"] == 600 - 112
    assert read_mask(root / "SegmentationClass" / "2007_000003.png")[4, 4] == 255
    assert not (root / "splits").exists()  # VOC splits are never rewritten


@pytest.mark.parametrize(
    ("mode", "array", "expected"),
    [
        ("L", np.full((4, 5), 7, np.uint8), 7),
        ("RGBA", np.full((4, 5, 4), [10, 20, 30, 0], np.uint8), [10, 20, 30]),
        ("I;16", np.full((4, 5), 65535, np.uint16), 255),
        ("I;16", np.full((4, 5), 257 * 100, np.uint16), 100),
    ],
)
def test_images_become_rgb_uint8(tmp_path, mode, array, expected):
    path = tmp_path / "x.png"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode == mode
    rgb = read_image(path)
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert (rgb == np.array(expected)).all()


def test_grayscale_jpeg_and_tiff_read(tmp_path):
    Image.fromarray(np.full((6, 6), 90, np.uint8)).save(tmp_path / "g.tif")
    assert read_image(tmp_path / "g.tif").shape == (6, 6, 3)


def test_rgb_mask_is_refused_with_reason(folder_dataset):
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(folder_dataset / "masks" / "s0.png")
    with pytest.raises(DatasetError, match=r"masks/s0.png: RGB mask: masks hold class ids"):
        load_dataset(DataConfig(root=folder_dataset))

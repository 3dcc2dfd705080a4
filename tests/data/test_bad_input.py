"""Each kind of bad input: an error naming the file and the problem, and nothing written."""

import numpy as np
import pytest
from PIL import Image

from segops.config import DataConfig
from segops.data.manifest import load_dataset
from segops.errors import DatasetError


def _check(root, pattern):
    with pytest.raises(DatasetError, match=pattern) as err:
        load_dataset(DataConfig(root=root, val_fraction=0.25))
    assert not (root / "splits").exists(), "a failed check must not write split files"
    return str(err.value)


def test_missing_mask(folder_dataset):
    (folder_dataset / "masks" / "s3.png").unlink()
    _check(folder_dataset, r"masks/s3.png: missing mask for image s3.png")


def test_image_and_mask_sizes_differ(folder_dataset):
    Image.fromarray(np.zeros((10, 16), np.uint8)).save(folder_dataset / "masks" / "s2.png")
    _check(folder_dataset, r"masks/s2.png: mask is 16x10 but image s2.png is 16x12")


def test_mask_value_not_a_class_id(folder_dataset):
    mask = np.zeros((12, 16), np.uint8)
    mask[0, 0] = 200
    Image.fromarray(mask).save(folder_dataset / "masks" / "s1.png")
    message = _check(folder_dataset, r"masks/s1.png: values \[200\] are not class ids")
    assert "0..2" in message and "255 (ignore)" in message


def test_ignore_value_is_allowed(folder_dataset):
    mask = np.full((12, 16), 255, np.uint8)
    Image.fromarray(mask).save(folder_dataset / "masks" / "s1.png")
    info = load_dataset(DataConfig(root=folder_dataset, val_fraction=0.25))
    assert info.manifest.set_index("id").loc["s1", "px_ignore"] == 192


def test_truncated_image(folder_dataset):
    path = folder_dataset / "images" / "s4.png"
    path.write_bytes(path.read_bytes()[:-100])
    _check(folder_dataset, r"images/s4.png: .*truncated")


def test_unreadable_image(folder_dataset):
    (folder_dataset / "images" / "s5.png").write_bytes(b"not an image at all")
    _check(folder_dataset, r"images/s5.png: not an image: not a readable image")


def test_empty_split_file(folder_dataset):
    (folder_dataset / "splits").mkdir()
    (folder_dataset / "splits" / "train.txt").write_text("s0\ns1\n")
    (folder_dataset / "splits" / "val.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"splits/val.txt: split 'val' is empty"):
        load_dataset(DataConfig(root=folder_dataset))


def test_no_validation_images(folder_dataset):
    _check_zero = DataConfig(root=folder_dataset, val_fraction=0.0)
    with pytest.raises(DatasetError, match=r"split 'val' is empty"):
        load_dataset(_check_zero)
    assert not (folder_dataset / "splits").exists()


def test_classes_file_does_not_match_masks(folder_dataset):
    (folder_dataset / "classes.txt").write_text("bg\na\n")  # masks also use id 2
    message = _check(folder_dataset, r"classes.txt: names 2 classes \(ids 0..1\) but 4 masks")
    assert "masks/s1.png" in message


@pytest.mark.parametrize(
    ("text", "pattern"),
    [("", "classes.txt: empty"), ("bg\n\nb\n", "line 2 is blank"), ("a\na\nb\n", "duplicate")],
)
def test_malformed_classes_file(folder_dataset, text, pattern):
    (folder_dataset / "classes.txt").write_text(text)
    _check(folder_dataset, pattern)


def test_missing_classes_file(folder_dataset):
    (folder_dataset / "classes.txt").unlink()
    _check(folder_dataset, r"classes.txt: missing; write one class name per line")


def test_every_problem_is_listed_at_once(folder_dataset):
    (folder_dataset / "masks" / "s3.png").unlink()
    (folder_dataset / "images" / "s5.png").write_bytes(b"junk")
    message = _check(folder_dataset, r"2 problem\(s\)")
    assert "s3.png" in message and "s5.png" in message


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match=r"images: no such directory"):
        load_dataset(DataConfig(root=tmp_path))

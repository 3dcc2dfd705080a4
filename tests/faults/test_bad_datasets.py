"""Hostile datasets: every defect fails validation and the loader alike, naming the file and a
specific reason, without a raw traceback, and nothing is read through a symlink."""

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segops.config import DataConfig, load_config
from segops.data import io
from segops.data.manifest import load_dataset, scan_dataset
from segops.errors import DatasetError
from segops.validation import validate_dataset

TRAIN, VAL = [f"s{i}" for i in range(6)], ["s6", "s7"]


def _splits(root, train=(), val=()):
    (root / "splits").mkdir(exist_ok=True)
    (root / "splits" / "train.txt").write_text("\n".join([*TRAIN, *train]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join([*VAL, *val]) + "\n")


def _bomb_png(path, side=14000):
    """A valid 1-bit PNG of side x side zeros (196 Mpixels) in about 25 KB."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    packer, row = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    png = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png)


def _secret(tmp_path):
    """A readable PNG outside the dataset, the size of its images: a symlink to it would pass."""
    path = tmp_path / "secret.png"
    Image.fromarray(np.full((12, 16, 3), 7, np.uint8)).save(path)
    return path


def symlinked_image(root, tmp_path):
    (root / "images" / "zz.png").symlink_to(_secret(tmp_path))
    shutil.copy(root / "masks" / "s0.png", root / "masks" / "zz.png")
    return "images/zz.png", "symlink to "


def symlinked_images_folder(root, tmp_path):
    shutil.move(root / "images", tmp_path / "elsewhere")
    (root / "images").symlink_to(tmp_path / "elsewhere")
    return "images", "symlink to "


def symlinked_masks_folder(root, tmp_path):
    shutil.move(root / "masks", tmp_path / "elsewhere")
    (root / "masks").symlink_to(tmp_path / "elsewhere")
    return "masks", "symlink to "


def unknown_id(root, tmp_path):
    _splits(root, train=["ghost"])
    return "splits/train.txt", "id 'ghost' has no image"


def dotdot_id(root, tmp_path):
    shutil.copy(root / "images" / "s0.png", tmp_path / "x.png")
    _splits(root, train=["../x"])
    return "splits/train.txt", "id '../x' is a path, not a plain name"


def absolute_id(root, tmp_path):
    _splits(root, val=[str(_secret(tmp_path).with_suffix(""))])
    return "splits/val.txt", f"id '{tmp_path / 'secret'}' is an absolute path"


def truncated_png(root, tmp_path):
    path = root / "images" / "s4.png"
    path.write_bytes(path.read_bytes()[:-100])
    return "images/s4.png", "truncated PNG"


def zero_bytes(root, tmp_path):
    (root / "masks" / "s3.png").write_bytes(b"")
    return "masks/s3.png", "0 bytes"


def text_named_png(root, tmp_path):
    (root / "images" / "s5.png").write_text("hello, I am text\n")
    return "images/s5.png", "not an image"


def rgb_mask(root, tmp_path):
    mask = np.array(Image.open(root / "masks" / "s1.png"))
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(root / "masks" / "s1.png")
    return "masks/s1.png", "RGB mask: masks hold class ids"


def bomb_png(root, tmp_path):
    _bomb_png(root / "images" / "s2.png")
    return "images/s2.png", f"image larger than {io.MAX_PIXELS} pixels (14000x14000)"


def missing_mask(root, tmp_path):
    (root / "masks" / "s6.png").unlink()
    return "masks/s6.png", "missing mask for image s6.png"


DEFECTS = [
    symlinked_image,
    symlinked_images_folder,
    symlinked_masks_folder,
    unknown_id,
    dotdot_id,
    absolute_id,
    truncated_png,
    zero_bytes,
    text_named_png,
    rgb_mask,
    bomb_png,
    missing_mask,
]


def _config(root, tmp_path):
    return load_config(None, [f"data.root={root}", f"validation.report_dir={tmp_path / 'report'}"])


@pytest.mark.parametrize("defect", DEFECTS, ids=lambda f: f.__name__)
def test_validation_and_loader_refuse_naming_the_file_and_reason(folder_dataset, tmp_path, defect):
    file, reason = defect(folder_dataset, tmp_path)
    report = validate_dataset(_config(folder_dataset, tmp_path))  # no raw exception
    assert report.success is False
    named = [p for p in report.problems if p.file == file]
    assert named and named[0].reason.startswith(reason), report.to_markdown()
    by_name = {c.expectation: c for c in report.checks}
    assert by_name["dataset_loads"].success is False and file in by_name["dataset_loads"].files
    assert f"{file}: {reason}" in report.problem_summary()
    saved = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert saved["success"] is False
    assert {"file": file, "reason": named[0].reason} in saved["problems"]
    assert f"- `{file}`: {reason}" in report.to_markdown()
    with pytest.raises(DatasetError) as err:  # the loader refuses it for the same reason
        load_dataset(DataConfig(root=folder_dataset, val_fraction=0.25))
    assert f"{folder_dataset / file}: {reason}" in str(err.value)


def test_nothing_is_read_through_a_symlink(folder_dataset, tmp_path):
    symlinked_image(folder_dataset, tmp_path)
    symlinked_masks_folder(folder_dataset, tmp_path)
    scan = scan_dataset(DataConfig(root=folder_dataset), eval_split=None)
    frame = scan.frame.set_index("id")
    assert frame.loc["zz", "image_sha256"] == ""  # the secret's bytes were never read
    assert (frame["mask_sha256"] == "").all() and not frame["mask_readable"].any()
    line = f"{folder_dataset}/masks/s0.png: symlink: inside the symlinked folder masks/"
    assert any(p.startswith(line) for p in scan.problems)


def test_pixel_limit_is_checked_from_the_header(folder_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(io, "MAX_PIXELS", 100)  # every 16x12 image is above it
    report = validate_dataset(_config(folder_dataset, tmp_path))
    reasons = {p.file: p.reason for p in report.problems}
    assert reasons["images/s0.png"].startswith("image larger than 100 pixels (16x12)")
    assert report.success is False


def test_cli_validate_exits_non_zero_naming_the_files(folder_dataset, tmp_path):
    dotdot_id(folder_dataset, tmp_path)
    bomb_png(folder_dataset, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "segops.cli.main", "validate", "--dataset", str(folder_dataset)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert "# Dataset validation FAILED" in out
    assert "`splits/train.txt`: id '../x' is a path" in out
    assert f"`images/s2.png`: image larger than {io.MAX_PIXELS} pixels" in out
    assert Path(tmp_path / "runs/latest/validation/validation.json").is_file()


def test_symlinked_annotation_files_are_never_read(tmp_path):
    """The COCO instances JSON and folder_instance's instances.csv are metadata read while
    listing a dataset: a link there is refused before anything is read through it."""
    from segops.data.coco import read_index
    from segops.data.folder_instance import read_table
    from segops.data.io import ReadError

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "table.csv").write_text("id,instance,class\na,1,1\n")
    (outside / "coco.json").write_text('{"images": [], "annotations": [], "categories": []}')
    root = tmp_path / "ds"
    root.mkdir()
    (root / "instances.csv").symlink_to(outside / "table.csv")
    (root / "instances.json").symlink_to(outside / "coco.json")
    with pytest.raises(ReadError, match="symlink"):
        read_table(root)
    with pytest.raises(ReadError, match="symlink"):
        read_index(root / "instances.json")

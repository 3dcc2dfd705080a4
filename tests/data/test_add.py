"""`segops data add`: checked pairs join the dataset all at once, or nothing changes at all."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import typer
from conftest import write_sample
from PIL import Image
from typer.testing import CliRunner

from segops.cli.dataops import data_add
from segops.config import DataConfig, VersioningConfig
from segops.data import add as add_module
from segops.data.add import AddError, PairsRejectedError, add_pairs, check_new_pairs
from segops.data.manifest import load_dataset
from segops.versioning import ensure_workspace, version_dataset

# dvc 3.67 itself trips a pygtrie deprecation on every add; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

NEW = ("n0", "n1", "n2")


@pytest.fixture(autouse=True)
def _site_cache(tmp_path, monkeypatch) -> None:
    # DVC keeps per-repo state in /var/tmp/dvc/repo/<hash>: one stale folder per test otherwise.
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))


@pytest.fixture
def dataset(folder_dataset) -> Path:
    """The 8-sample conftest dataset (tmp_path/ds) with train and val split files."""
    (folder_dataset / "splits").mkdir()
    (folder_dataset / "splits" / "train.txt").write_text("s0\ns1\ns2\ns3\ns4\ns5\n")
    (folder_dataset / "splits" / "val.txt").write_text("s6\ns7\n")
    return folder_dataset


def _mask(value: int = 1, shape: tuple[int, int] = (12, 16)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[3:8, 4:12] = value
    mask[0, 0] = 255  # ignore is always allowed
    return mask


@pytest.fixture
def src(tmp_path) -> Path:
    """Three new valid 16x12 pairs n0..n2 (classes bg/a/b) in the folder layout."""
    root = tmp_path / "new"
    rng = np.random.default_rng(42)
    for i, sid in enumerate(NEW):
        write_sample(root, sid, rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), _mask(i % 3))
    (root / "classes.txt").write_text("bg\na\nb\n")
    return root


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _no_staging(root: Path) -> bool:
    return not list(root.parent.glob(f".{root.name}.add-tmp-*"))


def assert_rejected(src: Path, dataset: Path, pattern: str) -> str:
    """Assert add_pairs rejects `src` with `pattern`, writing nothing; return the message."""
    before = _tree(dataset)
    with pytest.raises(PairsRejectedError, match=pattern) as err:
        add_pairs(src, dataset)
    assert _tree(dataset) == before
    assert _no_staging(dataset)
    assert "nothing was written" in str(err.value)
    return str(err.value)


def test_valid_pairs_are_added_versioned_and_loadable(dataset, src, tmp_path):
    ensure_workspace(tmp_path)
    cfg = VersioningConfig(path=Path("ds"), remote="store", remote_url=str(tmp_path / "remote"))
    old = version_dataset(tmp_path, cfg)
    result = add_pairs(src, dataset, "train")
    assert result.ids == NEW and result.count == 3 and result.split == "train"
    assert result.split_file == dataset / "splits" / "train.txt"
    for sid in NEW:
        for kind in ("images", "masks"):
            name = f"{kind}/{sid}.png"
            assert (dataset / name).read_bytes() == (src / name).read_bytes()
    train = (dataset / "splits" / "train.txt").read_text()
    assert train == "s0\ns1\ns2\ns3\ns4\ns5\nn0\nn1\nn2\n"
    assert (dataset / "splits" / "val.txt").read_text() == "s6\ns7\n"
    assert _no_staging(dataset)
    new = version_dataset(tmp_path, cfg)
    assert new.md5 != old.md5
    assert new.pushed == 8  # 3 images + 3 masks + train.txt + the .dir manifest
    info = load_dataset(DataConfig(root=dataset))
    assert sorted(info.split("train")["id"]) == sorted(["s0", "s1", "s2", "s3", "s4", "s5", *NEW])
    assert len(info.manifest) == 11


def test_check_new_pairs_writes_nothing_and_returns_pairs(dataset, src):
    before = _tree(dataset)
    pairs, rejected = check_new_pairs(src, dataset)
    assert [p.id for p in pairs] == list(NEW) and rejected == []
    assert pairs[0].image == src / "images" / "n0.png"
    assert _tree(dataset) == before


def test_new_split_file_is_created_when_the_dataset_has_splits(dataset, src):
    result = add_pairs(src, dataset, "test")
    assert (dataset / "splits" / "test.txt").read_text() == "n0\nn1\nn2\n"
    assert result.split_file == dataset / "splits" / "test.txt"
    assert load_dataset(DataConfig(root=dataset)).split("test")["id"].tolist() == list(NEW)


def test_dataset_without_split_files_keeps_none(folder_dataset, src):
    result = add_pairs(src, folder_dataset)
    assert result.split_file is None and not (folder_dataset / "splits").exists()
    assert (folder_dataset / "images" / "n2.png").is_file()


def test_split_must_be_train_val_or_test(dataset, src):
    before = _tree(dataset)
    with pytest.raises(AddError, match=r"split 'holdout' is not one of train, val, test"):
        add_pairs(src, dataset, "holdout")
    assert _tree(dataset) == before


def test_missing_mask(dataset, src):
    (src / "masks" / "n1.png").unlink()
    assert_rejected(src, dataset, r"new/masks/n1.png: missing mask for image n1.png")


def test_mask_without_image(dataset, src):
    (src / "images" / "n2.png").unlink()
    assert_rejected(src, dataset, r"new/masks/n2.png: mask without an image")


def test_size_mismatch(dataset, src):
    Image.fromarray(_mask(shape=(10, 16))).save(src / "masks" / "n0.png")
    assert_rejected(src, dataset, r"new/masks/n0.png: mask is 16x10 but image n0.png is 16x12")


def test_mask_value_not_a_class_id(dataset, src):
    Image.fromarray(_mask(value=7)).save(src / "masks" / "n1.png")
    message = assert_rejected(src, dataset, r"new/masks/n1.png: values \[7\] are not class ids")
    assert "0..2" in message


def test_duplicate_id(dataset, src):
    shutil.move(src / "images" / "n0.png", src / "images" / "s3.png")
    shutil.move(src / "masks" / "n0.png", src / "masks" / "s3.png")
    assert_rejected(src, dataset, r"new/images/s3.png: id 's3' is already in the dataset")


def test_duplicate_image_content(dataset, src):
    shutil.copyfile(dataset / "images" / "s5.png", src / "images" / "n1.png")
    assert_rejected(src, dataset, r"new/images/n1.png: same image content as 's5'")


def test_duplicate_image_content_within_the_source(dataset, src):
    shutil.copyfile(src / "images" / "n0.png", src / "images" / "n2.png")
    assert_rejected(src, dataset, r"new/images/n2.png: same image content as 'n0'")


def test_truncated_image(dataset, src):
    path = src / "images" / "n2.png"
    path.write_bytes(path.read_bytes()[:-100])
    assert_rejected(src, dataset, r"new/images/n2.png: .*truncated")


def test_classes_txt_mismatch(dataset, src):
    (src / "classes.txt").write_text("bg\na\nc\n")
    assert_rejected(src, dataset, r"new/classes.txt: classes \['bg', 'a', 'c'\] differ")


def test_every_rejected_file_is_listed(dataset, src):
    (src / "masks" / "n0.png").unlink()
    Image.fromarray(_mask(value=9)).save(src / "masks" / "n2.png")
    with pytest.raises(PairsRejectedError) as err:
        add_pairs(src, dataset)
    assert [r.file.name for r in err.value.rejections] == ["n0.png", "n2.png"]
    assert "2 file(s)" in str(err.value) and "n1" not in str(err.value)


def _fail_on_call(monkeypatch, n: int) -> Callable[[], int]:
    """Make add.py's os.replace raise on its n-th call; return a call counter."""
    calls = []
    real = os.replace

    def replace(a, b):
        calls.append((a, b))
        if len(calls) == n:
            raise OSError(28, "No space left on device (simulated)")
        return real(a, b)

    monkeypatch.setattr(add_module.os, "replace", replace)
    return lambda: len(calls)


@pytest.mark.parametrize("fail_at", [2, 7], ids=["second-move", "split-file"])
def test_failure_during_the_move_leaves_the_dataset_unchanged(dataset, src, monkeypatch, fail_at):
    before = _tree(dataset)
    count = _fail_on_call(monkeypatch, fail_at)  # 6 file moves, then the split file (7th)
    with pytest.raises(OSError, match="simulated"):
        add_pairs(src, dataset)
    assert count() == fail_at + fail_at - 1  # every completed move was undone
    assert _tree(dataset) == before
    assert _no_staging(dataset)


def _cli_app() -> typer.Typer:
    app = typer.Typer()
    app.command("add")(data_add)
    app.command("noop")(lambda: None)  # two commands: `add` stays a subcommand as in segops
    return app


def test_cli_adds_and_versions(dataset, src, tmp_path, monkeypatch):
    ensure_workspace(tmp_path)
    remote = str(tmp_path / "r")
    version_dataset(tmp_path, VersioningConfig(path=Path("ds"), remote_url=remote))
    monkeypatch.chdir(tmp_path)
    args = ["add", str(src), "--dataset", "ds", "--split", "val", "--workspace", "."]
    args += ["--set", "versioning.path=ds", "--set", f"versioning.remote_url={remote}"]
    result = CliRunner().invoke(_cli_app(), args)
    assert result.exit_code == 0, result.output
    assert "added 3 pairs" in result.output and "splits/val.txt" in result.output
    assert "8 objects pushed to local" in result.output
    assert "`segops run` will now retrain" in result.output
    md5 = version_dataset(tmp_path, VersioningConfig(path=Path("ds"), push=False)).md5
    assert f"data version {md5}" in result.output


def test_cli_no_version_adds_without_dvc(dataset, src, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no .dvc here: versioning would fail
    result = CliRunner().invoke(_cli_app(), ["add", str(src), "-d", "ds", "--no-version"])
    assert result.exit_code == 0, result.output
    assert "not versioned" in result.output and (dataset / "images" / "n0.png").is_file()


def test_cli_rejection_exits_2_with_the_message(dataset, src, tmp_path):
    Image.fromarray(_mask(shape=(12, 8))).save(src / "masks" / "n1.png")
    before = _tree(dataset)
    code = "import segops.cli.main as m; m.main()"  # the real entry point
    argv = [sys.executable, "-c", code, "data", "add", str(src), "-d", str(dataset)]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: 1 file(s) in ")
    assert "new/masks/n1.png: mask is 8x12 but image n1.png is 16x12" in proc.stderr
    assert "nothing was written" in proc.stderr
    assert _tree(dataset) == before and _no_staging(dataset)

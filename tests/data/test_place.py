"""Datasets anywhere: imported into the versioned tree once, identified by their own hash."""

from __future__ import annotations

import os
import shutil

import pytest
import yaml
from conftest import dvc_workspace

from segops.config import load_config
from segops.data.place import dir_md5, place_dataset
from segops.errors import DatasetError
from segops.versioning import VersioningError, version_dataset


def test_outside_dataset_is_imported_once_and_identical_reimport_is_a_no_op(
    folder_dataset, tmp_path
):
    tree = tmp_path / "data"
    placed = place_dataset(folder_dataset, tree)
    assert placed.root == str(tree / "ds") and placed.imported_from == str(folder_dataset)
    assert "imported" in placed.message and dir_md5(tree / "ds") == dir_md5(folder_dataset)
    again = place_dataset(folder_dataset, tree)
    assert again.root == placed.root and "already imported" in again.message
    assert [p.name for p in tree.iterdir()] == ["ds"]  # no temporary folder left behind


def test_a_different_dataset_of_the_same_name_is_refused_and_nothing_changes(
    folder_dataset, tmp_path
):
    tree = tmp_path / "data"
    place_dataset(folder_dataset, tree)
    before = dir_md5(tree / "ds")
    (folder_dataset / "classes.txt").write_text("bg\na\nc\n")
    with pytest.raises(DatasetError, match=r"already holds another dataset.*segops data add"):
        place_dataset(folder_dataset, tree)
    assert dir_md5(tree / "ds") == before


def test_dataset_inside_the_tree_stays_where_it_is(folder_dataset, tmp_path):
    tree = folder_dataset.parent
    placed = place_dataset(folder_dataset, tree)
    assert placed.root == str(folder_dataset) and placed.imported_from is None


def test_symlinks_are_refused_before_anything_is_copied(folder_dataset, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    os.symlink(secret, folder_dataset / "images" / "zz.png")
    with pytest.raises(DatasetError, match=r"symbolic links .*zz\.png.*cp -L"):
        place_dataset(folder_dataset, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_dataset_md5_is_what_dvc_add_of_the_folder_alone_writes(folder_dataset, tmp_path):
    ws = dvc_workspace(tmp_path)
    shutil.copytree(folder_dataset, ws / "data" / "ds")
    shutil.copytree(folder_dataset, ws / "data" / "other")
    (ws / "data" / "other" / "classes.txt").write_text("x\ny\nz\n")
    cfg = load_config(None, [f"versioning.path={ws / 'data'}"]).versioning
    version = version_dataset(ws, cfg, ws / "data" / "ds")
    assert version.dataset == "data/ds" and version.dataset_md5 == dir_md5(folder_dataset)
    (tmp_path / "alone").mkdir()
    alone = dvc_workspace(tmp_path / "alone")
    shutil.copytree(folder_dataset, alone / "ds")
    only = version_dataset(alone, cfg.model_copy(update={"path": alone / "ds", "push": False}))
    assert yaml.safe_load(only.dvc_text)["outs"][0]["md5"] == version.dataset_md5
    # another dataset changing beside it changes data/, not this dataset's identity
    (ws / "data" / "other" / "classes.txt").write_text("x\ny\n")
    later = version_dataset(ws, cfg, ws / "data" / "ds")
    assert later.md5 != version.md5 and later.dataset_md5 == version.dataset_md5


def test_a_symlink_anywhere_in_the_versioned_tree_is_never_versioned(folder_dataset, tmp_path):
    ws = dvc_workspace(tmp_path)
    shutil.copytree(folder_dataset, ws / "data" / "ds")
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    os.symlink(secret, ws / "data" / "ds" / "images" / "zz.png")
    cfg = load_config(None, [f"versioning.path={ws / 'data'}"]).versioning
    with pytest.raises(VersioningError, match="symbolic links"):
        version_dataset(ws, cfg, ws / "data" / "ds")
    assert not (ws / "data.dvc").exists()
    cache = ws / ".dvc" / "cache"
    assert not cache.exists() or all(
        "password" not in p.read_text(errors="ignore") for p in cache.rglob("*") if p.is_file()
    )

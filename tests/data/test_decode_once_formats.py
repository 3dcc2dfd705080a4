"""Formats whose samples share one file decode it once per process (`segops.data.io.
read_derived`): NIfTI slices of a volume, COCO masks of one annotation JSON, instance maps of
folder_instance. After the manifest scan, a shuffled epoch decodes nothing again; a changed
file is read again, never served stale (also when it keeps its size and mtime); arrays equal
an uncached read; problems name their own file; with the cache off nothing is hashed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_coco import coco  # noqa: F401  (the fixture)

from segops.config import DataConfig
from segops.data import coco as coco_format
from segops.data import decode_cache, folder_instance, nifti
from segops.data.dataset import SegmentationDataset
from segops.data.formats import ref_from_row
from segops.data.manifest import load_dataset
from segops.data.shapes import generate_shapes

CASES = 6  # more volumes than nifti's volume cache holds (4): a shuffled epoch used to reload


BUDGET = 256 << 20  # whatever SEGOPS_DECODE_CACHE_MB says where the tests run


@pytest.fixture(autouse=True)
def fresh_cache():
    decode_cache.configure(BUDGET)
    yield
    decode_cache.configure(decode_cache.default_budget())


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(array, np.eye(4)).to_filename(path)


@pytest.fixture
def volumes(tmp_path):
    """CASES cases of 12x10x5 int16 volumes (random intensities) and their labels."""
    root = tmp_path / "ct"
    rng = np.random.default_rng(3)
    for c in range(CASES):
        _save(root / "images" / f"case{c}.nii.gz", rng.integers(-900, 900, (12, 10, 5), np.int16))
        _save(root / "labels" / f"case{c}.nii.gz", rng.integers(0, 3, (12, 10, 5), np.uint8))
    (root / "classes.txt").write_text("background\nliver\ntumour\n")
    return root


def shuffled_pass(dataset: SegmentationDataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every sample, in a shuffled order, returned in index order."""
    order = np.random.default_rng(0).permutation(len(dataset))
    loaded = {int(i): dataset.load(int(i)) for i in order}
    return [loaded[i] for i in range(len(dataset))]


def uncached(dataset: SegmentationDataset) -> list[tuple[np.ndarray, np.ndarray]]:
    decode_cache.configure(0)
    try:
        return [dataset.load(i) for i in range(len(dataset))]
    finally:
        decode_cache.configure(BUDGET)


def same(a: list, b: list) -> bool:
    pairs = [xy for pa, pb in zip(a, b, strict=True) for xy in zip(pa, pb, strict=True)]
    return all(np.array_equal(x, y) for x, y in pairs)


def test_a_shuffled_epoch_after_the_scan_loads_no_volume(volumes):
    info = load_dataset(DataConfig(root=volumes, format="nifti", ct_window=(40, 400)))
    dataset = SegmentationDataset(info.root, info.manifest)
    assert len(dataset) == CASES * 5
    loads = nifti._load.cache_info().misses
    first = shuffled_pass(dataset)
    assert nifti._load.cache_info().misses == loads  # every slice came from the cache
    assert same(first, uncached(dataset))
    assert nifti._load.cache_info().misses > loads  # the uncached reads did load volumes
    image, _ = dataset.load(0)
    image[:] = 0  # the caller's own copy: the next read is untouched
    assert same(shuffled_pass(dataset), first)


def test_a_changed_volume_gives_its_new_slices(volumes):
    config = DataConfig(root=volumes, format="nifti")
    info = load_dataset(config)
    dataset = SegmentationDataset(info.root, info.manifest)
    before = dataset.load(0)[1]
    label = volumes / "labels" / f"{info.manifest['id'][0].rsplit('_', 1)[0]}.nii.gz"
    flipped = (np.asanyarray(nib.load(label).dataobj) + 1) % 3
    _save(label, flipped.astype(np.uint8))
    after = SegmentationDataset(info.root, load_dataset(config).manifest).load(0)[1]
    assert np.array_equal(after, (before + 1) % 3)


def test_coco_masks_are_rasterised_once_and_follow_a_changed_json(coco, monkeypatch):  # noqa: F811
    calls = []
    real = coco_format.semantic_mask
    monkeypatch.setattr(coco_format, "semantic_mask", lambda *a: calls.append(a) or real(*a))
    config = DataConfig(root=coco, format="coco")
    info = load_dataset(config)
    scanned = len(calls)
    assert scanned == 3  # a, b, c
    dataset = SegmentationDataset(info.root, info.manifest)
    first = shuffled_pass(dataset)
    load_dataset(config)  # validation, training, evaluation each scan again
    assert len(calls) == scanned
    assert same(first, uncached(dataset))
    path = coco / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    data["annotations"] = []  # c loses its only instance
    path.write_text(json.dumps(data))
    info = load_dataset(config)
    c = info.manifest["id"].tolist().index("c")
    assert not SegmentationDataset(info.root, info.manifest).load(c)[1].any()


def test_instance_maps_are_decoded_once(tmp_path, monkeypatch):
    root = generate_shapes(tmp_path / "shapes", n=6, size=32, seed=2, instances="folder")
    calls = []
    real = folder_instance.read_instance_map
    monkeypatch.setattr(
        folder_instance, "read_instance_map", lambda path: calls.append(path) or real(path)
    )
    info = load_dataset(DataConfig(root=root, format="folder_instance"))
    assert len(calls) == 6
    dataset = SegmentationDataset(info.root, info.manifest)
    first = shuffled_pass(dataset)
    for row in info.manifest.to_dict("records"):  # Mask R-CNN's targets read the same maps
        assert len(folder_instance.instance_targets(root, ref_from_row(row))["labels"]) > 0
    assert len(calls) == 6
    assert same(first, uncached(dataset))


def test_a_volume_replaced_with_its_old_size_and_mtime_gives_its_new_slices(tmp_path):
    root = tmp_path / "ct"
    for c in range(5):  # constant volumes: labels of 1s and of 2s compress to the same size
        _save(root / "images" / f"case{c}.nii.gz", np.zeros((6, 5, 2), np.int16))
        _save(root / "labels" / f"case{c}.nii.gz", np.ones((6, 5, 2), np.uint8))
    (root / "classes.txt").write_text("background\nliver\ntumour\n")
    config = DataConfig(root=root, format="nifti")
    info = load_dataset(config)
    assert (SegmentationDataset(root, info.manifest).load(0)[1] == 1).all()
    label = root / info.manifest["mask"][0]
    nifti.read_volume(label)  # the last volume read: segops keeps the last 4 parsed too
    before = os.stat(label)
    _save(label, np.full((6, 5, 2), 2, np.uint8))  # as `cp -p` or `rsync -a` would leave it
    os.utime(label, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(label).st_size == before.st_size
    assert (SegmentationDataset(root, load_dataset(config).manifest).load(0)[1] == 2).all()


def test_each_window_of_one_volume_is_its_own(volumes):
    images = {}
    for window in (None, (40, 400), (0, 100)):
        info = load_dataset(DataConfig(root=volumes, format="nifti", ct_window=window))
        images[window] = SegmentationDataset(info.root, info.manifest).load(0)[0]
        decode_cache.configure(0)
        fresh = SegmentationDataset(info.root, info.manifest).load(0)[0]
        decode_cache.configure(BUDGET)
        assert np.array_equal(images[window], fresh), window
    assert not np.array_equal(images[None], images[(40, 400)])
    assert not np.array_equal(images[(40, 400)], images[(0, 100)])


def test_a_problem_names_its_own_file_when_two_files_have_the_same_bytes(volumes):
    from segops.data.formats import SampleRef

    for name in ("case0", "case1"):  # the same bytes, not a volume (a saved error page)
        (volumes / "labels" / f"{name}.nii.gz").write_bytes(b"<html>404</html>")
    for name, other in (("case0", "case1"), ("case1", "case0")):
        mask = Path("labels") / f"{name}.nii.gz"
        ref = SampleRef(f"{name}_000", Path("images") / f"{name}.nii.gz", mask, reader="nifti")
        _, part = nifti.read_sample(volumes, ref.__class__(**{**vars(ref), "index": 0}))
        assert part.array is None and "not a readable NIfTI volume" in part.problem
        assert other not in part.problem, part.problem


def test_with_the_cache_off_a_shared_file_is_not_hashed_per_sample(volumes, monkeypatch):
    from segops.data import io

    hashed = []
    real = io.file_digest
    monkeypatch.setattr(io, "file_digest", lambda path: hashed.append(path) or real(path))
    decode_cache.configure(0)
    info = load_dataset(DataConfig(root=volumes, format="nifti"))
    SegmentationDataset(info.root, info.manifest).load(0)
    assert hashed == []

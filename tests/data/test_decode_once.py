"""One process decodes each dataset file once (segops.data.decode_cache): validation, the
training dataset and loader, evaluation, Grad-CAM and the ONNX check, as the flow calls them;
a changed file is decoded again, and the byte budget evicts."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config, write_sample
from PIL import Image

from segops.config import DataConfig
from segops.data import decode_cache, io
from segops.data.formats import load_sample, read_folder_layout
from segops.data.manifest import load_dataset
from segops.data.shapes import generate_shapes


@pytest.fixture
def decodes(monkeypatch) -> Counter:
    """Decodes per file path (every image and mask decode goes through `io._open`), counted
    from an empty cache with the default budget."""
    found: Counter = Counter()
    real = io._open

    def counted(path):
        found[Path(path)] += 1
        return real(path)

    monkeypatch.setattr(io, "_open", counted)
    decode_cache.configure(decode_cache.default_budget())
    yield found
    decode_cache.configure(decode_cache.default_budget())


def dataset_files(root: Path) -> set[Path]:
    return {p for folder in ("images", "masks") for p in (root / folder).iterdir()}


def contents(root: Path) -> set[tuple[str, str]]:
    """(folder, sha256) of every image and mask: files with the same bytes decode once."""
    return {
        (p.parent.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in dataset_files(root)
    }


def decoded_once(decodes: Counter, root: Path) -> bool:
    """No file under `root` decoded twice, each content decoded, nothing else decoded (two
    files with the same bytes may both decode when two scan threads meet them at once)."""
    seen = {(p.parent.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in decodes}
    return (
        set(decodes) <= dataset_files(root)
        and set(decodes.values()) == {1}
        and seen == contents(root)
    )


def run_like_the_flow(cfg, out: Path) -> dict:
    """validate -> (place) -> train one epoch -> evaluate val and test -> Grad-CAM -> ONNX:
    the library calls of segops.steps' validate, place, train, evaluate and export steps."""
    from segops.evaluate.report import evaluate_checkpoint
    from segops.explain import explain_worst
    from segops.inference import load_trained
    from segops.serving.onnx import export_and_check
    from segops.steps.data import place_step, validate_step
    from segops.train.run import train_configured

    assert validate_step(cfg).report.success
    cfg = place_step(cfg).config
    result = train_configured(cfg)
    info = load_dataset(cfg.data, eval_split=cfg.evaluate.split)  # as evaluate_step does
    checkpoint = Path(result.out_dir) / "checkpoints" / "best.pt"
    report = evaluate_checkpoint(cfg, checkpoint, dataset=info)
    test = evaluate_checkpoint(cfg, checkpoint, "test", out / "eval_test", dataset=info)
    explained = explain_worst(load_trained(checkpoint), cfg, report.out_dir, k=2)
    onnx = export_and_check(checkpoint, out / "onnx", cfg)
    return {"info": info, "report": report, "test": test, "explained": explained, "onnx": onnx}


def flow_config(root: Path, tmp_path: Path, *extra: str):
    return tiny_config(
        root,
        tmp_path / "run",
        "train.epochs=1",
        "data.test_fraction=0.2",
        f"versioning.path={tmp_path / 'data'}",
        f"validation.report_dir={tmp_path / 'validation'}",
        "train.threads=1",
        *extra,
    )


@pytest.mark.slow
def test_the_flow_decodes_each_file_once(decodes, tmp_path):
    root = generate_shapes(tmp_path / "data" / "shapes", n=20, size=32, seed=5)
    done = run_like_the_flow(flow_config(root, tmp_path), tmp_path)
    assert len(done["info"].split("test")) and done["onnx"]["segops.onnx.status"] == "ok"
    assert len(done["explained"]) == 2
    assert decoded_once(decodes, root)


@pytest.mark.slow
def test_images_larger_than_the_crop_in_a_folder_outside_data_decode_once(decodes, tmp_path):
    """Native-resolution crops and sliding windows, and a dataset that `place` copies into
    `data/`: the copies are found by their content, nothing is decoded twice."""
    root = tmp_path / "outside" / "cells"
    rng = np.random.default_rng(2)
    for i in range(10):
        mask = np.zeros((40, 48), np.uint8)
        mask[8 + i : 20 + i, 10:30] = 1
        write_sample(root, f"c{i}", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8), mask)
    (root / "classes.txt").write_text("background\ncell\n")
    cfg = flow_config(root, tmp_path, "data.crop_size=24")
    done = run_like_the_flow(cfg, tmp_path)
    placed = tmp_path / "data" / "cells"
    assert Path(done["info"].root) == placed and contents(placed) == contents(root)
    assert decoded_once(decodes, root)


def test_cached_arrays_equal_fresh_decodes_and_are_the_callers_own(decodes, folder_dataset):
    layout = read_folder_layout(folder_dataset)
    for ref in layout.samples:
        first = load_sample(folder_dataset, ref)
        again = load_sample(folder_dataset, ref)
        for a, b in zip(first, again, strict=True):
            assert a is not b and b.flags.writeable and np.array_equal(a, b) and a.dtype == b.dtype
        again[0][:] = 0  # a caller changing its array changes nothing kept
        image = np.array(Image.open(folder_dataset / ref.image).convert("RGB"))
        assert np.array_equal(load_sample(folder_dataset, ref)[0], image)
    assert decoded_once(decodes, folder_dataset)


def test_manifest_with_the_cache_equals_the_manifest_without(decodes, folder_dataset):
    cold = load_dataset(DataConfig(root=folder_dataset)).manifest
    assert decoded_once(decodes, folder_dataset)
    decodes.clear()
    warm = load_dataset(DataConfig(root=folder_dataset)).manifest
    assert not decodes  # the facts of the scan, kept by content
    decode_cache.configure(0)  # caching off: every scan decodes every file
    off = load_dataset(DataConfig(root=folder_dataset)).manifest
    assert set(decodes) == dataset_files(folder_dataset) and set(decodes.values()) == {1}
    pd.testing.assert_frame_equal(cold, warm)
    pd.testing.assert_frame_equal(cold, off)


def test_a_changed_file_is_decoded_again(decodes, folder_dataset):
    before = load_dataset(DataConfig(root=folder_dataset)).manifest.set_index("id")
    changed = folder_dataset / "images" / "s3.png"
    Image.fromarray(np.full((12, 16, 3), 7, np.uint8)).save(changed)
    decodes.clear()
    after = load_dataset(DataConfig(root=folder_dataset)).manifest.set_index("id")
    assert decodes == Counter({changed: 1})
    assert after.loc["s3", "image_sha256"] != before.loc["s3", "image_sha256"]
    (ref,) = [r for r in read_folder_layout(folder_dataset).samples if r.id == "s3"]
    assert load_sample(folder_dataset, ref)[0].max() == 7


def test_a_file_rewritten_with_its_old_size_and_times_is_decoded_again(decodes, tmp_path):
    """A file last written long ago is known by its identity (no read); rewritten in place
    with the same size and its old mtime put back, its ctime still changes."""
    root = tmp_path / "ds"
    write_sample(root, "a", np.zeros((8, 8, 3), np.uint8), None)
    mask_a, other = root / "masks" / "a.png", tmp_path / "ones.png"
    for path, value in ((mask_a, 0), (other, 1)):  # uncompressed: the same size
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(path, compress_level=0)
    assert other.stat().st_size == mask_a.stat().st_size
    (root / "classes.txt").write_text("bg\nfg\n")
    old = 1_000_000_000
    for path in dataset_files(root):
        os.utime(path, (old, old))
    load_dataset(DataConfig(root=root), eval_split=None)
    load_dataset(DataConfig(root=root), eval_split=None)
    assert decoded_once(decodes, root) and decode_cache.stats()["digests"]["hits"] > 0
    with open(mask_a, "r+b") as fh:  # in place: the same inode
        fh.write(other.read_bytes())
    os.utime(mask_a, (old, old))
    info = load_dataset(DataConfig(root=root), eval_split=None)
    assert decodes[mask_a] == 2 and info.manifest.loc[0, "px_1"] == 64


def test_the_budget_evicts_and_decodes_again(decodes, folder_dataset):
    one = 12 * 16 * 3 + 12 * 16 + 2 * 256  # an image, its mask, and the store's own cost
    decode_cache.configure(3 * one)  # three samples of eight
    load_dataset(DataConfig(root=folder_dataset))
    load_dataset(DataConfig(root=folder_dataset))
    stats = decode_cache.stats()["decoded"]
    assert stats["evictions"] > 0 and stats["bytes"] <= stats["budget"] == 3 * one
    assert max(decodes.values()) == 2  # the facts (an eighth of the budget) went too
    decode_cache.configure(10 * one)
    load_dataset(DataConfig(root=folder_dataset))
    load_dataset(DataConfig(root=folder_dataset))
    assert max(decodes.values()) == 3 and decode_cache.stats()["decoded"]["evictions"] == 0


def test_budget_setting(monkeypatch):
    monkeypatch.setenv(decode_cache.BUDGET_ENV, "1.5")
    assert decode_cache.default_budget() == 3 << 19
    monkeypatch.setenv(decode_cache.BUDGET_ENV, "0")
    assert decode_cache.default_budget() == 0
    monkeypatch.delenv(decode_cache.BUDGET_ENV)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    limit = decode_cache.memory_limit()
    whole = min(limit // 4, decode_cache.MAX_DEFAULT)
    assert 0 < decode_cache.default_budget() == whole
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # a torchrun rank: the node's share
    assert decode_cache.default_budget() == whole // 4


def test_a_forked_child_reads_what_it_inherited_and_keeps_nothing(decodes, folder_dataset):
    load_dataset(DataConfig(root=folder_dataset))
    kept = len(decode_cache.DECODED)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a hit, then a file the parent never decoded
        ok = load_sample(folder_dataset, read_folder_layout(folder_dataset).samples[0])
        (folder_dataset / "images" / "new.png").write_bytes(
            (folder_dataset / "images" / "s0.png").read_bytes()
        )
        io.read_file(folder_dataset / "masks" / "s0.png", io.read_image)  # the mask as RGB
        os.write(write, f"{len(decode_cache.DECODED)} {ok[0].shape[0]}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 100).decode() == f"{kept} 12"

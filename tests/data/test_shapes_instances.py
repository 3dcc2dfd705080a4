"""Instance annotations of the shapes generator: folder_instance and COCO output."""

import hashlib

import numpy as np
import pytest

from segops.config import DataConfig
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import load_dataset
from segops.data.shapes import (
    CLASSES,
    generate_shapes,
    instance_classes,
    render_instance_sample,
    render_sample,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# sha256 over (relative path, bytes) of generate_shapes(n=8, size=48, seed=3), computed before
# instance annotations existed: the default output must never change.
DEFAULT_DIGEST = "f69614843909a617d8ef7b3a9b73f59b59cc29dafae2a327ed0c25e603b01037"


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _digest(root):
    digest = hashlib.sha256()
    for rel, data in _files(root).items():
        digest.update(str(rel).encode())
        digest.update(data)
    return digest.hexdigest()


def test_default_output_is_unchanged(tmp_path):
    assert _digest(generate_shapes(tmp_path, n=8, size=48, seed=3)) == DEFAULT_DIGEST


@pytest.mark.parametrize("mode", ["folder", "coco"])
def test_instance_output_same_seed_same_bytes(tmp_path, mode):
    a = generate_shapes(tmp_path / "a", n=6, size=40, seed=5, instances=mode)
    b = generate_shapes(tmp_path / "b", n=6, size=40, seed=5, instances=mode)
    assert _files(a) == _files(b)
    plain = generate_shapes(tmp_path / "plain", n=6, size=40, seed=5)
    for i in range(6):  # images are the same bytes in every mode
        name = f"images/{i:05d}.png"
        assert (a / name).read_bytes() == (plain / name).read_bytes()


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="instances"):
        generate_shapes(tmp_path, n=1, size=40, instances="voc")


def test_instance_map_matches_semantic_mask():
    for i in range(20):
        image, mask, instances = render_instance_sample(0, i, 48)
        plain_image, plain_mask = render_sample(0, i, 48)
        assert np.array_equal(image, plain_image) and np.array_equal(mask, plain_mask)
        assert np.array_equal(instances > 0, mask > 0)  # background is 0 in both
        classes = instance_classes(mask, instances)
        assert list(classes) == list(range(1, len(classes) + 1))  # ids 1..N, none hidden
        for k, cls in classes.items():
            assert (mask[instances == k] == cls).all()  # one class per instance


def test_occluded_pixels_belong_to_the_shape_on_top():
    # Adjacent pixels of two instances of the same class: only instances can tell them apart.
    split = 0
    for i in range(40):
        _, mask, instances = render_instance_sample(0, i, 64)
        same = (mask[:, 1:] == mask[:, :-1]) & (mask[:, 1:] > 0)
        split += bool((same & (instances[:, 1:] != instances[:, :-1])).any())
    assert split >= 1


def test_coco_output_reads_back_as_the_same_semantic_masks(tmp_path):
    root = generate_shapes(tmp_path, n=10, size=40, seed=2, instances="coco")
    assert (root / "annotations" / "instances_train.json").is_file()
    cfg = DataConfig(root=root, format="coco", coco_image_dir="images")
    info = load_dataset(cfg)
    assert info.classes == CLASSES
    assert set(info.manifest["split"]) == {"train", "val"} and len(info.manifest) == 10
    folder = load_dataset(DataConfig(root=root), write_splits=False)
    by_id = dict(zip(folder.manifest["id"], folder.manifest["split"], strict=True))
    assert dict(zip(info.manifest["id"], info.manifest["split"], strict=True)) == by_id
    dataset = SegmentationDataset(root, info.manifest)
    for i, sid in enumerate(info.manifest["id"]):
        _, mask = render_sample(2, int(sid), 40)
        assert np.array_equal(dataset.load(i)[1], mask)


def test_cli_writes_instances(tmp_path):
    from typer.testing import CliRunner

    from segops.cli.main import app

    out = tmp_path / "shapes"
    args = ["data", "shapes", str(out), "--n", "4", "--size", "40", "--instances", "folder"]
    params = tmp_path / "params.yaml"
    params.write_text("shapes:\n  seed: 0\n")
    result = CliRunner().invoke(app, [*args, "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert (out / "instances.csv").read_text().startswith("id,instance,class\n00000,1,")
    bad = CliRunner().invoke(app, [*args[:-1], "voc", "--params", str(params)])
    assert bad.exit_code != 0 and "--instances" in bad.output

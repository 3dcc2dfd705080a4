"""The folder_instance layout, its instance targets, and the Mask R-CNN dataset over them."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from segops.config import DataConfig
from segops.data.dataset import SegmentationDataset
from segops.data.folder_instance import instance_targets, read_sample
from segops.data.formats import SampleRef, ref_from_row
from segops.data.instance_dataset import (
    InstanceDataset,
    collate_instances,
    instance_transforms,
)
from segops.data.manifest import load_dataset
from segops.data.shapes import generate_shapes, render_instance_sample, render_sample
from segops.errors import DatasetError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(
        tmp_path_factory.mktemp("shapes"), n=8, size=40, seed=4, instances="folder"
    )


def _tiny(root, table="id,instance,class\na,1,2\na,300,1\n", array=None):
    """One 6x8 sample: a 16-bit instance map with instances 1 and 300 and an ignore strip."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    (root / "instances.csv").write_text(table)
    Image.fromarray(np.full((6, 8, 3), 9, np.uint8)).save(root / "images" / "a.png")
    if array is None:
        array = np.zeros((6, 8), np.uint16)
        array[1:3, 2:5] = 1
        array[3:6, 0:2] = 300
        array[0, :] = 255
    Image.fromarray(array).save(root / "masks" / "a.png")
    return root


def test_config_accepts_folder_instance():
    assert DataConfig(format="folder_instance").format == "folder_instance"


def test_semantic_masks_equal_the_shapes_masks(shapes):
    info = load_dataset(DataConfig(root=shapes, format="folder_instance"))
    assert len(info.manifest) == 8 and set(info.manifest["reader"]) == {"folder_instance"}
    dataset = SegmentationDataset(shapes, info.manifest)
    for i, sid in enumerate(info.manifest["id"]):
        assert np.array_equal(dataset.load(i)[1], render_sample(4, int(sid), 40)[1])


def test_folder_format_refuses_instance_masks(shapes):
    with pytest.raises(DatasetError, match="folder_instance"):
        load_dataset(DataConfig(root=shapes), write_splits=False)


def test_targets_are_tight_and_match_the_instance_map(shapes):
    for i in range(8):
        _, mask, instances = render_instance_sample(4, i, 40)
        ref = SampleRef(f"{i:05d}", Path(), Path(f"masks/{i:05d}.png"), reader="folder_instance")
        found = instance_targets(shapes, ref)
        n = int(instances.max())
        assert found["masks"].shape == (n, 40, 40) and found["labels"].dtype == np.int64
        for k in range(n):
            binary = found["masks"][k].astype(bool)
            assert np.array_equal(binary, instances == k + 1)
            assert (mask[binary] == found["labels"][k]).all()
            x0, y0, x1, y1 = found["boxes"][k].astype(int)
            assert binary[y0:y1, x0:x1].sum() == binary.sum()  # box holds the mask...
            for edge in (binary[y0], binary[y1 - 1], binary[:, x0], binary[:, x1 - 1]):
                assert edge.any()  # ...and is tight


def test_16_bit_ids_and_ignore(tmp_path):
    root = _tiny(tmp_path)
    ref = SampleRef("a", Path("images/a.png"), Path("masks/a.png"), reader="folder_instance")
    _, mask = read_sample(root, ref)
    expected = np.zeros((6, 8), np.uint8)
    expected[1:3, 2:5] = 2
    expected[3:6, 0:2] = 1
    expected[0, :] = 255
    assert np.array_equal(mask.array, expected)
    found = instance_targets(root, ref)
    assert found["labels"].tolist() == [2, 1]
    assert found["boxes"].tolist() == [[2, 1, 5, 3], [0, 3, 2, 6]]


def test_unlisted_instance_and_bad_table_are_reported(tmp_path):
    root = _tiny(tmp_path / "a", table="id,instance,class\na,1,2\n")
    with pytest.raises(DatasetError, match=r"instance ids \[300\]"):
        load_dataset(DataConfig(root=root, format="folder_instance"), write_splits=False)
    root = _tiny(tmp_path / "b", table="id,instance\na,1\n")
    with pytest.raises(DatasetError, match="id, instance, class"):
        load_dataset(DataConfig(root=root, format="folder_instance"), write_splits=False)


def _check_item(image, target, size=40):
    assert image.dtype == torch.float32 and image.shape == (3, size, size)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    n = len(target["labels"])
    assert type(target["boxes"]) is torch.Tensor and target["boxes"].dtype == torch.float32
    assert target["boxes"].shape == (n, 4) and target["labels"].dtype == torch.int64
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, size, size)


def test_instance_dataset_items_and_collate(shapes, tmp_path):
    info = load_dataset(DataConfig(root=shapes, format="folder_instance"))
    dataset = InstanceDataset(info, shapes, "folder_instance")
    assert len(dataset) == 8
    image, target = dataset[0]
    _check_item(image, target)
    assert target["image_id"] == 0
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate_instances)
    images, targets = next(iter(loader))
    assert len(images) == len(targets) == 3 and [t["image_id"] for t in targets] == [0, 1, 2]
    coco = generate_shapes(tmp_path / "coco", n=4, size=40, seed=4, instances="coco")
    coco_info = load_dataset(DataConfig(root=coco, format="coco", coco_image_dir="images"))
    refs = [ref_from_row(r) for r in coco_info.manifest.to_dict("records")]
    coco_item = InstanceDataset(refs, coco, "coco")[0]
    _check_item(*coco_item)
    sid = coco_info.manifest["id"][0]
    folder_item = InstanceDataset(info.manifest[info.manifest["id"] == sid], shapes)[0]
    for key in ("boxes", "labels", "masks"):  # the same instances, whichever format
        assert torch.equal(coco_item[1][key], folder_item[1][key])
    with pytest.raises(ValueError, match="not read as"):
        InstanceDataset(info, shapes, "coco")


def test_horizontal_flip_moves_image_boxes_and_masks_together(shapes):
    info = load_dataset(DataConfig(root=shapes, format="folder_instance"))
    plain = InstanceDataset(info)[1]
    image, target = InstanceDataset(info, transforms=instance_transforms(hflip=1.0))[1]
    _check_item(image, target)
    assert torch.equal(image, plain[0].flip(-1))
    assert torch.equal(target["masks"], plain[1]["masks"].flip(-1))
    assert torch.equal(target["labels"], plain[1]["labels"])
    for box, binary in zip(target["boxes"], target["masks"], strict=True):
        cols = torch.nonzero(binary.any(0)).flatten()
        rows = torch.nonzero(binary.any(1)).flatten()
        tight = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        assert box.tolist() == [float(v) for v in tight]
    assert not isinstance(target["masks"], tv_tensors.Mask)


def test_ignore_class_in_the_table(tmp_path):
    root = _tiny(tmp_path, table="id,instance,class\na,1,2\na,300,255\n")
    ref = SampleRef("a", Path("images/a.png"), Path("masks/a.png"), reader="folder_instance")
    _, mask = read_sample(root, ref)
    assert (mask.array[3:6, 0:2] == 255).all()
    assert instance_targets(root, ref)["labels"].tolist() == [2]

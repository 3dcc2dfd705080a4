"""`data.scale`: one resize factor in training, evaluation, predict and serving; metrics still
counted on the masks at their original size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_sample

from segops.config import config_hash, load_config
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import load_dataset
from segops.data.transforms import rescale_image
from segops.errors import ConfigError
from segops.evaluate.report import inference_protocol, score_split
from segops.inference import TrainedModel, predict_image, predict_masks, sliding_probs
from segops.models import build_model
from segops.train.device import resolve_runtime
from segops.train.semantic import make_loaders

H, W, CROP = 40, 48, 32  # half-size images (20x24) are smaller than a crop


@pytest.fixture
def large(tmp_path) -> Path:
    """8 images of 48x40 (w x h), two classes, split files given (6 train, 2 val)."""
    root, rng = tmp_path / "large", np.random.default_rng(2)
    for i in range(8):
        mask = np.zeros((H, W), np.uint8)
        mask[8:24, 10:30] = 1
        write_sample(root, f"s{i}", rng.integers(0, 255, (H, W, 3), dtype=np.uint8), mask)
    (root / "classes.txt").write_text("bg\nfg\n")
    (root / "splits").mkdir()
    (root / "splits/train.txt").write_text("".join(f"s{i}\n" for i in range(6)))
    (root / "splits/val.txt").write_text("s6\ns7\n")
    return root


def _config(root: Path, *extra: str):
    options = "model.options={width: 4, levels: 2}"
    return load_config(None, [f"data.root={root}", f"data.crop_size={CROP}", options, *extra])


def test_scale_is_optional_needs_crops_and_keeps_the_hash(large):
    plain = _config(large)
    assert plain.data.scale is None and "scale" not in plain.to_dict()["data"]
    assert config_hash(plain) != config_hash(_config(large, "data.scale=0.5"))
    with pytest.raises(ConfigError, match=r"data.scale .* set data.crop_size"):
        load_config(None, [f"data.root={large}", "data.scale=0.5"])
    with pytest.raises(ConfigError, match=r"data.scale"):
        _config(large, "data.scale=2")  # upscaling: more pixels than serving budgets for


def test_training_sees_half_size_images_evaluation_counts_original_pixels(large):
    cfg = _config(large, "data.scale=0.5")
    info = load_dataset(cfg.data, eval_split="val")
    train, val, _ = make_loaders(cfg, info, resolve_runtime(cfg.train))
    image, _ = val.dataset[0]
    assert tuple(image.shape) == (3, H // 2, W // 2)  # validation: whole, at half size
    _, masks = next(iter(train))
    # each crop holds a whole half-size image and padding (ignore); at native size, no padding
    assert ((masks == 255).sum((1, 2)) == CROP * CROP - (H // 2) * (W // 2)).all()
    torch.manual_seed(0)
    model = build_model("unet", num_classes=2, **cfg.model.options).eval()
    trained = TrainedModel(model, cfg, ("bg", "fg"), Path("-"), torch.device("cpu"))
    ds = SegmentationDataset(info.root, info.split("val"))
    _, per_image = score_split(trained, ds, 1)
    assert per_image.shape == (2, 2, 2) and (per_image.sum((1, 2)) == H * W).all()
    assert inference_protocol(trained)["scale"] == 0.5
    picture, _ = ds.load(0)
    mask, probs = predict_image(trained, picture)
    assert mask.shape == (H, W) and probs.shape == (2, H, W)
    small = sliding_probs(trained, rescale_image(picture, 0.5))  # the model's own view
    assert tuple(small.shape) == (2, H // 2, W // 2)
    back = torch.nn.functional.interpolate(small[None], (H, W), mode="bilinear")[0]
    np.testing.assert_allclose(probs, back.numpy(), atol=1e-5)
    # predict and the served model (predict_masks) give predict_image's masks
    pictures = [picture, picture[:30, :36]]
    for got, one in zip(predict_masks(trained, pictures, batch_size=4), pictures, strict=True):
        np.testing.assert_array_equal(got, predict_image(trained, one)[0])
        assert got.shape == one.shape[:2]

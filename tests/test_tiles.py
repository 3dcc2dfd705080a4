"""Inference tiles as large as `predict.max_tile` allows (issue 17): the whole image when it
fits, equal to one forward of the padded image; aligned tiles above it; batched masks equal to
per-image ones over mixed tile shapes; the choice recorded in the protocol and the contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segops.config import config_hash, load_config
from segops.inference import (
    TILE_ALIGN,
    load_model_files,
    predict_image,
    predict_masks,
    sliding_probs,
    tile_shape,
    with_tiles,
)
from segops.inference.inputs import normalised

RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """An untrained tiny U-Net described as trained on 32-pixel crops (native resolution)."""
    from segops.models import build_model

    folder = tmp_path_factory.mktemp("tiles")
    cfg = load_config(None, ["model.options={width: 4, depth: 2}", "data.crop_size=32"])
    torch.manual_seed(0)
    model = build_model("unet", num_classes=3, width=4, depth=2)
    torch.save(model.state_dict(), folder / "weights.pt")
    meta = {"config": cfg.to_dict(), "classes": ["a", "b", "c"]}
    (folder / "model.json").write_text(json.dumps(meta))
    return load_model_files(folder / "weights.pt", folder / "model.json", "cpu")


def _image(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _shapes_seen(trained, run) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    hook = trained.model.register_forward_hook(lambda _m, a, _o: calls.append(tuple(a[0].shape)))
    try:
        run()
    finally:
        hook.remove()
    return calls


@pytest.mark.parametrize(
    ("max_tile", "size", "expected"),
    [
        (1024, (56, 72), (64, 96)),  # fits: the whole image, each side padded to 32
        (1024, (512, 512), (512, 512)),  # 1 forward instead of 225 windows of 64 (issue 17)
        (1024, (2000, 300), (1024, 320)),  # only the long side is cut
        (1024, (20, 24), (32, 32)),  # never below one input size
        (100, (200, 50), (96, 64)),  # the cap rounded down to the alignment
        (0, (512, 512), (32, 32)),  # 0: windows of the input size, as before
    ],
)
def test_tile_shape(crops, max_tile, size, expected):
    assert tile_shape(with_tiles(crops, max_tile), *size) == expected


def test_predict_max_tile_and_overlap_stay_outside_the_config_hash():
    base = config_hash(load_config(None))
    tiles = load_config(None, ["predict.max_tile=0", "predict.overlap=0.25"])
    assert config_hash(tiles) == base and tiles.predict.max_tile == 0


def test_an_image_that_fits_is_one_forward_of_the_padded_image(crops):
    image = _image(56, 72)
    probs, seen = None, []

    def run():
        nonlocal probs
        probs = sliding_probs(crops, image)

    seen = _shapes_seen(crops, run)
    assert seen == [(1, 3, 64, 96)]
    padded = F.pad(normalised(crops, image), (0, 96 - 72, 0, 64 - 56))
    with torch.inference_mode():
        whole = crops.model(padded[None]).softmax(1)[0, :, :56, :72]
    assert torch.allclose(probs, whole, atol=1e-6)
    mask, _ = predict_image(crops, image)
    assert np.array_equal(mask, whole.argmax(0).byte().numpy())


def test_a_larger_image_is_cut_into_aligned_overlapping_tiles(crops):
    small = with_tiles(crops, 64)
    image = _image(100, 150)
    probs = []
    seen = _shapes_seen(small, lambda: probs.append(sliding_probs(small, image)))
    assert {shape[-2:] for shape in seen} == {(64, 64)}
    # padded to 128 x 160; stride 32: 3 rows x 4 columns of tiles, 64 * 64 * 12 pixels
    assert sum(shape[0] for shape in seen) == 12
    assert max(shape[0] for shape in seen) == 1  # the budget: max_tile^2 pixels per forward
    assert probs[0].shape == (3, 100, 150)
    assert torch.allclose(probs[0].sum(0), torch.ones(100, 150), atol=1e-5)
    assert TILE_ALIGN == 32


def test_max_tile_0_slides_windows_of_the_input_size(crops):
    legacy = with_tiles(crops, 0)
    seen = _shapes_seen(legacy, lambda: predict_image(legacy, _image(56, 72)))
    assert {shape[-2:] for shape in seen} == {(32, 32)}


@pytest.mark.parametrize("max_tile", [1024, 64, 0])
def test_batched_masks_equal_per_image_masks_over_mixed_tile_shapes(crops, max_tile):
    trained = with_tiles(crops, max_tile)
    images = [_image(h, w) for h, w in [(56, 72), (20, 24), (100, 150), (56, 72), (33, 90)]]
    alone = [predict_image(trained, image)[0] for image in images]
    for batch_size in (1, 3, 8):
        batched = predict_masks(trained, images, batch_size)
        assert all(np.array_equal(a, b) for a, b in zip(alone, batched, strict=True))


def test_the_protocol_and_the_contract_record_the_tiling(crops):
    from segops.evaluate.outputs import inference_protocol
    from segops.serving.contract import input_spec

    protocol = inference_protocol(crops)
    assert protocol["max_tile"] == 1024 and protocol["overlap"] == 0.5
    assert "whole image" in protocol["tiling"] and "1024" in protocol["tiling"]
    assert "input size (32 px)" in inference_protocol(with_tiles(crops, 0))["tiling"]
    spec = input_spec(crops.config.to_dict())
    assert spec["max_tile"] == 1024 and "whole image" in spec["tiling"]
    assert input_spec({})["max_tile"] == 1024  # a contract of a model from before the field

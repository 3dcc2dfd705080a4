"""Batched inference: masks identical to the per-image path over mixed sizes, fewer forwards."""

import numpy as np
import pytest
from conftest import tiny_config

from segops.inference import load_trained, predict_image, predict_masks, with_tiles
from segops.train.loop import train

RNG = np.random.default_rng(7)
# 32 = the input size (resized); 20x24 and 45x40 resized too (under 1.5x); 64x50, 90x70 slide.
SIZES = [(32, 32), (20, 24), (32, 32), (45, 40), (64, 50), (32, 32), (90, 70), (20, 24), (8, 8)]


def _images(sizes):
    return [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.fixture(scope="module")
def models(shapes_root, tmp_path_factory):
    """Tiny U-Nets trained on 32x32 shapes: on whole images, and on 24-pixel crops."""
    out = {}
    for name, extra in [("whole", []), ("crops", ["data.crop_size=24"])]:
        cfg = tiny_config(shapes_root, tmp_path_factory.mktemp(name), "train.epochs=1", *extra)
        train(cfg)
        out[name] = load_trained(f"{cfg.train.out_dir}/checkpoints/best.pt")
    return out


def _forwards(trained) -> list[int]:
    calls: list[int] = []
    trained.model.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["whole", "crops"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_masks_equal_per_image_masks_over_mixed_sizes(models, kind, batch_size):
    trained = models[kind]
    images = _images(SIZES)
    alone = [predict_image(trained, image)[0] for image in images]
    batched = predict_masks(trained, images, batch_size)
    assert len(batched) == len(images)
    for image, a, b in zip(images, alone, batched, strict=True):
        assert b.shape == image.shape[:2] and b.dtype == np.uint8
        assert np.array_equal(a, b)


def test_same_size_images_take_ceil_n_over_batch_forwards(models):
    trained = models["whole"]
    calls = _forwards(trained)
    predict_masks(trained, _images([(32, 32)] * 10 + [(20, 24)] * 7), batch_size=8)
    assert calls == [8, 8, 1]  # 17 resized images: ceil(17 / 8) forwards
    calls.clear()
    predict_masks(trained, _images([(64, 64), (32, 32)]), batch_size=8)
    assert calls == [1, 1]  # the large one whole at native size, then the small one resized
    calls.clear()
    predict_masks(with_tiles(trained, 0), _images([(64, 64), (32, 32)]), batch_size=8)
    assert calls == [8, 2]  # predict.max_tile 0: 3x3 windows of the input size, then the small


def test_a_bad_batch_size_is_refused(models):
    with pytest.raises(ValueError, match="batch_size"):
        predict_masks(models["whole"], _images([(8, 8)]), 0)

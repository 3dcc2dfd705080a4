import numpy as np
import torch

from segops.config import AugmentConfig
from segops.data.transforms import eval_transform, to_tv, train_transform


def _pair(h=40, w=60):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[10:30, 10:50] = 3
    mask[0:5] = 255
    return image, mask


def test_train_transform_keeps_labels_nearest_and_pads_with_ignore():
    aug = AugmentConfig(rotation=45.0, scale=(0.3, 1.0))
    transform = train_transform(aug, 32)
    image, mask = _pair()
    torch.manual_seed(0)
    for _ in range(20):
        out_image, out_mask = transform(*to_tv(image, mask))
        assert out_image.shape == (3, 32, 32) and out_image.dtype == torch.float32
        assert out_mask.shape == (32, 32) and out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= {0, 3, 255}  # nearest: no blended labels
    # A 45-degree rotation of a full frame must leave corners with the ignore fill.
    torch.manual_seed(3)
    seen_fill = any(
        (transform(*to_tv(image, np.zeros_like(mask)))[1] == 255).any() for _ in range(10)
    )
    assert seen_fill


def test_eval_transform_is_deterministic_and_normalises():
    aug = AugmentConfig()
    image, mask = _pair()
    a = eval_transform(aug, 32)(*to_tv(image, mask))
    b = eval_transform(aug, 32)(*to_tv(image, mask))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    white = np.full((8, 8, 3), 255, np.uint8)
    out = eval_transform(aug, 8)(to_tv(white)[0])
    expected = (1 - torch.tensor(aug.mean)) / torch.tensor(aug.std)
    torch.testing.assert_close(out[:, 0, 0], expected)

import math

import pytest
import torch

from segops.train.losses import DiceLoss, balanced_weights, build_loss
from segops.train.schedule import lr_factor


def _perfect_logits(target, c):
    return torch.nn.functional.one_hot(target.clamp(max=c - 1), c).permute(0, 3, 1, 2) * 50.0


def test_dice_loss_is_zero_for_perfect_and_ignores_255():
    target = torch.randint(0, 3, (2, 8, 8))
    logits = _perfect_logits(target, 3).float()
    assert DiceLoss()(logits, target).item() == pytest.approx(0.0, abs=1e-5)
    noisy = target.clone()
    noisy[:, :2] = 255  # ignored rows: whatever the logits say there does not count
    logits[:, :, :2] = torch.randn(2, 3, 2, 8) * 50
    assert DiceLoss()(logits, noisy).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", ["ce", "dice", "ce_dice"])
def test_losses_are_lower_for_better_predictions(name):
    target = torch.randint(0, 4, (2, 8, 8))
    good = _perfect_logits(target, 4).float() / 10
    bad = torch.roll(good, 1, dims=1)
    loss = build_loss(name, [1.0, 2.0, 1.0, 1.0])
    assert loss(good, target) < loss(bad, target)


def test_balanced_weights_inverse_frequency():
    w = balanced_weights([300, 100, 0, 200])
    assert w[2] == 1.0  # unseen class: neutral
    assert w[1] > w[3] > w[0]
    assert sum(w[i] for i in (0, 1, 3)) / 3 == pytest.approx(1.0)


def test_schedule_warmup_then_cosine_and_poly():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    mid = lr_factor(55, 100, 10, "cosine")
    assert mid == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.01)
    assert lr_factor(100, 100, 10, "poly") == pytest.approx(0.01)
    assert lr_factor(50, 100, 0, "constant") == 1.0

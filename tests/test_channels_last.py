"""`train.channels_last: auto` on CPU: on for the models that train faster channels-last from
128-pixel inputs (U-Net, SegNet: bench/channels_last.py), off otherwise; the loop trains in
the chosen format and the run records it (segops.env.channels_last)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from segops.config import TrainConfig
from segops.train.device import channels_last_helps, resolve_runtime


@pytest.mark.parametrize(
    ("model", "side", "expected"),
    [
        ("unet", 128, True),
        ("unet", 256, True),
        ("unet", 64, False),  # 6 % at 64 px: not worth a second layout
        ("segnet", 128, True),
        ("fcn_resnet50", 160, False),  # measured slower channels-last on CPU
        ("deeplabv3_resnet50", 128, False),
        ("lraspp_mobilenet_v3_large", 256, False),  # no faster: stays contiguous
        ("maskrcnn_resnet50_fpn", 512, False),  # instance models: torchvision's detection API
    ],
)
def test_auto_on_cpu_follows_the_model_family_and_side(model: str, side: int, expected: bool):
    assert channels_last_helps(model, side) is expected
    runtime = resolve_runtime(TrainConfig(device="cpu", threads=1), model, side)
    assert runtime.channels_last is expected
    assert runtime.describe()["channels_last"] == str(expected)


def test_an_explicit_setting_wins_and_auto_without_a_model_stays_off():
    cpu = {"device": "cpu", "threads": 1}
    assert (
        resolve_runtime(TrainConfig(**cpu, channels_last=False), "unet", 256).channels_last is False
    )
    assert resolve_runtime(TrainConfig(**cpu, channels_last=True), "unet", 32).channels_last is True
    assert resolve_runtime(TrainConfig(**cpu)).channels_last is False


class _Heard:
    def __init__(self) -> None:
        self.info: dict = {}

    def on_train_start(self, info: dict) -> None:
        self.info = info

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


@pytest.mark.slow
def test_the_loop_trains_channels_last_at_128_pixels(shapes_root, tmp_path):
    from segops.data.manifest import load_dataset
    from segops.train.loop import train
    from segops.train.parts import build_parts

    cfg = tiny_config(shapes_root, tmp_path / "run", "data.image_size=128", "train.epochs=1")
    runtime = resolve_runtime(cfg.train, cfg.model.name, cfg.data.image_size)
    parts = build_parts(cfg, load_dataset(cfg.data, eval_split="val"), runtime, steps=1)
    conv = next(p for p in parts.model.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    heard = _Heard()
    result = train(cfg, callbacks=[heard])
    assert heard.info["channels_last"] == "True" and Path(result.best_checkpoint).is_file()

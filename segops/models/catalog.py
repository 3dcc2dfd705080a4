"""The registered model names and their kinds, as a static table: a config is checked
against it without importing torch or torchvision (importing them took 4.6 s of each
`segops run`). `tests/test_perf_paths.py` keeps it equal to the registry (segops.models)."""

from __future__ import annotations

MODEL_KINDS: dict[str, str] = {
    "unet": "semantic",
    "segnet": "semantic",
    "fcn_resnet50": "semantic",
    "deeplabv3_resnet50": "semantic",
    "deeplabv3_mobilenet_v3_large": "semantic",
    "lraspp_mobilenet_v3_large": "semantic",
    "maskrcnn_resnet50_fpn": "instance",
    "maskrcnn_resnet50_fpn_v2": "instance",
}

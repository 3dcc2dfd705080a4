"""torchvision's Mask R-CNN (ResNet-50 FPN, v1 and v2) as `instance` models, for any classes.

`num_classes` counts the background: K foreground classes need `num_classes=K + 1`. The model
follows torchvision's detection API: `model(images)` in eval mode returns one dict per image
(`boxes`, `labels`, `scores`, `masks` [N,1,H,W] probabilities); `model(images, targets)` in
train mode returns a dict of losses. Images are resized so their short side is `min_size`
(default 256, small enough for a CPU) and the long side at most `max_size` (default 2*min_size).

`pretrained="torchvision"` loads torchvision's COCO weights (downloaded once into TORCH_HOME)
and replaces the box and mask predictors for `num_classes`; a file path loads the tensors of a
local state dict that fit. Without `pretrained`, nothing is downloaded.
"""

from __future__ import annotations

import inspect

from torch import nn
from torchvision.models.detection import mask_rcnn
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from segops.errors import ConfigError
from segops.models.pretrained import load_local_weights
from segops.models.registry import register_model

_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")  # trainable from the top down


def _known_options() -> set[str]:
    """Keyword options MaskRCNN understands (its **kwargs swallow typos silently otherwise)."""
    names = {"trainable_backbone_layers", "size_divisible", "fixed_size"}
    for cls in (mask_rcnn.MaskRCNN, FasterRCNN):
        names |= set(inspect.signature(cls.__init__).parameters)
    return names - {"self", "backbone", "num_classes", "kwargs"}


def replace_predictors(net: mask_rcnn.MaskRCNN, num_classes: int) -> None:
    """Swap the box and mask predictors of `net` for fresh ones with `num_classes` outputs."""
    heads = net.roi_heads
    box_in = heads.box_predictor.cls_score.in_features
    heads.box_predictor = FastRCNNPredictor(box_in, num_classes)
    mask_in = heads.mask_predictor.conv5_mask.in_channels
    heads.mask_predictor = MaskRCNNPredictor(
        mask_in, heads.mask_predictor.conv5_mask.out_channels, num_classes
    )


def freeze_backbone(net: mask_rcnn.MaskRCNN, trainable_layers: int) -> None:
    """Stop gradients in all but the top `trainable_layers` (0..5) ResNet stages of `net`."""
    if not 0 <= trainable_layers <= len(_LAYERS):
        raise ConfigError(f"trainable_backbone_layers must be in 0..5, not {trainable_layers}")
    keep = _LAYERS[:trainable_layers]
    for name, param in net.backbone.body.named_parameters():
        if not name.startswith(keep):
            param.requires_grad_(False)


def _build(fn, weights_enum, name: str, num_classes: int, pretrained: str | None, options: dict):
    if num_classes < 2:
        raise ConfigError(f"num_classes counts the background and must be >= 2, not {num_classes}")
    unknown = sorted(set(options) - _known_options())
    if unknown:
        raise TypeError(f"unexpected options {unknown}")
    trainable = options.pop("trainable_backbone_layers", None)
    min_size = options.pop("min_size", 256)
    options.setdefault("max_size", 2 * min_size)
    if pretrained == "torchvision":
        net = fn(weights=weights_enum.DEFAULT, min_size=min_size, **options)
        replace_predictors(net, num_classes)
    else:
        net = fn(
            weights=None,
            weights_backbone=None,
            num_classes=num_classes,
            min_size=min_size,
            **options,
        )
        if pretrained:
            load_local_weights(net, pretrained, name)
    if trainable is not None:
        freeze_backbone(net, trainable)
    return net


def _make_builder(name: str, fn, weights_enum):
    def builder(*, num_classes: int, pretrained: str | None = None, **options) -> nn.Module:
        return _build(fn, weights_enum, name, num_classes, pretrained, dict(options))

    builder.__name__ = name
    return builder


_MODELS = {
    "maskrcnn_resnet50_fpn": (
        mask_rcnn.maskrcnn_resnet50_fpn,
        mask_rcnn.MaskRCNN_ResNet50_FPN_Weights,
        "Mask R-CNN, ResNet-50 FPN backbone",
    ),
    "maskrcnn_resnet50_fpn_v2": (
        mask_rcnn.maskrcnn_resnet50_fpn_v2,
        mask_rcnn.MaskRCNN_ResNet50_FPN_V2_Weights,
        "Mask R-CNN v2 (BatchNorm heads), ResNet-50 FPN backbone",
    ),
}

for _name, (_fn, _weights, _summary) in _MODELS.items():
    register_model(_name, _summary, pretrained="torchvision (COCO) or local file", kind="instance")(
        _make_builder(_name, _fn, _weights)
    )

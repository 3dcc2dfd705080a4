"""torchvision's semantic segmentation models, for any number of classes.

`pretrained="torchvision"` loads torchvision's COCO-with-VOC-labels weights (downloaded once
into TORCH_HOME) and replaces the final classifier layer for `num_classes`; a file path loads a
local state dict instead. Without `pretrained`, nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import segmentation as seg

from segops.models.pretrained import load_local_weights
from segops.models.registry import register_model


class TorchvisionSegmenter(nn.Module):
    """Wraps a torchvision model so that `forward` returns the `out` logits tensor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]  # [N, num_classes, H, W]


def _replace_heads(net: nn.Module, num_classes: int) -> None:
    """Swap the last 1x1 conv(s) of a 21-class pretrained net for `num_classes` outputs."""
    net.aux_classifier = None
    if isinstance(net, seg.LRASPP):
        head = net.classifier
        head.low_classifier = nn.Conv2d(head.low_classifier.in_channels, num_classes, 1)
        head.high_classifier = nn.Conv2d(head.high_classifier.in_channels, num_classes, 1)
    else:
        net.classifier[-1] = nn.Conv2d(net.classifier[-1].in_channels, num_classes, 1)


def _build(fn, weights_enum, name: str, num_classes: int, pretrained: str | None):
    if pretrained == "torchvision":
        net = fn(weights=weights_enum.DEFAULT)
        _replace_heads(net, num_classes)
        return TorchvisionSegmenter(net)
    model = TorchvisionSegmenter(fn(weights=None, weights_backbone=None, num_classes=num_classes))
    if pretrained:
        load_local_weights(model, pretrained, name)
    return model


_TV = {
    "fcn_resnet50": (seg.fcn_resnet50, seg.FCN_ResNet50_Weights, "FCN with a ResNet-50 backbone"),
    "deeplabv3_resnet50": (
        seg.deeplabv3_resnet50,
        seg.DeepLabV3_ResNet50_Weights,
        "DeepLabV3 (atrous spatial pyramid pooling) with a ResNet-50 backbone",
    ),
    "deeplabv3_mobilenet_v3_large": (
        seg.deeplabv3_mobilenet_v3_large,
        seg.DeepLabV3_MobileNet_V3_Large_Weights,
        "DeepLabV3 with a MobileNetV3-Large backbone",
    ),
    "lraspp_mobilenet_v3_large": (
        seg.lraspp_mobilenet_v3_large,
        seg.LRASPP_MobileNet_V3_Large_Weights,
        "Lite R-ASPP with a MobileNetV3-Large backbone (fast)",
    ),
}


def _make_builder(name: str, fn, weights_enum):
    def builder(*, num_classes: int, pretrained: str | None = None) -> nn.Module:
        return _build(fn, weights_enum, name, num_classes, pretrained)

    builder.__name__ = name
    return builder


for _name, (_fn, _weights, _summary) in _TV.items():
    register_model(_name, _summary, pretrained="torchvision (COCO/VOC) or local file")(
        _make_builder(_name, _fn, _weights)
    )

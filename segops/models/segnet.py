"""SegNet (Badrinarayanan et al. 2017): an encoder-decoder that unpools with pooling indices.

Each of `depth` encoder levels is two conv-BN-ReLU layers followed by a 2x2 max pool that
remembers where each maximum came from (`return_indices=True`); the matching decoder level puts
every value back at that position with `MaxUnpool2d` (zeros elsewhere) and densifies the sparse
map with two conv-BN-ReLU layers. No skip connections carry features, only the indices. The
first level has `width` channels, doubling at each level below.

`depth` counts these levels (the paper's VGG16 encoder has 5), which is what `levels` means for
every model here (U-Net's `depth`, unlike this one, counts downsamplings): `levels` is accepted
as the same option, so `levels: 4` and `depth: 4` build the same SegNet.

Any input size works: pooling uses `ceil_mode=True` (an odd side keeps its last row or column
in a window of its own) and each unpooling is told the exact size it undoes, so no padding or
cropping is needed and the logits have the input's size.
"""

from __future__ import annotations

import torch
from torch import nn

from segops.errors import ConfigError
from segops.models.pretrained import load_local_weights
from segops.models.registry import register_model
from segops.models.unet import conv_block


class IndexUnpool(nn.MaxUnpool2d):
    """`nn.MaxUnpool2d` that also runs under `torch.use_deterministic_algorithms(True)`.

    PyTorch refuses max-unpooling in deterministic mode because repeated indices would make
    the result depend on write order; indices from non-overlapping max pooling never repeat,
    so there the same result is computed with a scatter instead (`output_size` required).
    """

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size=None) -> torch.Tensor:
        if not torch.are_deterministic_algorithms_enabled():
            return super().forward(x, indices, output_size)
        n, c = x.shape[:2]
        height, width = output_size
        out = x.new_zeros(n, c, height * width)
        return out.scatter(2, indices.flatten(2), x.flatten(2)).view(n, c, height, width)


class SegNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ConfigError(f"model 'segnet': width and depth must be >= 1, got {width}, {depth}")
        chans = [width * 2**i for i in range(depth)]  # e.g. 16, 32, 64, 128
        self.encoder = nn.ModuleList(
            conv_block(3 if i == 0 else chans[i - 1], chans[i]) for i in range(depth)
        )
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True, return_indices=True)
        self.unpool = IndexUnpool(2, stride=2)
        # decoder[k] undoes encoder level depth-1-k; the last one feeds the classifier.
        self.decoder = nn.ModuleList(
            conv_block(chans[i], chans[max(i - 1, 0)]) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[N, 3, H, W]` images -> `[N, num_classes, H, W]` logits."""
        trail = []  # (indices, size before pooling) per level, top first
        for block in self.encoder:
            x = block(x)
            size = x.shape[-2:]
            x, indices = self.pool(x)
            trail.append((indices, size))
        for block in self.decoder:
            indices, size = trail.pop()
            x = block(self.unpool(x, indices, output_size=size))
        return self.head(x)  # [N, num_classes, H, W]


@register_model(
    "segnet",
    "SegNet, encoder-decoder unpooling with max-pool indices (options: width, levels = depth)",
)
def segnet(
    *,
    num_classes: int,
    pretrained: str | None = None,
    width: int = 16,
    depth: int | None = None,
    levels: int | None = None,
):
    """A `SegNet` of `levels` (or `depth`: the same count) encoder levels, default 4;
    `pretrained` is a local state-dict file (there are no torchvision weights)."""
    if levels is not None and depth is not None and levels != depth:
        raise ConfigError(
            f"model 'segnet': levels and depth are the same option; got {levels} and {depth}"
        )
    count = levels if levels is not None else depth if depth is not None else 4
    model = SegNet(num_classes, width=width, depth=count)
    if pretrained:
        load_local_weights(model, pretrained, "segnet")
    return model

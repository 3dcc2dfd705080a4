"""U-Net (Ronneberger et al. 2015): an encoder-decoder with skip connections.

`levels` counts resolution levels, the full-resolution one included, so a U-Net with `levels`
levels downsamples `levels - 1` times; the paper's network has 5 levels (4 max pools, 64 to 1024
channels), like segops' default (16 to 256 channels). `width` is the channel count of the first
level, doubling at each level below. `depth`, the older option, counts downsamplings
(`depth = levels - 1`) and is still accepted, so recorded configs build the same network.
Input sides need not be multiples of 2**(levels - 1): the decoder resizes to each skip's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segops.errors import ConfigError
from segops.models.pretrained import load_local_weights
from segops.models.registry import register_model

DEFAULT_LEVELS = 5  # = the former default depth 4: the default network is unchanged


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU layers (the unit of U-Net and SegNet)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 16, levels: int = DEFAULT_LEVELS) -> None:
        super().__init__()
        downs = levels - 1
        chans = [width * 2**i for i in range(levels)]  # e.g. 16, 32, 64, 128, 256
        self.stem = conv_block(3, chans[0])
        self.down = nn.ModuleList(conv_block(chans[i], chans[i + 1]) for i in range(downs))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(downs))
        )
        self.fuse = nn.ModuleList(
            conv_block(2 * chans[i], chans[i]) for i in reversed(range(downs))
        )
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]  # [N, w, H, W]
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))  # halves H, W; doubles channels
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse, strict=True):
            skip = skips.pop()
            x = up(x)
            if x.shape[-2:] != skip.shape[-2:]:  # odd sides: match the skip exactly
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([skip, x], 1))
        return self.head(x)  # [N, num_classes, H, W]


def unet_levels(levels: int | None, depth: int | None) -> int:
    """Levels from `levels`, or from the older `depth` (downsamplings: levels - 1), or the
    default; ConfigError when both are given or the network would have no level."""
    if levels is not None and depth is not None:
        raise ConfigError(
            f"model 'unet': give levels or depth, not both (got levels {levels}, depth {depth}); "
            "depth counts downsamplings, so depth d is levels d + 1"
        )
    found = depth + 1 if depth is not None else DEFAULT_LEVELS if levels is None else levels
    if found < 1:
        raise ConfigError(f"model 'unet': levels must be >= 1 (depth >= 0), got {found} levels")
    return found


@register_model(
    "unet",
    "U-Net, encoder-decoder with skip connections (options: width, levels; depth = levels - 1)",
)
def unet(
    *,
    num_classes: int,
    pretrained: str | None = None,
    width: int = 16,
    levels: int | None = None,
    depth: int | None = None,
):
    """A `UNet` of `levels` resolution levels (default 5); `depth` (downsamplings) is the
    older spelling of the same thing: `depth: 4` builds exactly `levels: 5`."""
    model = UNet(num_classes, width=width, levels=unet_levels(levels, depth))
    if pretrained:
        load_local_weights(model, pretrained, "unet")
    return model

"""U-Net (Ronneberger et al. 2015): an encoder-decoder with skip connections.

`width` is the channel count of the first level, doubling at each of `depth` downsamplings.
Input sides need not be multiples of 2**depth: the decoder resizes to each skip's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segops.models.pretrained import load_local_weights
from segops.models.registry import register_model


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
    def __init__(self, num_classes: int, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(depth + 1)]  # e.g. 16, 32, 64, 128, 256
        self.stem = conv_block(3, chans[0])
        self.down = nn.ModuleList(conv_block(chans[i], chans[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.fuse = nn.ModuleList(
            conv_block(2 * chans[i], chans[i]) for i in reversed(range(depth))
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


@register_model("unet", "U-Net, encoder-decoder with skip connections (options: width, depth)")
def unet(*, num_classes: int, pretrained: str | None = None, width: int = 16, depth: int = 4):
    model = UNet(num_classes, width=width, depth=depth)
    if pretrained:
        load_local_weights(model, pretrained, "unet")
    return model

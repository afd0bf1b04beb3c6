"""U-Net (Ronneberger et al., MICCAI 2015), in the configuration the UNet++ paper compares against.

Zhou et al., "UNet++: Redesigning Skip Connections to Exploit Multiscale Features in Image
Segmentation", IEEE TMI 2020, Table II: U-Net with filters 32, 64, 128, 256, 512 (7.76M parameters
for 1 input channel and 1 class) and "wide U-Net" with 35, 70, 140, 280, 560 (9.13M), both with two
3×3 conv-norm-act layers per block and 2×2 transposed convolutions for upsampling.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from UNetSegmentationLib.networks.blocks import DoubleConv, LayerSpec, SegmentationHead, UpConv
from UNetSegmentationLib.networks.presets import paper_features


class UNet(nn.Module):
    """Encoder–decoder with same-scale skip connections.

    Args:
        in_channels: input channels (2c+1 for a 2.5D input with context c).
        out_channels: logit channels (1 for a sigmoid class, classes+1 for softmax).
        features: channels per level, finest first; ``len(features) - 1`` poolings.
        norm, act: MONAI layer specs for every conv block.
        dropout: dropout probability inside the conv blocks.

    Shapes: ``(B, in_channels, H, W) → (B, out_channels, H, W)`` with H and W divisible by
    :meth:`required_multiple`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = paper_features("unet"),
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError("features needs at least two levels")
        self.features = features
        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            DoubleConv(in_channels if level == 0 else features[level - 1], f, norm, act, dropout)
            for level, f in enumerate(features)
        )
        self.upsample = nn.ModuleList(UpConv(features[level + 1], features[level]) for level in range(len(features) - 1))
        self.decoder = nn.ModuleList(
            DoubleConv(2 * features[level], features[level], norm, act, dropout) for level in range(len(features) - 1)
        )
        self.head = SegmentationHead(features[0], out_channels)

    def required_multiple(self, depth: int | None = None) -> int:
        """In-plane sizes must be divisible by this (one halving per pooling)."""
        return 2 ** (len(self.features) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(len(self.decoder))):
            x = self.decoder[level](torch.cat([skips[level], self.upsample[level](x)], dim=1))
        return self.head(x)

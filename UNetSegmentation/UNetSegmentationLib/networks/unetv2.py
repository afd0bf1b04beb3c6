"""U-Net v2 with semantics-and-detail-infusion (SDI) skip connections.

Peng et al., "U-Net v2: Rethinking the Skip Connections of U-Net for Medical Image Segmentation",
arXiv:2311.17791, 2023. For encoder maps f_i^0 (levels i = 0..N-1):

    f_i^1 = φ_i^s(φ_i^c(f_i^0))                     channel, then spatial attention (CBAM)
    f_i^2 = 1×1 conv(f_i^1) to c channels            (c = 32 in the paper)
    f_ij^3 = θ_ij(R_i(f_j^2))                         R_i: adaptive average pooling from finer levels,
                                                      identity at level i, bilinear from coarser ones;
                                                      θ_ij: a 3×3 smoothing convolution per pair
    f_i^4 = f_i0^3 ⊙ f_i1^3 ⊙ … ⊙ f_i(N-1)^3          Hadamard product: semantics and detail in every level

The decoder starts from f_(N-1)^4 and, level by level, upsamples (2× transposed convolution) and adds
f_i^4; a 1×1 deep-supervision head sits on every decoder level. The paper's encoder is a pretrained
PVT or the nnU-Net encoder; here it is the plain U-Net encoder (two 3×3 conv-norm-act per level, max
pooling), since no pretrained weights are used, so the decoder ends at full resolution.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from UNetSegmentationLib.networks.blocks import (
    ChannelAttention,
    ConvEncoder,
    ConvNormAct,
    LayerSpec,
    LearnedUpsample,
    SpatialAttention,
    UpsampledHead,
)
from UNetSegmentationLib.networks.presets import paper_features


class AttentionProjection(nn.Module):
    """SDI's first step at one level: channel attention, spatial attention, 1×1 conv-norm to ``out_channels``.

    ``(B, C_in, H, W) → (B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: LayerSpec = "batch") -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(in_channels)
        self.spatial_attention = SpatialAttention()
        self.project = ConvNormAct(in_channels, out_channels, kernel_size=1, norm=norm, act=None, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.spatial_attention(self.channel_attention(x)))


class SemanticDetailInfusion(nn.Module):
    """SDI for one target level: resize every level's map to it, smooth each by its own 3×3 conv,
    multiply them element-wise.

    Args:
        channels: channels c of every input and of the output.
        sources: number of levels N fused.

    Shapes: N maps ``(B, c, h_j, w_j)`` and the target size ``(h, w)`` → ``(B, c, h, w)``.
    """

    def __init__(self, channels: int, sources: int) -> None:
        super().__init__()
        self.smooth = nn.ModuleList(Convolution(2, channels, channels, kernel_size=3, conv_only=True) for _ in range(sources))

    @staticmethod
    def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Adaptive average pooling down to ``size``, identity at ``size``, bilinear up to it."""
        h, w = x.shape[-2:]
        if (h, w) == tuple(size):
            return x
        if h >= size[0] and w >= size[1]:
            return nn.functional.adaptive_avg_pool2d(x, tuple(size))
        return nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        fused = None
        for smooth, x in zip(self.smooth, features):
            x = smooth(self.resize(x, size))
            fused = x if fused is None else fused * x
        return fused


class UNetV2(nn.Module):
    """U-Net v2: a U-Net encoder, SDI skips at every level, upsample-and-add decoder, deep supervision.

    Args:
        in_channels: input channels (2c+1 for a 2.5D input with context c).
        out_channels: logit channels per head (1 for a sigmoid class, classes+1 for softmax).
        features: encoder channels per level, finest first.
        skip_channels: the SDI width c (paper: 32).
        norm, act, dropout: MONAI layer specs and dropout of the encoder blocks.
        deep_supervision: build a 1×1 head on every decoder level (returned in training mode).

    Shapes: ``(B, in_channels, H, W)`` with H, W divisible by :meth:`required_multiple` →
    evaluation: ``(B, out_channels, H, W)``; training with deep supervision: a list of N heads
    ``(B, out_channels, H, W)``, coarsest first, the main (full-resolution) head last.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = paper_features("unetv2"),
        skip_channels: int = 32,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError("features needs at least two levels")
        levels = len(features)
        self.features = features
        self.deep_supervision = deep_supervision
        self.encoder = ConvEncoder(in_channels, features, 2, norm, act, dropout)
        self.attention = nn.ModuleList(AttentionProjection(f, skip_channels, norm) for f in features)
        self.sdi = nn.ModuleList(SemanticDetailInfusion(skip_channels, levels) for _ in features)
        self.upsample = nn.ModuleList(LearnedUpsample(skip_channels, skip_channels, 2, bilinear_init=False) for _ in range(levels - 1))
        head_levels = range(levels) if deep_supervision else range(1)
        self.heads = nn.ModuleList(UpsampledHead(skip_channels, out_channels, scale=2**level) for level in head_levels)

    def required_multiple(self, depth: int | None = None) -> int:
        """In-plane sizes must be divisible by this (one halving per pooling)."""
        return 2 ** (len(self.features) - 1)

    def forward(self, x: torch.Tensor):
        projected = [attention(f) for attention, f in zip(self.attention, self.encoder(x))]
        infused = [sdi(projected, f.shape[-2:]) for sdi, f in zip(self.sdi, projected)]
        train_heads = self.training and self.deep_supervision
        y = infused[-1]
        outputs = []
        for level in reversed(range(len(infused))):
            if level < len(infused) - 1:
                y = self.upsample[level](y) + infused[level]
            if train_heads:
                outputs.append(self.heads[level](y))
        return outputs if train_heads else self.heads[0](y)

"""FCN-8s: the fully convolutional network with skips at strides 8, 16 and 32.

Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015
(and IEEE TPAMI 2017). A VGG-16-like encoder (five stages of 2, 2, 3, 3, 3 3×3 conv-norm-act layers
with 64, 128, 256, 512, 512 channels, each followed by 2×2 max pooling: pool3 at stride 8, pool4 at 16,
pool5 at 32), the classifier turned convolutional (fc6: 7×7 conv, fc7: 1×1 conv, 4096 channels, dropout
0.5), then

    score32 = score_fr(fc7(fc6(pool5)))                       1×1 conv to classes, stride 32
    score16 = up2(score32) + score_pool4(pool4)               learned ×2, 1×1 score head at stride 16
    score8  = up2(score16) + score_pool3(pool3)               learned ×2, 1×1 score head at stride 8
    logits  = up8(score8)                                     learned ×8

Every upsampling is a transposed convolution initialised to bilinear interpolation and learned; the
pool3/pool4 score heads start at zero, as in the paper's staged training. The paper's input padding
of 100 and crop offsets are replaced by "same" padding and transposed-convolution padding, so
every map aligns exactly and the output has the input size when H and W are divisible by 32 (other
sizes are cropped or zero-padded to fit). BatchNorm is used in the encoder (VGG-16-BN), since these
networks are trained from scratch here.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from UNetSegmentationLib.networks.blocks import ConvEncoder, ConvNormAct, LayerSpec, LearnedUpsample, SegmentationHead
from UNetSegmentationLib.networks.presets import paper_features

VGG16_CONVS = (2, 2, 3, 3, 3)


def align_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop (bottom/right) or zero-pad ``(B, C, h, w)`` to ``(B, C, *size)``, keeping the top-left corner aligned."""
    x = x[..., : size[0], : size[1]]
    pad_rows, pad_columns = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if pad_rows or pad_columns:
        x = nn.functional.pad(x, (0, pad_columns, 0, pad_rows))
    return x


class FCN8s(nn.Module):
    """FCN-8s with a VGG-like encoder trained from scratch.

    Args:
        in_channels: input channels (2c+1 for a 2.5D input with context c).
        out_channels: logit channels (1 for a sigmoid class, classes+1 for softmax).
        features: channels of the five encoder stages (VGG-16: 64, 128, 256, 512, 512).
        convs_per_stage: 3×3 conv layers per stage (VGG-16: 2, 2, 3, 3, 3).
        fc_features: channels of fc6/fc7 (VGG-16: 4096); None: ``8 * features[-1]``.
        fc_kernel: kernel size of fc6 (VGG-16: 7).
        norm, act: MONAI layer specs of every conv layer (fc6/fc7 included).
        dropout: dropout after fc6 and fc7 (paper: 0.5).

    Shapes: ``(B, in_channels, H, W) → (B, out_channels, H, W)``; H, W divisible by 32 align exactly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = paper_features("fcn8s"),
        convs_per_stage: Union[int, Sequence[int]] = VGG16_CONVS,
        fc_features: Optional[int] = None,
        fc_kernel: int = 7,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) != 5:
            raise ValueError(f"FCN-8s needs five encoder stages (pool3, pool4, pool5 at strides 8, 16, 32); got {len(features)} features")
        fc_features = int(fc_features or 8 * features[-1])
        self.features = features
        self.encoder = ConvEncoder(in_channels, features, convs_per_stage, norm, act)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Sequential(
            ConvNormAct(features[4], fc_features, kernel_size=fc_kernel, norm=norm, act=act, dropout=dropout),
            ConvNormAct(fc_features, fc_features, kernel_size=1, norm=norm, act=act, dropout=dropout),
        )
        self.score_fr = SegmentationHead(fc_features, out_channels)
        self.score_pool4 = SegmentationHead(features[3], out_channels)
        self.score_pool3 = SegmentationHead(features[2], out_channels)
        for head in (self.score_pool4, self.score_pool3):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.up2_pool4 = LearnedUpsample(out_channels, out_channels, 2)
        self.up2_pool3 = LearnedUpsample(out_channels, out_channels, 2)
        self.up8 = LearnedUpsample(out_channels, out_channels, 8)

    def required_multiple(self, depth: int | None = None) -> int:
        """In-plane sizes must be divisible by this (five poolings: stride 32)."""
        return 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.encoder(x)  # stage i at stride 2**i
        pool3, pool4, pool5 = (self.pool(stages[i]) for i in (2, 3, 4))
        score = self.score_fr(self.fc(pool5))
        score = self.score_pool4(pool4) + align_to(self.up2_pool4(score), pool4.shape[-2:])
        score = self.score_pool3(pool3) + align_to(self.up2_pool3(score), pool3.shape[-2:])
        return align_to(self.up8(score), x.shape[-2:])

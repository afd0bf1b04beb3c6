"""DeepLabv3+: atrous spatial pyramid pooling on a stride-16 encoder, with a light decoder.

Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation",
ECCV 2018. The encoder runs at output stride 16; ASPP (Chen et al., "Rethinking Atrous Convolution
for Semantic Image Segmentation", 2017) applies in parallel a 1×1 convolution, three 3×3 atrous
convolutions at rates 6, 12, 18 and image-level pooling, 256 channels each, concatenated and projected
by a 1×1 convolution to 256. The decoder projects the stride-4 encoder features to 48 channels,
concatenates them with the ×4 bilinearly upsampled ASPP output, refines with two 3×3 convolutions of
256 channels, classifies (1×1) and upsamples ×4 bilinearly to the input size.

The paper's pretrained ResNet-101/Xception backbones are replaced by a plain residual encoder trained
from scratch (MONAI residual units; ``features`` (64, 64, 128, 256, 512) are ResNet-18's widths): a
stride-2 stem, residual stages at strides 4, 8 and 16, and a last stage that keeps stride 16 with
dilation 2 instead of striding. Plain (not depthwise-separable) convolutions are used throughout.
The image-pooling branch has no normalisation (its map is 1×1, where BatchNorm fails at batch size 1).
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from UNetSegmentationLib.networks.blocks import ConvNormAct, LayerSpec, SegmentationHead, layer_spec, resize_to
from UNetSegmentationLib.networks.presets import paper_features


class ResidualStage(nn.Sequential):
    """``blocks`` MONAI residual units (two 3×3 conv-norm-act each); the first one strides and/or changes channels.

    ``(B, C_in, H, W) → (B, C_out, H / stride, W / stride)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        blocks: int = 2,
        stride: int = 1,
        dilation: int = 1,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
    ) -> None:
        super().__init__(
            *(
                ResidualUnit(
                    2,
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    strides=stride if i == 0 else 1,
                    dilation=dilation,
                    norm=layer_spec(norm),
                    act=layer_spec(act),
                    bias=False,
                )
                for i in range(max(1, blocks))
            )
        )


class ImagePooling(nn.Module):
    """ASPP image-level branch: global average pooling, 1×1 conv-act (no norm), broadcast back.

    ``(B, C_in, H, W) → (B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, act: LayerSpec = "relu") -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, kernel_size=1, norm=None, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x.mean(dim=(2, 3), keepdim=True))
        return pooled.expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1 conv, 3×3 atrous convs at ``rates``, image pooling;
    concatenated and projected by a 1×1 conv-norm-act (then dropout).

    ``(B, C_in, H, W) → (B, out_channels, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        branches = [ConvNormAct(in_channels, out_channels, kernel_size=1, norm=norm, act=act, bias=False)]
        branches += [ConvNormAct(in_channels, out_channels, 3, norm=norm, act=act, dilation=int(r), bias=False) for r in rates]
        branches.append(ImagePooling(in_channels, out_channels, act))
        self.branches = nn.ModuleList(branches)
        self.project = ConvNormAct(len(branches) * out_channels, out_channels, kernel_size=1, norm=norm, act=act, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([branch(x) for branch in self.branches], dim=1)))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ with a residual encoder at output stride 16.

    Args:
        in_channels: input channels (2c+1 for a 2.5D input with context c).
        out_channels: logit channels (1 for a sigmoid class, classes+1 for softmax).
        features: channels of the stem (stride 2), the stages at strides 4, 8, 16 and the dilated
            last stage (stride 16), five values.
        blocks: residual units per stage.
        aspp_channels: width of every ASPP branch and of its projection (paper: 256).
        aspp_rates: atrous rates of the three 3×3 ASPP branches (paper, output stride 16: 6, 12, 18).
        low_level_channels: channels the stride-4 features are projected to (paper: 48).
        decoder_channels: channels of the two 3×3 decoder convolutions (paper: 256).
        norm, act: MONAI layer specs.
        dropout: dropout after the ASPP projection.

    Shapes: ``(B, in_channels, H, W) → (B, out_channels, H, W)``, H and W divisible by 16.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = paper_features("deeplabv3plus"),
        blocks: int = 2,
        aspp_channels: int = 256,
        aspp_rates: Sequence[int] = (6, 12, 18),
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) != 5:
            raise ValueError(f"DeepLabv3+ needs five feature widths (stem, strides 4, 8, 16, dilated stage); got {len(features)}")
        self.features = features
        self.stem = nn.Sequential(
            Convolution(2, in_channels, features[0], strides=2, kernel_size=3, norm=layer_spec(norm), act=layer_spec(act), bias=False),
            ConvNormAct(features[0], features[0], norm=norm, act=act, bias=False),
        )
        self.low_level = ResidualStage(features[0], features[1], blocks, stride=2, norm=norm, act=act)  # stride 4
        self.high_level = nn.Sequential(
            ResidualStage(features[1], features[2], blocks, stride=2, norm=norm, act=act),  # stride 8
            ResidualStage(features[2], features[3], blocks, stride=2, norm=norm, act=act),  # stride 16
            ResidualStage(features[3], features[4], blocks, stride=1, dilation=2, norm=norm, act=act),  # stride 16, dilated
        )
        self.aspp = ASPP(features[4], aspp_channels, aspp_rates, norm, act, dropout)
        self.project_low_level = ConvNormAct(features[1], low_level_channels, kernel_size=1, norm=norm, act=act, bias=False)
        self.decoder = nn.Sequential(
            ConvNormAct(aspp_channels + low_level_channels, decoder_channels, norm=norm, act=act, bias=False),
            ConvNormAct(decoder_channels, decoder_channels, norm=norm, act=act, bias=False),
        )
        self.classifier = SegmentationHead(decoder_channels, out_channels)

    def required_multiple(self, depth: int | None = None) -> int:
        """In-plane sizes must be divisible by the output stride, 16."""
        return 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low_level(self.stem(x))
        context = self.aspp(self.high_level(low))
        y = torch.cat([self.project_low_level(low), resize_to(context, low.shape[-2:])], dim=1)
        return resize_to(self.classifier(self.decoder(y)), x.shape[-2:])

"""UNet 3+ with full-scale skip connections, full-scale deep supervision and the classification-guided module.

Huang et al., "UNet 3+: A Full-Scale Connected UNet for Medical Image Segmentation", ICASSP 2020.
With N encoder levels (N = 5 in the paper, filters 64, 128, 256, 512, 1024; two 3×3 conv-BN-ReLU per
level), the decoder map at level i < N - 1 is

    X_De^i = H([C(D(X_En^0)), …, C(D(X_En^(i-1))), C(X_En^i), C(U(X_De^(i+1))), …, C(U(X_De^(N-1)))])

with X_De^(N-1) = X_En^(N-1), D max pooling and U bilinear upsampling to level i, C a 3×3 conv-BN-ReLU
to ``cat_channels`` (64) and H a 3×3 conv-BN-ReLU fusing the N·64 = 320 concatenated channels.
Full-scale deep supervision puts a 3×3 head on every X_De^i (X_En^(N-1) included), upsampled
bilinearly to full size. The classification-guided module (CGM: dropout, 1×1 conv, global max pool)
on X_En^(N-1) predicts whether the structure is present in the slice; at inference a slice it
judges empty (probability < 0.5) is returned as all background.

Parameter count (3 input channels, 1 class, paper filters, no deep supervision, no CGM): 26.97M,
as in the paper's Table 1 (VGG-16-like encoder, convolutions with bias followed by BatchNorm, as in the
authors' code).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import nn

from UNetSegmentationLib.networks.blocks import (
    ConvEncoder,
    ConvNormAct,
    LayerSpec,
    TrainingOutput,
    UpsampledHead,
    blank_absent_slices,
)
from UNetSegmentationLib.networks.presets import paper_features


class FullScaleSkip(nn.Module):
    """One input of a UNet 3+ decoder stage: resample a map from ``source_level`` to ``target_level``
    (max pooling from a finer level, bilinear upsampling from a coarser one), then 3×3 conv-norm-act.

    ``(B, C_in, H / 2**source_level, W / 2**source_level) → (B, C_out, H / 2**target_level, W / 2**target_level)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        source_level: int,
        target_level: int,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
    ) -> None:
        super().__init__()
        shift = target_level - source_level
        self.resample: nn.Module
        if shift > 0:
            self.resample = nn.MaxPool2d(2**shift, 2**shift, ceil_mode=True)
        elif shift < 0:
            self.resample = UpSample(2, scale_factor=2**-shift, mode="nontrainable", interp_mode="bilinear", align_corners=False)
        else:
            self.resample = nn.Identity()
        self.conv = ConvNormAct(in_channels, out_channels, norm=norm, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.resample(x))


class FullScaleDecoderStage(nn.Module):
    """A UNet 3+ decoder stage at ``level``: one :class:`FullScaleSkip` per level, concatenated and fused.

    Args:
        source_channels: channels of the map taken from each level 0..N-1 (encoder maps at levels
            ≤ ``level`` and at N - 1, decoder maps in between).
        level: the level this stage outputs.
        cat_channels: channels of each skip after its 3×3 convolution (64 in the paper).

    Shapes: N maps ``(B, source_channels[j], H / 2**j, W / 2**j)`` → ``(B, N·cat_channels, H / 2**level, W / 2**level)``.
    """

    def __init__(
        self,
        source_channels: Sequence[int],
        level: int,
        cat_channels: int,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
    ) -> None:
        super().__init__()
        self.level = level
        self.skips = nn.ModuleList(
            FullScaleSkip(c, cat_channels, source_level=j, target_level=level, norm=norm, act=act) for j, c in enumerate(source_channels)
        )
        fused = cat_channels * len(source_channels)
        self.fuse = ConvNormAct(fused, fused, norm=norm, act=act)

    def forward(self, sources: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fuse(torch.cat([skip(x) for skip, x in zip(self.skips, sources)], dim=1))


class ClassificationGuidedModule(nn.Sequential):
    """UNet 3+ CGM: dropout, 1×1 convolution to one logit per position, global max pooling.

    ``(B, C, h, w) → (B, 1)`` logits of "the structure is present in this slice" (sigmoid ≥ 0.5: present).
    The paper uses two softmax channels; one sigmoid logit is the equivalent binary form.
    """

    def __init__(self, in_channels: int, dropout: float = 0.5) -> None:
        super().__init__(nn.Dropout(dropout), nn.Conv2d(in_channels, 1, kernel_size=1), nn.AdaptiveMaxPool2d(1), nn.Flatten())


class UNet3Plus(nn.Module):
    """UNet 3+: full-scale skips, full-scale deep supervision, classification-guided module.

    Args:
        in_channels: input channels (2c+1 for a 2.5D input with context c).
        out_channels: logit channels (1 for a sigmoid class, classes+1 for softmax).
        features: encoder channels per level, finest first (paper: 64, 128, 256, 512, 1024).
        cat_channels: channels of every full-scale skip (paper: 64); None: ``features[0]``.
        norm, act: MONAI layer specs of every conv block.
        dropout: dropout probability inside the encoder's conv blocks.
        deep_supervision: build a 3×3 head on every decoder stage and on the bottom encoder level.
        build_cgm: build the classification-guided module.
        cgm_dropout: dropout before the CGM's 1×1 convolution (paper: 0.5).

    Attributes:
        classification_guidance: when True (the default if the CGM is built), evaluation-mode
            ``forward`` returns all-background logits for slices the CGM judges empty. Set it to
            False to get the raw segmentation; it is always False without a CGM.

    Shapes: ``(B, in_channels, H, W)`` with H, W divisible by :meth:`required_multiple` →
    evaluation: ``(B, out_channels, H, W)``; training: :class:`TrainingOutput` with heads
    ``[bottom, level N-2, …, level 0 (main)]`` (only the main head without deep supervision), each
    ``(B, out_channels, H, W)``, and classification ``(B, 1)`` logits (None without the CGM).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = paper_features("unet3plus"),
        cat_channels: Optional[int] = None,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        deep_supervision: bool = True,
        build_cgm: bool = True,
        cgm_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError("features needs at least two levels")
        cat_channels = int(cat_channels or features[0])
        levels = len(features)
        fused = cat_channels * levels
        self.features = features
        self.deep_supervision = deep_supervision
        self.encoder = ConvEncoder(in_channels, features, 2, norm, act, dropout)
        self.decoder = nn.ModuleList()  # decoder[i] outputs level i, for i = 0..N-2
        for level in range(levels - 1):
            sources = [features[j] if j <= level or j == levels - 1 else fused for j in range(levels)]
            self.decoder.append(FullScaleDecoderStage(sources, level, cat_channels, norm, act))
        self.head = Convolution(2, fused, out_channels, kernel_size=3, conv_only=True)
        self.side_heads = nn.ModuleList()  # side_heads[i - 1] supervises level i = 1..N-1
        if deep_supervision:
            for level in range(1, levels):
                channels = features[-1] if level == levels - 1 else fused
                self.side_heads.append(UpsampledHead(channels, out_channels, scale=2**level, kernel_size=3))
        self.cgm = ClassificationGuidedModule(features[-1], cgm_dropout) if build_cgm else None
        self._classification_guidance = build_cgm

    @property
    def classification_guidance(self) -> bool:
        """Whether evaluation-mode output blanks the slices the CGM judges empty."""
        return self._classification_guidance

    @classification_guidance.setter
    def classification_guidance(self, value: bool) -> None:
        # Without a CGM (build_cgm=False) there is nothing to guide with: it stays False, so the
        # engine may set True ("guide if you can") on any network.
        self._classification_guidance = bool(value) and self.cgm is not None

    def required_multiple(self, depth: int | None = None) -> int:
        """In-plane sizes must be divisible by this (one halving per pooling)."""
        return 2 ** (len(self.features) - 1)

    def _decode(self, encoded: Sequence[torch.Tensor]) -> list:
        """Decoder maps of every level, finest first; the last is the bottom encoder map."""
        levels = len(encoded)
        maps: list = [None] * levels
        maps[-1] = encoded[-1]
        for level in reversed(range(levels - 1)):
            sources = [encoded[j] if j <= level or j == levels - 1 else maps[j] for j in range(levels)]
            maps[level] = self.decoder[level](sources)
        return maps

    def forward(self, x: torch.Tensor):
        encoded = self.encoder(x)
        decoded = self._decode(encoded)
        main = self.head(decoded[0])
        if self.training:
            heads = [head(decoded[level]) for level, head in reversed(list(enumerate(self.side_heads, start=1)))]
            classification = self.cgm(encoded[-1]) if self.cgm is not None else None
            return TrainingOutput(heads + [main], classification)
        if self.classification_guidance:
            present = self.cgm(encoded[-1])[:, 0] >= 0  # sigmoid(logit) ≥ 0.5
            main = blank_absent_slices(main, present)
        return main

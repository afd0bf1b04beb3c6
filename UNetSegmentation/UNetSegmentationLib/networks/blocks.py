"""Building blocks shared by the architectures (2D, built from MONAI's layers).

Every block takes and returns ``(B, C, H, W)`` tensors. Normalisation and activation are given as
MONAI layer specs: a name (``"batch"``, ``"instance"``, ``"relu"``) or ``(name, kwargs)``; lists from
JSON metadata are accepted and turned into tuples.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import nn

LayerSpec = Union[str, Sequence[Any], None]


def layer_spec(spec: LayerSpec) -> Union[str, tuple, None]:
    """Turn a JSON-friendly layer spec (``["instance", {"affine": true}]``) into MONAI's form."""
    if spec is None or isinstance(spec, str):
        return spec
    return tuple(spec)


class ConvNormAct(Convolution):
    """A ``kernel_size``×``kernel_size`` convolution followed by norm, dropout and activation (MONAI "NDA")."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernel_size,
            norm=layer_spec(norm),
            act=layer_spec(act),
            dropout=dropout or None,
            dilation=dilation,
            bias=bias,
        )


class DoubleConv(nn.Sequential):
    """Two 3×3 conv-norm-act layers: the "standard unit" of U-Net and UNet++. ``(B, C_in, H, W) → (B, C_out, H, W)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, norm=norm, act=act, dropout=dropout),
            ConvNormAct(out_channels, out_channels, norm=norm, act=act, dropout=dropout),
        )


class UpConv(nn.Module):
    """Learned ×2 upsampling by a 2×2 transposed convolution with stride 2 (as in the U-Net and UNet++ papers).

    ``(B, C_in, H, W) → (B, C_out, 2H, 2W)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = UpSample(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, scale_factor=2, mode="deconv")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class SegmentationHead(nn.Conv2d):
    """1×1 convolution from features to per-class logits. ``(B, C, H, W) → (B, out_channels, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)


class TrainingOutput(NamedTuple):
    """What a network returns in training mode, normalised by :func:`as_training_output`.

    ``heads``: full-size logits ``(B, out_channels, H, W)`` of every supervised output, ordered from the
    shallowest/coarsest to the main one (the last entry is what inference uses by default).
    ``classification``: ``(B, 1)`` logits of a slice-level "structure present" head, if the network has one.
    """

    heads: list
    classification: Optional[torch.Tensor] = None


def as_training_output(output: Union[torch.Tensor, Sequence[torch.Tensor], TrainingOutput]) -> TrainingOutput:
    """Accept the three forms networks return in training (tensor, list of heads, TrainingOutput)."""
    if isinstance(output, TrainingOutput):
        return output
    if isinstance(output, torch.Tensor):
        return TrainingOutput([output])
    return TrainingOutput(list(output))



# --- Blocks shared by UNet 3+, U-Net v2, FCN-8s and DeepLabv3+ -------------------------------------


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resampling of ``(B, C, h, w)`` to ``(B, C, *size)`` (``align_corners=False``); a no-op at equal size."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvStage(nn.Sequential):
    """``convs`` 3×3 conv-norm-act layers: a VGG stage (``convs=2`` is :class:`DoubleConv`).

    ``(B, C_in, H, W) → (B, C_out, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        convs: int = 2,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
    ) -> None:
        if convs < 1:
            raise ValueError(f"a stage needs at least one convolution, got {convs}")
        super().__init__(
            *(
                ConvNormAct(in_channels if i == 0 else out_channels, out_channels, norm=norm, act=act, dropout=dropout)
                for i in range(convs)
            )
        )


class ConvEncoder(nn.Module):
    """Plain convolutional encoder (the U-Net/VGG contracting path): stage i runs at stride 2**i.

    Stage 0 sees the input; every later stage first halves the size by 2×2 max pooling.

    Args:
        in_channels: input channels.
        features: channels of stage i, finest first.
        convs_per_stage: 3×3 conv-norm-act layers per stage, one number for all or one per stage
            (VGG-16: ``(2, 2, 3, 3, 3)``).
        norm, act, dropout: as :class:`ConvNormAct`.

    Shapes: ``(B, in_channels, H, W) →`` list of ``(B, features[i], H / 2**i, W / 2**i)``.
    """

    def __init__(
        self,
        in_channels: int,
        features: Sequence[int],
        convs_per_stage: Union[int, Sequence[int]] = 2,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        convs = (int(convs_per_stage),) * len(features) if isinstance(convs_per_stage, int) else tuple(int(c) for c in convs_per_stage)
        if len(convs) != len(features):
            raise ValueError(f"convs_per_stage has {len(convs)} entries but features has {len(features)} levels")
        self.features = features
        self.pool = nn.MaxPool2d(2)
        self.stages = nn.ModuleList(
            ConvStage(in_channels if i == 0 else features[i - 1], f, n, norm, act, dropout)
            for i, (f, n) in enumerate(zip(features, convs))
        )

    def forward(self, x: torch.Tensor) -> list:
        outputs = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.pool(x))
            outputs.append(x)
        return outputs


class UpsampledHead(nn.Module):
    """Deep-supervision head: a ``kernel_size``×``kernel_size`` convolution to logits, then bilinear
    upsampling by ``scale`` back to the input size.

    ``(B, C, H / scale, W / scale) → (B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int = 1, kernel_size: int = 1) -> None:
        super().__init__()
        self.conv = Convolution(2, in_channels, out_channels, kernel_size=kernel_size, conv_only=True)
        self.up = (
            UpSample(2, scale_factor=scale, mode="nontrainable", interp_mode="bilinear", align_corners=False)
            if scale > 1
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv(x))


def bilinear_kernel(size: int) -> torch.Tensor:
    """The ``size``×``size`` bilinear interpolation kernel used to initialise learned upsampling (FCN)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return (ramp[:, None] * ramp[None, :]).float()


class LearnedUpsample(nn.ConvTranspose2d):
    """Learnable ×``factor`` upsampling: a transposed convolution with kernel 2·factor, stride factor and
    padding factor/2 (the FCN crop, as padding), so ``(B, C_in, H, W) → (B, C_out, factor·H, factor·W)``
    exactly. With ``bilinear_init`` (needs ``C_in == C_out``) it starts as per-channel bilinear
    interpolation (Long et al., CVPR 2015).
    """

    def __init__(self, in_channels: int, out_channels: int, factor: int = 2, bilinear_init: bool = True) -> None:
        if factor < 2 or factor % 2:
            raise ValueError(f"factor must be an even integer ≥ 2, got {factor}")
        super().__init__(in_channels, out_channels, kernel_size=2 * factor, stride=factor, padding=factor // 2, bias=False)
        if bilinear_init:
            if in_channels != out_channels:
                raise ValueError("bilinear initialisation needs in_channels == out_channels")
            with torch.no_grad():
                self.weight.zero_()
                kernel = bilinear_kernel(2 * factor)
                for c in range(in_channels):
                    self.weight[c, c] = kernel


class ChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al., ECCV 2018): a shared two-layer MLP (as 1×1 convs, reduction
    ``ratio``) on the global average- and max-pooled features, summed, sigmoid, reweights the channels.

    ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.mlp(x.mean(dim=(2, 3), keepdim=True)) + self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(pooled)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a ``kernel_size``×``kernel_size`` convolution of the channel-wise mean and
    max, sigmoid, reweights every position. ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(descriptor))


EMPTY_LOGIT = 1.0e4
"""Magnitude of the logits :func:`blank_absent_slices` writes (finite, so float16 autocast keeps it)."""


def blank_absent_slices(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Replace the logits of slices where ``present`` (``(B,)`` bool) is False by "all background".

    One channel (sigmoid): every pixel gets ``-EMPTY_LOGIT``. Several (softmax over background +
    classes): the background channel 0 gets ``+EMPTY_LOGIT``, every class ``-EMPTY_LOGIT``.
    ``(B, K, H, W) → (B, K, H, W)``.
    """
    empty = torch.full_like(logits[:1], -EMPTY_LOGIT)
    if logits.shape[1] > 1:
        empty[:, 0] = EMPTY_LOGIT
    return torch.where(present.view(-1, 1, 1, 1), logits, empty)

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


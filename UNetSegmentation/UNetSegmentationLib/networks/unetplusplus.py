"""UNet++ with deep supervision and exact pruning.

Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image Segmentation", DLMIA 2018, and
"UNet++: Redesigning Skip Connections to Exploit Multiscale Features in Image Segmentation",
IEEE TMI 2020. Node X(i, j) (i: down-sampling level, j: position along the skip pathway) is

    X(i, 0) = H(pool(X(i-1, 0)))                                      (the encoder)
    X(i, j) = H([X(i, 0), …, X(i, j-1), Up(X(i+1, j-1))])              for j ≥ 1

with H two 3×3 conv-norm-act layers with ``features[i]`` channels and Up a 2×2 transposed conv. 1×1
deep-supervision heads sit on X(0, 1) … X(0, D) (D = len(features) - 1 = 4 in the paper). Pruning to
depth L keeps only the nodes with i + j ≤ L and head L: since X(i, j) needs only nodes with i + j no
larger than its own, the sub-network is computed exactly, without touching the rest. Paper sizes
(filters 32..512, 1 input channel, 1 class): L1 0.10M, L2 0.51M, L3 2.20M, L4 9.04M parameters.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from UNetSegmentationLib.networks.blocks import DoubleConv, LayerSpec, SegmentationHead, UpConv
from UNetSegmentationLib.networks.presets import paper_features


def _key(i: int, j: int) -> str:
    return f"x{i}{j}"


class UNetPlusPlus(nn.Module):
    """UNet++ (nested, dense skip pathways) with deep-supervision heads and prunable depth.

    Args:
        in_channels: input channels (2c+1 for a 2.5D input with context c).
        out_channels: logit channels per head.
        features: channels of level i = 0..D, finest first.
        norm, act, dropout: as :class:`~UNetSegmentationLib.networks.unet.UNet`.
        deep_supervision: in training mode return every head (for the deep-supervision loss);
            otherwise only the deepest.

    Shapes: every head is ``(B, out_channels, H, W)`` for an input ``(B, in_channels, H, W)``.

    In evaluation mode ``forward`` returns head D; :meth:`forward_depth` returns head L computing only
    the depth-L sub-network, and :meth:`forward_heads` returns all heads (the paper's "accurate"
    mode averages them).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = paper_features("unetplusplus"),
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ValueError("features needs at least two levels")
        self.features = features
        self.max_depth = len(features) - 1
        self.deep_supervision = deep_supervision
        self.pool = nn.MaxPool2d(2)
        self.nodes = nn.ModuleDict()
        self.upsample = nn.ModuleDict()
        for i, f in enumerate(features):
            self.nodes[_key(i, 0)] = DoubleConv(in_channels if i == 0 else features[i - 1], f, norm, act, dropout)
        for j in range(1, self.max_depth + 1):
            for i in range(self.max_depth + 1 - j):
                self.upsample[_key(i, j)] = UpConv(features[i + 1], features[i])
                self.nodes[_key(i, j)] = DoubleConv((j + 1) * features[i], features[i], norm, act, dropout)
        self.heads = nn.ModuleList(SegmentationHead(features[0], out_channels) for _ in range(self.max_depth))

    @property
    def depths(self) -> tuple:
        """The depths this network can be pruned to: 1..D."""
        return tuple(range(1, self.max_depth + 1))

    def required_multiple(self, depth: int | None = None) -> int:
        """In-plane sizes must be divisible by 2**L for the depth-L sub-network."""
        return 2 ** (self.max_depth if depth is None else depth)

    def _check_depth(self, depth: int) -> int:
        if depth not in self.depths:
            raise ValueError(f"depth must be one of {self.depths}, got {depth}")
        return depth

    def _nodes(self, x: torch.Tensor, depth: int) -> dict:
        """Compute X(i, j) for every i + j ≤ depth, and nothing else."""
        out = {}
        for i in range(depth + 1):
            out[i, 0] = self.nodes[_key(i, 0)](x if i == 0 else self.pool(out[i - 1, 0]))
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                inputs = [out[i, k] for k in range(j)] + [self.upsample[_key(i, j)](out[i + 1, j - 1])]
                out[i, j] = self.nodes[_key(i, j)](torch.cat(inputs, dim=1))
        return out

    def forward_depth(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        """Logits of head ``depth``, computing only the depth-``depth`` sub-network."""
        depth = self._check_depth(depth)
        return self.heads[depth - 1](self._nodes(x, depth)[0, depth])

    def forward_heads(self, x: torch.Tensor) -> list:
        """Logits of every head, shallowest first, from one pass of the full network."""
        nodes = self._nodes(x, self.max_depth)
        return [head(nodes[0, j]) for j, head in enumerate(self.heads, start=1)]

    def forward(self, x: torch.Tensor):
        if self.training and self.deep_supervision:
            return self.forward_heads(x)
        return self.forward_depth(x, self.max_depth)

    def modules_for_depth(self, depth: int) -> Iterator[nn.Module]:
        """The modules the depth-``depth`` sub-network uses (for parameter counts and export)."""
        depth = self._check_depth(depth)
        for j in range(depth + 1):
            for i in range(depth + 1 - j):
                yield self.nodes[_key(i, j)]
                if j:
                    yield self.upsample[_key(i, j)]
        yield self.heads[depth - 1]

    def parameter_count(self, depth: int | None = None) -> int:
        """Parameters of the depth-``depth`` sub-network (all heads' parameters when ``depth`` is None)."""
        if depth is None:
            return sum(p.numel() for p in self.parameters())
        return sum(p.numel() for module in self.modules_for_depth(depth) for p in module.parameters())

"""The PyTorch network prepared for inference (imports torch): what the PyTorch predictor runs and the ONNX export contains.

Decides nothing about the run (the plan does, :mod:`.plan`); it holds the transformations both
backends share, so that PyTorch and ONNX Runtime compute the same probabilities:

- :func:`fold_batchnorm`: BatchNorm after a convolution folded into the convolution's weights
  (exact up to float32 rounding, ~1e-6): one pass over memory less per layer.
- :func:`prefers_channels_last`: channels_last memory format for networks whose normalisation has
  no per-sample statistics (batch norm, folded or not); InstanceNorm/GroupNorm networks run slower
  in it on the CPU, so they stay contiguous.
- :class:`ProbabilityNetwork`: the network pruned to what inference needs (UNet++ at depth L: only
  the nodes i + j ≤ L and head L) with the checkpoint's calibration temperature and the
  softmax/sigmoid inside, so one call gives probabilities (what the ONNX backend exports and int8
  quantises, too): the one place where logits become probabilities at inference.
- :func:`autocast`: the autocast context of a dtype (:class:`~.torch_predictor.TorchSettings` says which).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from UNetSegmentationLib.model.depth import ACCURATE


def _fold_into(conv, bn) -> bool:
    """Fold eval-mode BatchNorm ``bn`` into the preceding (non-transposed) convolution ``conv``."""
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return False
    if bn.training or bn.running_mean is None or bn.running_var is None or bn.num_features != conv.out_channels:
        return False
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
        weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        conv.weight.copy_(weight.to(conv.weight.dtype))
        new_bias = (bias * scale + shift).to(conv.weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias, requires_grad=False)
        else:
            conv.bias.copy_(new_bias)
    return True


def fold_batchnorm(model) -> int:
    """Fold every BatchNorm that directly follows a convolution into it, in place; returns how many.

    Covers MONAI ``Convolution`` blocks (``conv`` then ``adn`` whose first layer is the norm, the
    "NDA" order every network here uses) and ``nn.Sequential`` pairs ``Conv → BatchNorm``. The folded
    BatchNorm becomes ``nn.Identity``. Only for evaluation: the model must be in eval mode, and its
    ``state_dict`` no longer matches the checkpoint afterwards.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in evaluation mode")
    folded = 0
    for module in list(model.modules()):
        adn = getattr(module, "adn", None)
        conv = getattr(module, "conv", None)
        if isinstance(adn, nn.Sequential) and conv is not None and len(adn) and next(iter(adn._modules)) == "N":
            if _fold_into(conv, adn.N):
                adn._modules["N"] = nn.Identity()
                folded += 1
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                if _fold_into(module._modules[first], module._modules[second]):
                    module._modules[second] = nn.Identity()
                    folded += 1
    return folded


def prefers_channels_last(model) -> bool:
    """channels_last pays for batch-normalised (or unnormalised) networks on the CPU; InstanceNorm,
    GroupNorm and LayerNorm layers run slower in it, so networks with them stay contiguous."""
    slow = (nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
    return not any(isinstance(m, slow) for m in model.modules())


class ProbabilityNetwork(nn.Module):
    """``(B, C, H, W)`` → ``(B, K, H, W)`` float32 probabilities from ``model`` at ``depth``.

    ``depth``: an int (UNet++ sub-network: only its nodes and head are computed), ``"accurate"``
    (mean of every head's probabilities) or None (the network's own output). Softmax over
    background + classes, or sigmoid for one class, of the logits divided by ``temperature``
    (temperature scaling, Guo et al. 2017: the checkpoint's
    :attr:`~UNetSegmentationLib.model.metadata.ModelMetadata.temperature`, fitted on held-out patients;
    it changes the confidence, never the argmax). An ONNX export of this module contains only what
    that computation uses: no unused head, no pruned node (at temperature 1, no division either).
    """

    def __init__(self, model: nn.Module, depth, uses_softmax: bool, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.depth = depth
        self.uses_softmax = bool(uses_softmax)
        self.temperature = float(temperature)

    @classmethod
    def of(cls, model: nn.Module, depth, metadata) -> "ProbabilityNetwork":
        """The probabilities ``metadata`` (a checkpoint's) defines for ``model``: its activation and temperature."""
        return cls(model, depth, metadata.uses_softmax, metadata.temperature)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return torch.softmax(logits, dim=1) if self.uses_softmax else torch.sigmoid(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depth == ACCURATE:
            heads = self.model.forward_heads(x)
            return torch.stack([self._activate(h) for h in heads]).mean(0)
        if isinstance(self.depth, int):
            return self._activate(self.model.forward_depth(x, self.depth))
        return self._activate(self.model(x))


def autocast(device_type: str, dtype: Optional[str]):
    """The autocast context computing in ``dtype`` (a ``torch`` dtype name such as ``"bfloat16"``;
    None: float32, a null context) on ``device_type`` (``cpu``/``cuda``)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=getattr(torch, dtype))

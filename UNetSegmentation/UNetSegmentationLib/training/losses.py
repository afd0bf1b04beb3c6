"""Training losses, as each architecture's paper uses them, over every supervised head.

A network's training output is normalised by :func:`~UNetSegmentationLib.networks.blocks.as_training_output`
into full-size head logits (coarsest first) and an optional slice-level classification logit; the
loss of every head is computed the same way and the heads are averaged with equal weights.

- ``unetplusplus`` (Zhou et al. 2018/2020): per head ½·cross-entropy (binary cross-entropy for one
  class) + Dice — the paper's ``-(½·Y·log Ŷ + 2·Y·Ŷ/(Y+Ŷ))``.
- ``unet3plus`` (Huang et al., ICASSP 2020): per head focal + MS-SSIM + IoU (the "hybrid loss"),
  plus binary cross-entropy of the classification-guided module against "any foreground in the slice".
- ``dice-ce`` (every other architecture): per head Dice + cross-entropy.

Targets are channel indices ``(B, H, W)``: 0 background, c for class c. With one class the network
has one sigmoid channel; with several, softmax channels for background + classes. Dice and IoU are
computed over the whole batch (``batch=True``), so slices without a structure do not give unstable
per-slice ratios; with softmax they skip the background channel.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from UNetSegmentationLib.networks.blocks import TrainingOutput, as_training_output

LOSSES = ("auto", "unetplusplus", "unet3plus", "dice-ce")
#: MS-SSIM weights of Wang et al. 2003 (five scales); fewer scales use the first ones, renormalised
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def loss_kind(architecture: str, requested: str = "auto") -> str:
    """The loss an architecture is trained with unless ``--loss`` says otherwise."""
    if requested != "auto":
        return requested
    return architecture if architecture in ("unetplusplus", "unet3plus") else "dice-ce"


def ms_ssim_settings(crop: Sequence[int], kernel_size: int = 7) -> Tuple[int, Tuple[float, ...]]:
    """Kernel size and the largest number of scales (≤ 5) whose coarsest scale still holds the kernel.

    MONAI's :func:`compute_ms_ssim` needs ``size // (scales - 1)**2 > kernel_size - 1`` and halves
    the image between scales.
    """
    smallest = min(int(c) for c in crop)
    kernel = kernel_size
    while kernel > 3 and smallest < kernel:
        kernel -= 2
    scales = len(MS_SSIM_WEIGHTS)
    while scales > 1 and (smallest // max(1, (scales - 1)) ** 2 <= kernel - 1 or smallest // 2 ** (scales - 1) < kernel):
        scales -= 1
    weights = MS_SSIM_WEIGHTS[:scales]
    total = sum(weights)
    return kernel, tuple(w / total for w in weights)


class SegmentationLoss(nn.Module):
    """``loss(output, target) -> (total, parts)``: ``output`` any training form, ``target`` ``(B, H, W)`` int64.

    ``parts`` maps the loss terms (averaged over heads) to floats, for the log.
    """

    def __init__(self, kind: str, out_channels: int, crop: Sequence[int] = (96, 96)) -> None:
        super().__init__()
        from monai.losses import DiceCELoss, DiceLoss, FocalLoss

        if kind not in LOSSES or kind == "auto":
            raise ValueError(f"unknown loss {kind!r}")
        self.kind = kind
        self.softmax = out_channels > 1
        self.out_channels = out_channels
        activation = {"softmax": True, "to_onehot_y": True, "include_background": False} if self.softmax else {"sigmoid": True}
        if kind in ("unetplusplus", "dice-ce"):
            self.dice_ce = DiceCELoss(batch=True, lambda_ce=0.5 if kind == "unetplusplus" else 1.0, lambda_dice=1.0, **activation)
        else:
            self.focal = FocalLoss(gamma=2.0, use_softmax=self.softmax, to_onehot_y=self.softmax)
            self.iou = DiceLoss(batch=True, jaccard=True, **activation)
            self.ms_ssim_kernel, self.ms_ssim_weights = ms_ssim_settings(crop)

    def _target(self, target: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` float: channel indices for softmax losses, 0/1 for the sigmoid channel."""
        return target[:, None].float()

    def _ms_ssim_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from monai.metrics.regression import compute_ms_ssim

        if self.softmax:
            probabilities = torch.softmax(logits, dim=1)
            reference = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()  # the logits' channels (the marginal loss reduces them per batch)
        else:
            probabilities = torch.sigmoid(logits)
            reference = target[:, None].float()
        similarity = compute_ms_ssim(
            probabilities.float(), reference, spatial_dims=2, data_range=1.0, kernel_size=self.ms_ssim_kernel, weights=self.ms_ssim_weights
        )
        return 1.0 - similarity.mean()

    def _head(self, logits: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = logits.float()
        y = self._target(target)
        if self.kind in ("unetplusplus", "dice-ce"):
            return {"dice_ce": self.dice_ce(logits, y)}
        return {"focal": self.focal(logits, y), "ms_ssim": self._ms_ssim_loss(logits, target), "iou": self.iou(logits, y)}

    def forward(self, output, target: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        output: TrainingOutput = as_training_output(output)
        parts: Dict[str, torch.Tensor] = {}
        for logits in output.heads:
            for name, value in self._head(logits, target).items():
                parts[name] = parts.get(name, 0.0) + value / len(output.heads)
        total = sum(parts.values())
        if output.classification is not None:
            present = (target > 0).flatten(1).any(dim=1, keepdim=True).float()
            parts["classification"] = F.binary_cross_entropy_with_logits(output.classification.float().reshape(present.shape), present)
            total = total + parts["classification"]
        return total, {name: float(value.detach()) for name, value in parts.items()}

"""Labels that cover only some of the model's classes: absent classes are unknown, not background.

A user who corrected only the vertebrae leaves every other structure at 0 in the labels. Trained as
background, the model would unlearn them. Here the classes no training label holds (``--partial-classes
auto``, or those named) are *unlabelled*, and trained with the marginal loss of Shi et al. 2021
("Marginal loss and exclusion loss for partially supervised multi-organ segmentation", Medical Image
Analysis 70): the probabilities of background and of every unlabelled class are merged into one
"background or unlabelled" class, and the cross-entropy and Dice are computed over that merged
distribution and the labelled classes. A voxel labelled 0 then only says "none of the labelled
classes", which is true. How the merged mass divides among background and the unlabelled classes is
taught by the frozen base model (fine-tuning): a distillation term, the KL divergence from the base's
distribution within the merged group to the model's, on every head and pixel. The marginal loss alone
let the untouched classes drift by up to 0.19 Dice on the slicerio CT; with the distillation they stay
within a few hundredths (BENCHMARKS.md, "Training"). Validation scores only the labelled classes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Set, Tuple

import torch

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.metadata import ClassInfo
from UNetSegmentationLib.networks.blocks import TrainingOutput, as_training_output
from UNetSegmentationLib.training.losses import SegmentationLoss


def unlabelled_channels(choice: Any, classes: Sequence[ClassInfo], labelled: Set[int]) -> List[int]:
    """The channels (1-based) to train with the marginal loss: ``choice`` ``auto`` → those in no
    training label (``labelled`` holds the others); ``none`` → none; a list of names → those classes."""
    if choice == "none":
        return []
    if choice == "auto":
        unlabelled = [c for c in range(1, len(classes) + 1) if c not in labelled]
    else:
        by_name = {c.name.lower(): channel for channel, c in enumerate(classes, 1)}
        unknown = [n for n in choice if n.lower() not in by_name]
        if unknown:
            raise UserError(f"--partial-classes: no class {', '.join(map(repr, unknown))} (classes: {', '.join(c.name for c in classes)})")
        unlabelled = sorted({by_name[n.lower()] for n in choice})
    if len(unlabelled) == len(classes):
        names = ", ".join(c.name for c in classes)
        raise UserError(f"the labels hold none of the model's classes ({names}): name their segments as the classes or map their values with --label-map")
    return unlabelled


class MarginalLoss(SegmentationLoss):
    """:class:`SegmentationLoss` over the merged distribution: background + ``unlabelled`` channels as one.

    Each head's logits ``(B, C, H, W)`` become ``(B, 1 + labelled, H, W)`` logits whose softmax is the
    merged probabilities (the log-sum-exp of the merged channels, the labelled channels as they are);
    targets are re-indexed to match. A slice-level classification head is not trained (a slice without
    labelled structures may still hold unlabelled ones).
    """

    def __init__(self, kind: str, out_channels: int, unlabelled: Sequence[int], crop: Sequence[int] = (96, 96)) -> None:
        self.merged = [0] + [int(c) for c in unlabelled]
        self.kept = [c for c in range(1, out_channels) if c not in self.merged]
        super().__init__(kind, 1 + len(self.kept), crop)
        index = torch.zeros(out_channels, dtype=torch.long)
        for reduced, channel in enumerate(self.kept, 1):
            index[channel] = reduced
        self.register_buffer("target_index", index, persistent=False)

    def reduce(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` logits → ``(B, 1 + kept, H, W)``: softmax of the result = merged probabilities."""
        logits = logits.float()
        merged = torch.logsumexp(logits[:, self.merged], dim=1, keepdim=True)
        return torch.cat([merged, logits[:, self.kept]], dim=1)

    def forward(self, output, target: torch.Tensor, teacher=None) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The marginal loss of ``output`` against ``target``; with the base model's ``teacher`` output (same
        form, computed without gradients) plus the distillation of the split within the merged group."""
        output: TrainingOutput = as_training_output(output)
        reduced = TrainingOutput([self.reduce(h) for h in output.heads], None)
        total, parts = super().forward(reduced, self.target_index.to(target.device)[target])
        if teacher is not None:
            teacher = as_training_output(teacher)
            distillation = sum(self.distillation(h, t) for h, t in zip(output.heads, teacher.heads)) / len(output.heads)
            total = total + distillation
            parts["distillation"] = float(distillation.detach())
        return total, parts

    def distillation(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Mean over pixels of KL(teacher ‖ model) of the distributions within the merged group (background +
        unlabelled classes): ``(B, C, H, W)`` logits each."""
        merged = self.merged
        model_log = torch.log_softmax(logits.float()[:, merged], dim=1)
        teacher_log = torch.log_softmax(teacher_logits.float()[:, merged], dim=1)
        return (teacher_log.exp() * (teacher_log - model_log)).sum(dim=1).mean()

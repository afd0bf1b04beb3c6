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

Datasets whose labels cover different classes (issue 24) make the unknown classes a property of each
case (the datalist's ``labelled_classes``): every batch then carries a ``(B, C)`` mask of each sample's
merged channels (background + its unknown classes), and the merged logit, the targets and the Dice are
taken per sample. One shared mask gives exactly the single-list loss.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.grammar.class_lists import class_key
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


def case_unlabelled(case: str, labelled: Optional[Sequence[str]], classes: Sequence[ClassInfo], shared: Sequence[int]) -> Tuple[int, ...]:
    """The channels (1-based) unknown in one case: those its datalist ``labelled_classes`` leaves out
    (None: it labels every class) and the run's ``shared`` unlabelled ones; a name that is not one of
    the run's classes is refused, naming the case."""
    unknown = set(int(c) for c in shared)
    if labelled is not None:
        by_name = {class_key(c.name): channel for channel, c in enumerate(classes, 1)}
        strangers = [n for n in labelled if class_key(n) not in by_name]
        if strangers:
            raise UserError(f"case {case!r}: labelled_classes names {', '.join(map(repr, strangers))}, not among the classes "
                            f"({', '.join(c.name for c in classes)})")
        named = {by_name[class_key(n)] for n in labelled}
        unknown |= {c for c in range(1, len(classes) + 1) if c not in named}
    return tuple(sorted(unknown))


def labelled_by_case(labelled: Optional[Sequence[str]], classes: Sequence[ClassInfo], found: Set[int]) -> Set[int]:
    """The channels a training case says anything about: its ``labelled_classes`` where the datalist
    gives them (the names are checked by :func:`case_unlabelled`), else what its labels hold (``found``)."""
    if labelled is None:
        return set(found)
    names = {class_key(n) for n in labelled}
    return {channel for channel, c in enumerate(classes, 1) if class_key(c.name) in names}


def merged_mask(out_channels: int, unlabelled: Sequence[int]) -> List[bool]:
    """One sample's row of the ``(B, C)`` merged mask: background and its ``unlabelled`` channels."""
    return [channel == 0 or channel in set(unlabelled) for channel in range(out_channels)]


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
        self.register_buffer("shared_mask", torch.tensor(merged_mask(out_channels, unlabelled)), persistent=False)

    def reduce(self, logits: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` logits and ``(B, C)`` merged mask → ``(B, 1 + kept, H, W)``: channel 0 the
        log-sum-exp of each sample's merged channels, then every channel some sample labels (its logit;
        in a sample where it is merged, a logit ~1e4 below, so its probability is exactly 0 and the
        Dice and cross-entropy give it weight 0 there). Softmax of the result = merged probabilities."""
        logits = logits.float()
        mask = merged[:, :, None, None]
        joined = torch.logsumexp(logits.masked_fill(~mask, float("-inf")), dim=1, keepdim=True)
        kept = torch.nonzero(~merged.all(dim=0)).flatten()
        kept_logits = logits[:, kept]
        return torch.cat([joined, torch.where(mask[:, kept], joined.detach() - 1e4, kept_logits)], dim=1)

    def reduced_target(self, target: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
        """Targets re-indexed to :meth:`reduce`'s channels: a merged channel of that sample → 0."""
        kept = torch.nonzero(~merged.all(dim=0)).flatten()
        index = torch.zeros(merged.shape, dtype=torch.long, device=target.device)
        index[:, kept] = torch.arange(1, kept.numel() + 1, device=target.device)
        index = index.masked_fill(merged.to(target.device), 0)
        return torch.gather(index, 1, target.flatten(1)).view_as(target)

    def forward(self, output, target: torch.Tensor, teacher=None, merged: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The marginal loss of ``output`` against ``target``; ``merged`` ``(B, C)`` bool: each sample's
        background + unknown channels (None: the shared list for every sample). With the base model's
        ``teacher`` output (same form, computed without gradients) plus the distillation of the split
        within each sample's merged group."""
        output: TrainingOutput = as_training_output(output)
        if merged is None:
            merged = self.shared_mask.expand(target.shape[0], -1)
        merged = merged.to(device=target.device, dtype=torch.bool)
        reduced = TrainingOutput([self.reduce(h, merged) for h in output.heads], None)
        total, parts = super().forward(reduced, self.reduced_target(target, merged))
        if teacher is not None:
            teacher = as_training_output(teacher)
            distillation = sum(self.distillation(h, t, merged) for h, t in zip(output.heads, teacher.heads)) / len(output.heads)
            total = total + distillation
            parts["distillation"] = float(distillation.detach())
        return total, parts

    def distillation(self, logits: torch.Tensor, teacher_logits: torch.Tensor, merged: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean over pixels of KL(teacher ‖ model) of the distributions within each sample's merged group
        (background + its unknown classes): ``(B, C, H, W)`` logits each, ``(B, C)`` mask."""
        if merged is None:
            merged = self.shared_mask.expand(logits.shape[0], -1)
        mask = merged.to(device=logits.device, dtype=torch.bool)[:, :, None, None]
        model_log = torch.log_softmax(logits.float().masked_fill(~mask, float("-inf")), dim=1)
        teacher_log = torch.log_softmax(teacher_logits.float().masked_fill(~mask, float("-inf")), dim=1)
        terms = torch.where(mask, teacher_log.exp() * (teacher_log - model_log), torch.zeros((), device=logits.device))
        return terms.sum(dim=1).mean()

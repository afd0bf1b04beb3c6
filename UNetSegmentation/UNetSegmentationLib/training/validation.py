"""Validation during training: the Dice of every depth on the held-out slices, predicted as ``predict`` predicts.

Each depth is run through the engine's :class:`~UNetSegmentationLib.backends.torch_predictor.SlicePredictor`
(float32) and :func:`~UNetSegmentationLib.inference.pipeline.predict_slices`: the same gathering,
normalisation, padding and label decision as ``unetseg predict``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from UNetSegmentationLib.backends.torch_predictor import SlicePredictor
from UNetSegmentationLib.evaluation.metrics import dice_per_class
from UNetSegmentationLib.inference.pipeline import predict_slices
from UNetSegmentationLib.model.depth import depth_tag
from UNetSegmentationLib.model.metadata import ClassInfo, ModelMetadata
from UNetSegmentationLib.networks.registry import get_architecture, prune_depths_of
from UNetSegmentationLib.training.volumes import PreparedVolume

Depth = Optional[int]  # a prune depth, or None: the network's default output
#: per depth: (mean Dice over the classes, per-class Dice ``(classes,)`` averaged over the volumes; NaN: class absent)
DepthDice = Tuple[Optional[float], np.ndarray]


def validated_depths(metadata: ModelMetadata) -> List[Depth]:
    """Every prune depth of a prunable network, else ``[None]`` (the default output)."""
    return list(prune_depths_of(get_architecture(metadata.architecture), metadata.kwargs)) or [None]


def nanmean(values: Sequence[Any]) -> Optional[float]:
    """Mean of the finite values (``None`` and NaN left out); ``None`` when none is finite."""
    values = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


@dataclass
class Validation:
    """The Dice of every validated depth; the deepest depth is the one that scores the run."""

    by_depth: Dict[Depth, DepthDice]

    @property
    def main_depth(self) -> Depth:
        return max((d for d in self.by_depth if d is not None), default=None)

    @property
    def score(self) -> Optional[float]:
        """Mean Dice of the main depth (``None`` when no class could be scored)."""
        return self.by_depth[self.main_depth][0]

    def log_fields(self) -> Dict[str, Optional[float]]:
        """``val_dice`` and ``val_dice_L<d>`` for every prune depth: the columns of the epoch log."""
        fields = {"val_dice": self.score}
        for depth, (dice, _) in self.by_depth.items():
            if depth is not None:
                fields[f"val_dice_{depth_tag(depth)}"] = dice
        return fields

    def record(self, classes: Sequence[ClassInfo]) -> Dict[str, Any]:
        """The JSON record stored in the checkpoint: ``dice``, ``main_depth`` and per depth (``default``
        or ``L<d>``, :func:`~UNetSegmentationLib.model.depth.depth_tag`) the Dice and the per-class Dice by class name."""
        return {
            "dice": self.score,
            "main_depth": self.main_depth,
            "by_depth": {
                depth_tag(d): {"dice": dice, "per_class": {c.name: (None if not np.isfinite(v) else float(v)) for c, v in zip(classes, per_class)}}
                for d, (dice, per_class) in self.by_depth.items()
            },
        }


def validate(model: torch.nn.Module, metadata: ModelMetadata, volumes: Sequence[PreparedVolume], device: torch.device, batch_size: int,
             unlabelled: Sequence[int] = ()) -> Validation:
    """Per depth: the Dice of the held-out slices of ``volumes``; leaves ``model`` in training mode.
    ``unlabelled`` channels (absent from the labels: :mod:`.partial_labels`) are not scored (NaN), nor
    on each volume its own unknown classes: a class's Dice is the mean over the volumes that label it."""
    class_count = len(metadata.classes)
    results = {}
    for depth in validated_depths(metadata):
        predictor = SlicePredictor(model, metadata, device, depth)
        per_volume = []
        for volume in volumes:
            if not volume.val_slices.size:
                continue
            predicted = predict_slices(predictor, volume.slices, volume.mapping, volume.val_slices, batch_size, volume.context_step)
            truth = np.asarray(volume.targets[volume.val_slices])
            dice = np.asarray(dice_per_class(predicted, truth, class_count), dtype=float)
            dice[[c - 1 for c in {*unlabelled, *volume.unlabelled}]] = np.nan
            per_volume.append(dice)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a class absent from every held-out slice: NaN, left out of the mean
            per_class = np.nanmean(np.stack(per_volume), axis=0)
        results[depth] = (nanmean(per_class), per_class)
    model.train()
    return Validation(results)

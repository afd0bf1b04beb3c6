"""Cases read from disk and made ready for 2.5D sampling, and the held-out slice blocks.

Volumes stay in their stored dtype; 2.5D inputs are gathered through the engine's
:class:`~UNetSegmentationLib.inference.slicing.SliceGeometry` view and normalised batch by batch with the
checkpoint's :class:`~UNetSegmentationLib.inference.normalization.IntensityMapping` — exactly as ``predict``
does — so a model sees the same slices, in the same orientation and intensity scale, in training
and in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.normalization import IntensityMapping, fit_normalization
from UNetSegmentationLib.inference.slicing import SliceGeometry
from UNetSegmentationLib.model.metadata import Normalization
from UNetSegmentationLib.io.labels import LoadedCase, channel_targets


@dataclass
class PreparedVolume:
    """One case ready for sampling: raw voxels and channel-index targets, both as slice views."""

    name: str
    image_path: Path
    slices: np.ndarray  # [slice, row, column] view of the image voxels (stored dtype)
    targets: np.ndarray  # [slice, row, column] view of uint8 channel indices (0 = background)
    mapping: IntensityMapping
    geometry: SliceGeometry
    spacing: Tuple[float, float, float]  # mm along (slice, row, column)
    context_step: float = 1.0  # slices between the 2.5D neighbours: the run's slice distance / this volume's slice spacing
    source_spacing: Optional[Tuple[float, float, float]] = None  # the image's own spacing, where it was resampled (training/spacing.py)
    source_shape: Optional[Tuple[int, int]] = None  # its slices' (rows, columns) before that
    train_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    val_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    unlabelled: Tuple[int, ...] = ()  # channels unknown in this case, not background (training/partial_labels.case_unlabelled)

    @property
    def slice_count(self) -> int:
        return int(self.slices.shape[0])

    @property
    def axis_name(self) -> str:
        """The image axis the slices run along: ``i``, ``j`` or ``k``."""
        return "ijk"[self.geometry.slice_axis]


def held_out_blocks(slice_count: int, fraction: float, blocks: int = 3, gap: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``(train, held_out)`` slice indices: ``fraction`` of the slices held out in ``blocks`` contiguous
    blocks spread evenly along the volume, and ``gap`` slices on each side of a block used for neither
    (so no training input shows a held-out slice as a neighbour channel when ``gap >= context``).
    """
    if not 0 < fraction < 1:
        raise UserError(f"--val-slices must be a fraction between 0 and 1, got {fraction}")
    held = max(1, int(round(fraction * slice_count)))
    blocks = max(1, min(blocks, held))
    sizes = [held // blocks + (1 if b < held % blocks else 0) for b in range(blocks)]
    val = []
    for b, size in enumerate(sizes):
        centre = (b + 0.5) * slice_count / blocks
        start = int(np.clip(np.floor(centre - size / 2), 0, slice_count - size))
        val.extend(range(start, start + size))
    val = np.unique(val)
    excluded = np.zeros(slice_count, dtype=bool)
    for index in val:
        excluded[max(0, index - gap): index + gap + 1] = True
    train = np.flatnonzero(~excluded)
    if train.size == 0:
        raise UserError(f"holding out {held} of {slice_count} slices (with a gap of {gap}) leaves no slice to train on; lower --val-slices or --val-gap")
    return train, val


def prepare_volume(loaded: LoadedCase, normalization: Normalization, axis: Optional[int], lookup: np.ndarray) -> PreparedVolume:
    """Slice views of voxels and channel-index targets (``lookup`` maps label values to channels)."""
    targets = channel_targets(loaded.label, lookup)
    geometry = SliceGeometry.from_direction(loaded.direction, axis)
    spacing = loaded.spacing
    return PreparedVolume(
        name=loaded.case.name,
        image_path=Path(loaded.case.image),
        slices=geometry.slices_view(loaded.volume),
        targets=geometry.slices_view(targets),
        mapping=fit_normalization(normalization, loaded.volume),
        geometry=geometry,
        spacing=(spacing[geometry.slice_axis], spacing[geometry.row_axis], spacing[geometry.column_axis]),
    )

"""How one volume will be run: its model grid and its body boxes, decided once for ``predict`` and
``evaluate`` alike (so evaluation's Dice is what a user gets).

``--spacing model`` (the default) segments at the model's in-plane spacing with neighbours at its
slice distance (:mod:`.resolution`); ``--spacing native`` on the input's voxels as they are. The body
crop (:mod:`.body`) is on unless ``--no-crop``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from UNetSegmentationLib.inference.body import BodyBoxes, find_body
from UNetSegmentationLib.inference.resolution import ModelGrid, plan_model_grid
from UNetSegmentationLib.inference.slicing import SliceGeometry
from UNetSegmentationLib.model.metadata import ModelMetadata


@dataclass(frozen=True)
class VolumeLayout:
    """The model grid and body boxes of one volume, and what finding the body cost."""

    grid: ModelGrid
    bodies: BodyBoxes
    body_share: float  # fraction of the volume's pixels inside the boxes (1.0: no crop)
    body_s: float

    def describe(self) -> dict:
        """The ``start`` event's fields about it."""
        return {"resolution": self.grid.describe(), "body_share": round(self.body_share, 4)}


def slice_view_spacing(spacing: Sequence[float], geometry: SliceGeometry) -> tuple:
    """(slice, row, column) mm of the slice view of an image whose ITK spacing is ``spacing`` (i, j, k)."""
    return float(spacing[geometry.slice_axis]), float(spacing[geometry.row_axis]), float(spacing[geometry.column_axis])


def layout_volume(volume: np.ndarray, geometry: SliceGeometry, spacing: Sequence[float], metadata: ModelMetadata, at_model_spacing: bool, crop: bool) -> VolumeLayout:
    """The :class:`VolumeLayout` of a [k, j, i] ``volume`` with ITK ``spacing`` (i, j, k) mm."""
    view_spacing = slice_view_spacing(spacing, geometry)
    slices = geometry.slices_view(volume)
    grid = plan_model_grid(view_spacing, metadata, at_model_spacing)
    started = time.perf_counter()
    bodies = find_body(slices, metadata.normalization.kind, view_spacing) if crop else BodyBoxes.whole(slices.shape)
    return VolumeLayout(grid, bodies, bodies.share(slices.shape), time.perf_counter() - started)

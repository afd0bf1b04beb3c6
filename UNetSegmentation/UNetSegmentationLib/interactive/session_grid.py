"""A refinement session's volume on the model grid, made once when the session opens.

The slice axis, the in-plane orientation, the model's in-plane spacing, the 2.5D neighbour step and the
intensity normalisation are ``predict``'s, asked of the same places (:class:`~..inference.slicing.SliceGeometry`,
:func:`~..inference.resolution.plan_model_grid`, :func:`~..inference.normalization.fit_normalization`):
a click sees the slice exactly as the automatic run saw it. Every input slice is a slice of the session's
model grid (a click lands on the slice the user sees), resampled in-plane once, when the session opens,
and kept in raw intensities (the neighbour channels are interpolated between slices before the
normalisation, in the pipeline's order, :func:`~..inference.slicing.model_batch`), so a click costs one
slice's ``2c+1`` channels and no resampling of the volume.

Positions: a click's voxel index of the input (``ijk``) or its LPS millimetres are turned into the
model grid's continuous (slice, row, column) (:class:`~.guidance.Click`'s convention); results come
back as probabilities on the model grid and leave as masks on the input slice's exact pixels
(bilinear, then 0.5, as ``predict`` resamples probabilities before deciding).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.layout import slice_view_spacing
from UNetSegmentationLib.inference.normalization import IntensityMapping, fit_normalization
from UNetSegmentationLib.inference.resolution import ModelGrid, bilinear, plan_model_grid
from UNetSegmentationLib.inference.slicing import SliceGeometry, gather_context
from UNetSegmentationLib.interactive.click_points import IJK, ClickPoints
from UNetSegmentationLib.io.volumes import ijk_to_lps
from UNetSegmentationLib.model.metadata import ModelMetadata

#: input slices resampled at once when the session opens (bounds the float32 scratch memory)
_CHUNK = 16
#: a probability at or above this is the object (the label decision of a one-class sigmoid model)
THRESHOLD = 0.5

Position = Tuple[float, float, float]


class SessionGrid:
    """One volume as a session sees it: its slices on the model grid, and the maps between the grids.

    Args:
        image: the input (its direction, spacing and origin place clicks given in LPS).
        volume: its voxels, ``[k, j, i]`` (any scalar type; only read).
        metadata: the interactive model's metadata (normalisation, spacing, slice distance, context).
        axis: the slice axis when not predict's automatic choice (``--axis``).
    """

    def __init__(self, image: sitk.Image, volume: np.ndarray, metadata: ModelMetadata, axis: Optional[int] = None) -> None:
        self.size = tuple(int(s) for s in image.GetSize())  # i, j, k
        self.geometry = SliceGeometry.from_direction(image.GetDirection(), axis)
        self.spacing = slice_view_spacing(image.GetSpacing(), self.geometry)  # (slice, row, column) mm
        self.grid: ModelGrid = plan_model_grid(self.spacing, metadata)
        self.context = int(metadata.context)
        self.lps_to_ijk = np.linalg.inv(ijk_to_lps(image))
        slices = self.geometry.slices_view(volume)
        self.slice_count = int(slices.shape[0])
        self.input_size: Tuple[int, int] = (int(slices.shape[1]), int(slices.shape[2]))
        self.model_size: Tuple[int, int] = self.grid.model_size(self.input_size)
        self.mapping: IntensityMapping = fit_normalization(metadata.normalization, volume)
        self.raw = np.empty((self.slice_count,) + self.model_size, dtype=np.float32)  # raw intensities on the model grid
        for start in range(0, self.slice_count, _CHUNK):
            chunk = np.asarray(slices[start:start + _CHUNK], dtype=np.float32)
            self.raw[start:start + _CHUNK] = bilinear(chunk, self.model_size) if chunk.shape[1:] != self.model_size else chunk

    # -- what the network sees -----------------------------------------------------------------------

    @property
    def model_spacing(self) -> Tuple[float, float]:
        """(row, column) mm of a model-grid pixel (the input's where the model records no spacing)."""
        rows, columns = self.input_size
        model_rows, model_columns = self.model_size
        return self.spacing[1] * rows / model_rows, self.spacing[2] * columns / model_columns

    @property
    def slice_spacing(self) -> float:
        """mm between two slices of the session's grid (the input's slices)."""
        return float(self.spacing[0])

    def channels(self, slices: Sequence[int]) -> np.ndarray:
        """``(N, 2c+1, rows', columns')`` normalised float32 image channels of ``slices``: neighbours at the
        model's slice distance (interpolated between slices where it is not a whole number of them)."""
        return self.mapping(gather_context(self.raw, np.asarray(slices), self.context, self.grid.context_step))

    # -- positions -----------------------------------------------------------------------------------

    def position(self, click: ClickPoints, point: Sequence[float]) -> Position:
        """The model-grid (slice, row, column) of one of ``click`` 's points; a :class:`UserError` for a
        point outside the volume."""
        ijk = np.asarray(point, dtype=np.float64)
        if click.space != IJK:
            ijk = (self.lps_to_ijk @ np.append(ijk, 1.0))[:3]
        if np.any(ijk < -0.5) or np.any(ijk > np.asarray(self.size) - 0.5):
            named = ", ".join(f"{v:g}" for v in point)
            where = f"voxel index [{', '.join(f'{v:.1f}' for v in ijk)}]" if click.space != IJK else "it"
            raise UserError(f"the click at {click.space} [{named}] lies outside the volume ({where}; the volume has "
                            f"{self.size[0]}x{self.size[1]}x{self.size[2]} voxels, indices 0..{self.size[0] - 1}, 0..{self.size[1] - 1}, 0..{self.size[2] - 1})")
        geometry = self.geometry
        row, column = float(ijk[geometry.row_axis]), float(ijk[geometry.column_axis])
        rows, columns = self.input_size
        if geometry.flip_rows:
            row = rows - 1 - row
        if geometry.flip_columns:
            column = columns - 1 - column
        slice_position = min(max(float(ijk[geometry.slice_axis]), 0.0), self.slice_count - 1.0)
        return slice_position, self._to_model(row, rows, self.model_size[0]), self._to_model(column, columns, self.model_size[1])

    @staticmethod
    def _to_model(index: float, count: int, size: int) -> float:
        """An input pixel index on the model grid (pixel centres as in ``align_corners=False``), kept inside it."""
        return min(max((index + 0.5) * size / count - 0.5, 0.0), size - 1.0)

    # -- between the grids -----------------------------------------------------------------------------

    def input_masks(self, probabilities: np.ndarray) -> np.ndarray:
        """``(N, rows', columns')`` model-grid probabilities → ``(N, rows, columns)`` bool masks on the input slices."""
        resampled = bilinear(probabilities, self.input_size) if probabilities.shape[-2:] != self.input_size else probabilities
        return resampled >= THRESHOLD

    def model_probabilities(self, masks: np.ndarray) -> np.ndarray:
        """``(N, rows, columns)`` masks on the input slices → ``(N, rows', columns')`` float32 on the model grid
        (a mask given to the network as the previous-mask channel)."""
        values = np.asarray(masks, dtype=np.float32)
        return bilinear(values, self.model_size) if values.shape[-2:] != self.model_size else values.copy()

    def slice_axis_of_array(self) -> int:
        """The numpy axis of a ``[k, j, i]`` array that the slices run along."""
        return 2 - self.geometry.slice_axis

    def check_handled(self, source: str) -> None:
        """A volume the session cannot refine, in one message: fewer model-grid pixels than a click can mean."""
        if min(self.model_size) < 8:
            raise UserError(f"{source}: its slices are {self.input_size[0]}x{self.input_size[1]} pixels, {self.model_size[0]}x{self.model_size[1]} at the "
                            f"model's spacing of {self.model_spacing[0]:.3g}x{self.model_spacing[1]:.3g} mm: too small to refine (at least 8x8 model pixels)")

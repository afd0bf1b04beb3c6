"""The label decision on the input's pixels, made from probabilities on the model's grid, resampling one
channel instead of all of them.

The labels are those of the class probabilities resampled bilinearly onto the input's pixels
(:func:`~.resolution.bilinear`) and decided there (:func:`~.decision.decided_in_numpy`). A bilinear
sample is a convex blend of the (up to) four model pixels around the input pixel, and a shared choice
survives any convex blend (:mod:`.decision`): where those four model pixels choose the same channel, so
does the input pixel, and its confidence is the same blend of their confidences. So the choice is made
once on the model grid (K × 128 × 128 for the bundled model on a 512² slice, not K × 512 × 512), copied
onto the input's pixels, the confidence alone is resampled, and the K channels are resampled only at the
input pixels whose four model pixels disagree (the edges of structures: a few per cent of a slice). The
values there are computed with :func:`~.resolution.bilinear`'s own operations in its order, so labels
and confidence are those of resampling every channel (a float rounding that turns a blend into an exact
tie between two channels is the only way to differ; on the clinical CT no voxel does). On the
512 × 512 × 300 clinical CT this took the probabilities' resampling and decision from 1.0 s to 0.1 s
(BENCHMARKS.md, *Clinical CT speed*).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from UNetSegmentationLib.inference.decision import decided_in_numpy
from UNetSegmentationLib.inference.resolution import Size, axis_weights, bilinear

Weights = Tuple[np.ndarray, np.ndarray, np.ndarray]  # first source pixel, second, weight of the second


@dataclass
class GridDecision:
    """One slice's ``(K, h, w)`` model-grid ``probabilities`` decided on ``(rows, columns)`` input pixels:
    ``chosen`` (uint8 channel) and ``confidence`` (the chosen channel's probability) there, and what
    :meth:`probabilities_at` needs to give any input pixel's K resampled probabilities later (the
    thin-slice path blends two positions' channels where their choices differ, :mod:`.model_slices`)."""

    probabilities: np.ndarray
    rows: Weights
    columns: Weights
    chosen: np.ndarray = field(repr=False)
    confidence: np.ndarray = field(repr=False)
    resample_s: float = 0.0  # seconds spent resampling the confidence
    _pixels: Optional[np.ndarray] = field(default=None, repr=False)  # (h·w, K): the probabilities channels last

    def probabilities_at(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """``(K, n)`` float32: the probabilities :func:`~.resolution.bilinear` gives input pixels ``(ys, xs)``,
        computed with its operations in its order (columns first, then rows), so the very same values; the
        K channels of each model pixel gathered together (channels last: one gather per pixel, not K)."""
        if self._pixels is None:
            self._pixels = np.ascontiguousarray(np.moveaxis(self.probabilities, 0, -1)).reshape(-1, len(self.probabilities))
        width = self.probabilities.shape[2]
        first_row, second_row, row_weight = (a[ys] for a in self.rows)
        first_column, second_column, column_weight = (a[xs] for a in self.columns)
        column_weight, row_weight = column_weight[:, None], row_weight[:, None]

        def gathered(row: np.ndarray, column: np.ndarray) -> np.ndarray:
            return np.take(self._pixels, row * width + column, axis=0)

        upper_left = gathered(first_row, first_column)
        upper = upper_left + column_weight * (gathered(first_row, second_column) - upper_left)
        lower_left = gathered(second_row, first_column)
        lower = lower_left + column_weight * (gathered(second_row, second_column) - lower_left)
        return (upper + row_weight * (lower - upper)).T


def decide_on_input_grid(probabilities: np.ndarray, size: Size) -> GridDecision:
    """The decision of ``(K, h, w)`` float32 model-grid ``probabilities`` on ``size`` (rows, columns) input
    pixels: the labels and confidence of ``decided_in_numpy(bilinear(probabilities, size))``, resampling the
    chosen channel's probability and, where the model pixels around an input pixel disagree, its K channels."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    h, w = probabilities.shape[1:]
    rows, columns = axis_weights(h, size[0]), axis_weights(w, size[1])
    if (h, w) == tuple(size) or len(probabilities) == 1:  # nothing to resample, or one channel: resampled whole
        started = time.perf_counter()
        resampled = probabilities if (h, w) == tuple(size) else bilinear(probabilities, size)
        resample_s = time.perf_counter() - started
        chosen, confidence = (a[0] for a in decided_in_numpy(resampled[None]))
        return GridDecision(probabilities, rows, columns, chosen, confidence, resample_s)
    model_chosen, model_confidence = (a[0] for a in decided_in_numpy(probabilities[None]))
    # each model pixel with the pixels below, right and below-right of it (edges held, as the sampling holds them)
    below = np.concatenate([model_chosen[1:], model_chosen[-1:]], axis=0)
    shared = (model_chosen == below) & (model_chosen == np.concatenate([model_chosen[:, 1:], model_chosen[:, -1:]], axis=1))
    shared &= below == np.concatenate([below[:, 1:], below[:, -1:]], axis=1)
    chosen = _at_upper_left(model_chosen, rows, columns)
    started = time.perf_counter()
    confidence = bilinear(model_confidence[None], size)[0]
    resample_s = time.perf_counter() - started
    decision = GridDecision(probabilities, rows, columns, chosen, confidence, resample_s)
    ys, xs = np.nonzero(_at_upper_left(~shared, rows, columns))
    if ys.size:
        mixed_chosen, mixed_confidence = decided_in_numpy(decision.probabilities_at(ys, xs)[None, :, :, None])
        chosen[ys, xs] = mixed_chosen.reshape(-1)
        confidence[ys, xs] = mixed_confidence.reshape(-1)
    return decision


def _at_upper_left(model_values: np.ndarray, rows: Weights, columns: Weights) -> np.ndarray:
    """``(rows, columns)``: each input pixel's value of the model pixel at the upper left of its four. Rows taken,
    then columns (two one-axis gathers: a tenth of the time of one ``np.ix_`` gather on a 441 × 500 box)."""
    return model_values[rows[0]][:, columns[0]]

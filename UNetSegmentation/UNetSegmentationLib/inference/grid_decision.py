"""The label decision on the input's pixels, made from probabilities on the model's grid, resampling one
channel instead of all of them.

The labels are those of the class probabilities resampled bilinearly onto the input's pixels
(:func:`~.resolution.bilinear`) and decided there (:func:`~.decision.decided_in_numpy`). A bilinear
sample is a convex blend of the (up to) four model pixels around the input pixel, and a shared choice
survives any convex blend (:mod:`.decision`): where those four model pixels choose the same channel, so
does the input pixel, and its confidence is the same blend of their confidences. So the choice is made
once on the model grid (K × 128 × 128 for the bundled model on a 512² slice, not K × 512 × 512), copied
onto the input's pixels, the confidence alone is resampled, and the channels are resampled only at the
input pixels whose four model pixels disagree (the edges of structures: a few per cent of a slice): the two
their cell chooses where no other can win there (:func:`_decided_where_mixed`), else all K. The
values there are computed with :func:`~.resolution.bilinear`'s own operations in its order, so labels
and confidence are those of resampling every channel (a float rounding that turns a blend into an exact
tie between two channels is the only way to differ; on the clinical CT no voxel does). On the
512 × 512 × 300 clinical CT this took the probabilities' resampling and decision from 1.0 s to 0.1 s
(BENCHMARKS.md, *Clinical CT speed*).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np

from UNetSegmentationLib.inference.decision import decided_in_numpy
from UNetSegmentationLib.inference.resolution import Size, axis_weights, bilinear

Weights = Tuple[np.ndarray, np.ndarray, np.ndarray]  # first source pixel, second, weight of the second

Corners = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # flat model pixels: upper left, upper right, lower left, lower right

#: how far below half the two corner choices' smallest sum every other channel must stay for those two alone to
#: decide a mixed pixel: far above the float32 rounding of a bilinear sample (a few 1e-8), far below a deciding gap
MARGIN = 1e-5


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

    @property
    def pixels(self) -> np.ndarray:
        """``(h·w, K)``: the model-grid probabilities, channels last (made once)."""
        if self._pixels is None:
            self._pixels = np.ascontiguousarray(np.moveaxis(self.probabilities, 0, -1)).reshape(-1, len(self.probabilities))
        return self._pixels

    def corners(self, ys: np.ndarray, xs: np.ndarray) -> Corners:
        """The four model pixels (flat indices) around input pixels ``(ys, xs)``: upper left, upper right, lower left,
        lower right, as :func:`~.resolution.bilinear` samples them (held at the edges)."""
        width = self.probabilities.shape[2]
        first_row, second_row = self.rows[0][ys] * width, self.rows[1][ys] * width
        first_column, second_column = self.columns[0][xs], self.columns[1][xs]
        return first_row + first_column, first_row + second_column, second_row + first_column, second_row + second_column

    def probabilities_at(self, ys: np.ndarray, xs: np.ndarray, corners: Optional[Corners] = None) -> np.ndarray:
        """``(K, n)`` float32: the probabilities :func:`~.resolution.bilinear` gives input pixels ``(ys, xs)``,
        computed with its operations in its order (columns first, then rows), so the very same values; the
        K channels of each model pixel gathered together (channels last: one gather per pixel, not K).
        ``corners``: :meth:`corners` of these pixels, when known."""
        corners = self.corners(ys, xs) if corners is None else corners
        return self._blended(ys, xs, [np.take(self.pixels, corner, axis=0) for corner in corners]).T

    def channels_at(self, ys: np.ndarray, xs: np.ndarray, channels: np.ndarray, corners: Optional[Corners] = None) -> np.ndarray:
        """``(n, c)`` float32: channels ``channels[i]`` (``(n, c)``) of :meth:`probabilities_at` at each input pixel
        ``(ys[i], xs[i])`` (the same operations on those channels only, so the same values)."""
        corners = self.corners(ys, xs) if corners is None else corners
        return self._blended(ys, xs, [self.pixels[corner[:, None], channels] for corner in corners])

    def _blended(self, ys: np.ndarray, xs: np.ndarray, corners: Sequence[np.ndarray]) -> np.ndarray:
        """The bilinear blend of the four ``corners`` ' values (``(n, ...)``) at ``(ys, xs)``: columns first, then rows."""
        column_weight, row_weight = self.columns[2][xs], self.rows[2][ys]
        if corners[0].ndim == 2:
            column_weight, row_weight = column_weight[:, None], row_weight[:, None]
        upper_left, upper_right, lower_left, lower_right = corners
        upper = upper_left + column_weight * (upper_right - upper_left)
        lower = lower_left + column_weight * (lower_right - lower_left)
        return upper + row_weight * (lower - upper)


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
        chosen[ys, xs], confidence[ys, xs] = _decided_where_mixed(decision, model_chosen, ys, xs)
    return decision


def _decided_where_mixed(decision: GridDecision, model_chosen: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(chosen, confidence)`` at the input pixels ``(ys, xs)`` whose four model pixels disagree. Most lie in a
    cell whose corners choose two channels, ``a`` and ``b``, between one structure and the next: there, where every
    other channel at every corner stays below half the smallest corner sum ``P_a + P_b`` (by :data:`MARGIN`), no
    other channel can win (a bilinear sample's ``a`` and ``b`` sum to at least that smallest corner sum, so the
    larger of them is at least half of it, while another channel is at most its largest corner value), and the
    two channels alone decide, with the values all K would give (:meth:`GridDecision.channels_at`; a tie goes to the
    lower channel, ``a``, as :func:`~.decision.decided_in_numpy` breaks it). The other pixels resample all K channels.
    On the 512 × 512 × 300 clinical CT this took the 68 positions' decisions from 0.89 to 0.71 s of CPU."""
    corners = decision.corners(ys, xs)
    _, first_pixel, pixel_cell = np.unique(corners[0], return_index=True, return_inverse=True)
    cell_corners = np.stack([corner[first_pixel] for corner in corners])  # (4, cells)
    corner_chosen = model_chosen.reshape(-1)[cell_corners]
    first, second = corner_chosen.min(axis=0), corner_chosen.max(axis=0)  # a cell of two choices: a < b
    two = ((corner_chosen == first) | (corner_chosen == second)).all(axis=0)
    candidates = np.flatnonzero(two)
    values = decision.pixels[cell_corners[:, candidates]]  # (4, candidates, K)
    pair = [np.take_along_axis(values, channel[candidates][None, :, None].astype(np.intp), axis=2)[..., 0] for channel in (first, second)]
    for channel in (first, second):
        np.put_along_axis(values, channel[candidates][None, :, None].astype(np.intp), -np.inf, axis=2)
    two[candidates] = values.max(axis=(0, 2)) < (pair[0] + pair[1]).min(axis=0) / 2 - MARGIN
    chosen, confidence = np.empty(len(ys), np.uint8), np.empty(len(ys), np.float32)
    by_two = two[pixel_cell]
    at = np.flatnonzero(by_two)
    pair_channels = np.stack([first[pixel_cell[at]], second[pixel_cell[at]]], axis=1)
    pair_values = decision.channels_at(ys[at], xs[at], pair_channels, tuple(corner[at] for corner in corners))
    a, b, value_a, value_b = pair_channels[:, 0], pair_channels[:, 1], pair_values[:, 0], pair_values[:, 1]
    chosen[at] = np.where(value_b > value_a, b, a)  # a < b: a tie is a's
    confidence[at] = np.maximum(value_a, value_b)
    rest = np.flatnonzero(~by_two)
    if rest.size:
        resampled = decision.probabilities_at(ys[rest], xs[rest], tuple(corner[rest] for corner in corners))
        rest_chosen, rest_confidence = decided_in_numpy(resampled[None, :, :, None])
        chosen[rest], confidence[rest] = rest_chosen.reshape(-1), rest_confidence.reshape(-1)
    return chosen, confidence


def _at_upper_left(model_values: np.ndarray, rows: Weights, columns: Weights) -> np.ndarray:
    """``(rows, columns)``: each input pixel's value of the model pixel at the upper left of its four. Rows taken,
    then columns (two one-axis gathers: a tenth of the time of one ``np.ix_`` gather on a 441 × 500 box)."""
    return model_values[rows[0]][:, columns[0]]

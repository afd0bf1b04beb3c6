"""The body in a scan: where the network has to look, slice by slice.

Air around the patient is a third to two thirds of a clinical CT slice, and the slices beyond the
patient hold nothing at all. :func:`find_body` finds the body conservatively and returns one bounding
box per slice (:class:`BodyBoxes`); the pipeline runs the network only inside those boxes and only on
slices that have one, and everything outside is background.

How, on a coarse copy of the volume (about 3 mm pixels, and every slice of thin slices about 3 mm
apart, built slice by slice: a few MB, never a full-resolution mask):

- CT (``ct`` normalisation): voxels above :data:`CT_BODY_HU` (soft tissue and denser; fat is about
  -100 HU, air -1000; the lungs are enclosed by the chest wall, so the box still covers them);
- MR: voxels above half of Otsu's threshold of the volume (the background of an MR is dark noise; half
  the threshold keeps dark tissue at the body's edge);
- then 3D connected components (SimpleITK): the largest, and every other at least
  :data:`KEPT_COMPONENT_SHARE` of its size (arms held beside the body are separate components in many
  scans, and a model may label them: they are kept); then a margin of :data:`MARGIN_MM` around all of it,
  in-plane and along the slice axis.

Nothing is cropped when no body is found (a phantom, a synthetic volume, an uncalibrated scan whose
every voxel is above the threshold gives one box per slice covering it anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

#: CT: the body is what is denser than this (HU)
CT_BODY_HU = -500.0
#: components at least this share of the largest one's voxels are body too (arms, legs)
KEPT_COMPONENT_SHARE = 0.05
#: added around the body found, in mm (in-plane and along the slice axis)
MARGIN_MM = 10.0
#: the coarse copy's pixels are about this size (mm)
COARSE_MM = 3.0

Box = Tuple[int, int, int, int]  # first row, end row, first column, end column (ends exclusive)


@dataclass(frozen=True)
class BodyBoxes:
    """One bounding box per slice of a [slice, row, column] view: ``boxes[s] = (r0, r1, c0, c1)``, ends
    exclusive; a slice without body has ``r0 == r1``."""

    boxes: np.ndarray  # (slices, 4) int64

    @staticmethod
    def whole(shape: Sequence[int]) -> "BodyBoxes":
        """No crop: every slice whole."""
        slices, rows, columns = (int(s) for s in shape)
        return BodyBoxes(np.tile(np.array([0, rows, 0, columns], dtype=np.int64), (slices, 1)))

    @property
    def slices_with_body(self) -> np.ndarray:
        return np.flatnonzero(self.boxes[:, 1] > self.boxes[:, 0])

    def union(self, indices: Sequence[int]) -> Optional[Box]:
        """The smallest box holding the boxes of ``indices`` (None when none of them has body)."""
        chosen = self.boxes[np.asarray(indices, dtype=int)]
        chosen = chosen[chosen[:, 1] > chosen[:, 0]]
        if chosen.size == 0:
            return None
        return int(chosen[:, 0].min()), int(chosen[:, 1].max()), int(chosen[:, 2].min()), int(chosen[:, 3].max())

    def share(self, shape: Sequence[int]) -> float:
        """The fraction of the volume's pixels inside the boxes (what the network has to look at)."""
        areas = (self.boxes[:, 1] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 2])
        return float(areas.sum()) / float(np.prod([int(s) for s in shape]))


def _coarse_factor(spacing: float) -> int:
    return max(1, int(COARSE_MM // spacing)) if spacing > 0 else 1


def coarse_volume(slices: np.ndarray, factors: Tuple[int, int], chunk: int = 16) -> np.ndarray:
    """``(slices, ⌈rows/fr⌉, ⌈columns/fc⌉)`` float32: block means of each slice (edges repeated to whole
    blocks), ``chunk`` slices at a time. Summed as ``fr`` strided row sets, then ``fc`` column sets, each
    added whole: three times faster than ``mean`` over the two block axes of a reshaped slab, the same values."""
    fr, fc = factors
    count, rows, columns = slices.shape
    out = np.empty((count, -(-rows // fr), -(-columns // fc)), dtype=np.float32)
    pad = ((0, 0), (0, (-rows) % fr), (0, (-columns) % fc))
    for start in range(0, count, chunk):
        slab = np.asarray(slices[start:start + chunk], dtype=np.float32)
        if pad[1][1] or pad[2][1]:
            slab = np.pad(slab, pad, mode="edge")
        row_sums = slab[:, 0::fr].copy()
        for offset in range(1, fr):
            row_sums += slab[:, offset::fr]
        sums = row_sums[:, :, 0::fc].copy()
        for offset in range(1, fc):
            sums += row_sums[:, :, offset::fc]
        out[start:start + slab.shape[0]] = sums * np.float32(1.0 / (fr * fc))
    return out


def body_mask(coarse: np.ndarray, kind: str) -> np.ndarray:
    """Body voxels of a coarse volume (bool, same shape): thresholded, components kept as the module says."""
    import SimpleITK as sitk

    if kind == "ct":
        threshold = CT_BODY_HU
    else:
        otsu = sitk.OtsuThresholdImageFilter()
        otsu.SetInsideValue(0)
        otsu.SetOutsideValue(1)
        otsu.Execute(sitk.GetImageFromArray(coarse))
        threshold = 0.5 * otsu.GetThreshold()
    mask = coarse > threshold
    if not mask.any():
        return mask
    components = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))), sortByObjectSize=True)
    labels = sitk.GetArrayViewFromImage(components)
    sizes = np.bincount(labels.reshape(-1))[1:]
    kept = np.flatnonzero(sizes >= KEPT_COMPONENT_SHARE * sizes[0]) + 1
    return np.isin(labels, kept)


def _grown_boxes(mask: np.ndarray, radius: Tuple[int, int, int]) -> np.ndarray:
    """``(slices, 4)`` boxes (first row, end row, first column, end column; ends exclusive; empty where
    first ≥ end) of ``mask`` dilated by a box of ``radius`` (slices, rows, columns) coarse pixels, found
    without dilating the mask: a box dilation is separable, so each slice's dilated box is the union of
    the boxes of the slices within ``radius[0]``, each grown by the in-plane radius (clipped to the
    slice), exactly what the boxes of the dilated mask are."""
    count, rows, columns = mask.shape
    row_hits, column_hits = mask.any(axis=2), mask.any(axis=1)
    has = row_hits.any(axis=1)
    boxes = np.stack([
        np.argmax(row_hits, axis=1) - radius[1],
        rows - np.argmax(row_hits[:, ::-1], axis=1) + radius[1],
        np.argmax(column_hits, axis=1) - radius[2],
        columns - np.argmax(column_hits[:, ::-1], axis=1) + radius[2],
    ], axis=1).astype(np.int64)
    boxes[~has] = (rows, 0, columns, 0)  # neutral in a union
    grown = boxes.copy()
    for shift in range(1, radius[0] + 1):
        for near, far in ((grown[shift:], boxes[:-shift]), (grown[:-shift], boxes[shift:])):
            np.minimum(near[:, 0::2], far[:, 0::2], out=near[:, 0::2])
            np.maximum(near[:, 1::2], far[:, 1::2], out=near[:, 1::2])
    return np.clip(grown, 0, [rows, rows, columns, columns])


def find_body(slices: np.ndarray, kind: str, spacing: Sequence[float]) -> BodyBoxes:
    """The body's box in every slice of a [slice, row, column] view whose pixels are ``spacing``
    (slice, row, column) mm; ``kind`` is the model's normalisation (``ct`` or ``mr``). The coarse copy
    takes every ``n``-th slice too (about :data:`COARSE_MM` apart: thin slices are not all read), and a
    slice between two coarse ones gets the union of their boxes."""
    count, rows, columns = slices.shape
    factors = (_coarse_factor(spacing[1]), _coarse_factor(spacing[2]))
    step = _coarse_factor(spacing[0])
    mask = body_mask(coarse_volume(slices[::step], factors), kind)
    if not mask.any():
        return BodyBoxes.whole(slices.shape)
    coarse_spacing = (spacing[0] * step, spacing[1] * factors[0], spacing[2] * factors[1])
    radius = tuple(int(np.ceil(MARGIN_MM / s)) if s > 0 else 0 for s in coarse_spacing)
    grown = _grown_boxes(mask, radius)
    if step > 1:  # each slice: the union of the coarse slices at or around it
        index = np.arange(count)
        lower, upper = grown[index // step], grown[np.minimum(-(-index // step), len(grown) - 1)]
        grown = np.concatenate([np.minimum(lower[:, 0::2], upper[:, 0::2]), np.maximum(lower[:, 1::2], upper[:, 1::2])], axis=1)[:, [0, 2, 1, 3]]
    boxes = np.zeros((count, 4), dtype=np.int64)
    found = (grown[:, 1] > grown[:, 0]) & (grown[:, 3] > grown[:, 2])
    scale = np.array([factors[0], factors[0], factors[1], factors[1]])
    boxes[found] = np.minimum(grown[found] * scale, [rows, rows, columns, columns])
    return BodyBoxes(boxes)

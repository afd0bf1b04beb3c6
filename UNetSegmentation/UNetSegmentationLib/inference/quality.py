"""The quality signals of a segmentation, computed from the arrays in memory: one module for all of them.

Why one module (issue 22): the review ranking's slice score (:mod:`.review`) and a cohort's case
confidence (its manifest record, the QC report) are two readings of the same thing, the probability
of each chosen label, and were computed in two places with two rules. Both take the labels and the
confidence the pipeline decided anyway (a :class:`~.pipeline.SliceObserver` sees every batch): no
extra network call, nothing read back from disk.

- **Slice score** (:func:`boundary_uncertainty`, the ranking's :data:`DEFAULT_SCORE`): the mean
  uncertainty (1 − probability of the chosen label) over the voxels near predicted label boundaries;
  where a segmentation is wrong it is mostly wrong at its edges, and there the network hesitates.
  ``bench/review_ranking.py`` compares it with the other candidates of :data:`UNCERTAINTY_SCORES`
  against per-slice Dice on the real CT (BENCHMARKS.md, "Review ranking").
- **Case confidence** (:class:`CaseConfidence`): the mean probability of the chosen label over every
  voxel given a class (not background), and the slices seen.
- **Segment volumes** (:func:`segment_volumes_ml`): each class's voxels times the voxel volume, from
  the label array.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np

#: voxels this far (in pixels, either side) from a change of predicted label count as boundary voxels:
#: the pixels on both sides of the change (a wider band dilutes the errors with confident pixels; bench/review_ranking.py)
BOUNDARY_BAND = 1

#: ``(labels (B, rows, columns), confidence (B, rows, columns)) → (B,)`` uncertainty per slice, higher = review sooner
SliceScore = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``(B, rows, columns)`` bool grown by ``steps`` pixels in each in-plane direction (a square); ``mask`` itself
    for none (the review's band of one pixel: no copy of the batch's pixels)."""
    if steps == 0:
        return mask
    grown = mask.copy()
    for _ in range(steps):
        step = grown.copy()
        step[:, 1:, :] |= grown[:, :-1, :]
        step[:, :-1, :] |= grown[:, 1:, :]
        grown = step.copy()
        grown[:, :, 1:] |= step[:, :, :-1]
        grown[:, :, :-1] |= step[:, :, 1:]
    return grown


def boundary_band(labels: np.ndarray, band: int = BOUNDARY_BAND) -> np.ndarray:
    """``(B, rows, columns)`` bool: the pixels within ``band`` pixels of a change of label (both sides)."""
    change = np.zeros(labels.shape, dtype=bool)
    down = labels[:, 1:, :] != labels[:, :-1, :]
    across = labels[:, :, 1:] != labels[:, :, :-1]
    for part, step in ((change[:, 1:, :], down), (change[:, :-1, :], down), (change[:, :, 1:], across), (change[:, :, :-1], across)):
        np.logical_or(part, step, out=part)  # in place: no temporary per direction
    return _dilate(change, max(band - 1, 0))


def _masked_uncertainty(confidence: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(B,)`` mean of 1 − ``confidence`` over ``mask`` per slice; 0 where the mask is empty. Only the masked
    pixels are gathered and subtracted (the band is a few per cent of a slice), summed in float64."""
    count = np.count_nonzero(mask, axis=(1, 2))
    total = np.array([(1.0 - plane[inside]).sum(dtype=np.float64) for plane, inside in zip(confidence, mask)], dtype=np.float64)
    return np.divide(total, count, out=np.zeros(len(confidence), dtype=np.float64), where=count > 0)


def boundary_uncertainty(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Mean 1 − confidence over the voxels near predicted boundaries (0 for a slice of one label)."""
    return _masked_uncertainty(confidence, boundary_band(labels))


def wide_boundary_uncertainty(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """As :func:`boundary_uncertainty` over a band of 3 pixels either side of each change."""
    return _masked_uncertainty(confidence, boundary_band(labels, 3))


def boundary_total_uncertainty(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """The boundary voxels' 1 − confidence summed, per voxel of the slice (more doubtful edge, higher)."""
    band = boundary_band(labels)
    return np.where(band, 1.0 - confidence, 0.0).sum(axis=(1, 2), dtype=np.float64) / (labels.shape[1] * labels.shape[2])


def foreground_uncertainty(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Mean 1 − confidence over the voxels labelled with a class (0 for an empty slice)."""
    return _masked_uncertainty(confidence, labels != 0)


def slice_uncertainty(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Mean 1 − confidence over the whole slice."""
    return (1.0 - confidence).mean(axis=(1, 2), dtype=np.float64)


#: the candidates the benchmark compares; the ranking uses :data:`DEFAULT_SCORE`
UNCERTAINTY_SCORES: Dict[str, SliceScore] = {
    "boundary": boundary_uncertainty,
    "boundary-3px": wide_boundary_uncertainty,
    "boundary-total": boundary_total_uncertainty,
    "foreground": foreground_uncertainty,
    "slice": slice_uncertainty,
}
DEFAULT_SCORE = "boundary"




class CaseConfidence:
    """A slice observer (:class:`~UNetSegmentationLib.inference.pipeline.SliceObserver`): the slices seen
    and the mean probability of the chosen label over the voxels given a class (not background)."""

    def __init__(self) -> None:
        self.slices = 0
        self._sum = 0.0
        self._count = 0

    def observe(self, indices: np.ndarray, labels: np.ndarray, confidence: np.ndarray) -> None:
        self.slices += len(indices)
        labelled = np.asarray(labels) != 0
        self._count += int(np.count_nonzero(labelled))
        self._sum += float(np.asarray(confidence)[labelled].sum(dtype=np.float64))

    @property
    def mean(self) -> Optional[float]:
        """The mean confidence over labelled voxels (None when none was labelled)."""
        return round(self._sum / self._count, 4) if self._count else None


def segment_volumes_ml(labels: np.ndarray, spacing: Sequence[float], classes: Sequence) -> Dict[str, float]:
    """Each class's volume in millilitres in the label array ``labels`` (voxels × voxel volume of ``spacing`` mm);
    ``classes``: the model's :class:`~UNetSegmentationLib.model.metadata.ClassInfo` list."""
    top = max((c.value for c in classes), default=0)
    counts = np.bincount(np.asarray(labels).ravel(), minlength=top + 1)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {c.name: round(float(counts[c.value]) * voxel_ml, 3) for c in classes}

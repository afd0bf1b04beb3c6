"""Segmenting some slices of a volume only (the warm engine's ``segment_slices``), with the labels a
whole run gives those slices.

A batch of the whole run is cut to the union of its slices' body boxes (:mod:`.slicing`), so the same
slice in a batch of other slices would see a slightly different crop and padding. The subset therefore
runs every batch of the whole run that holds a wanted slice, as the whole run groups them: the slices of
the other batches get no body box, and dropping whole batches from the run's list of slices with body
leaves the grouping of the rest as it was. The slices computed beside the wanted ones (at most a batch's
worth at each end of a range) are blanked afterwards. Where the network runs between slices (thin
slices: :mod:`.model_slices`) every slice is computed and only the wanted ones kept.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from UNetSegmentationLib.inference.body import BodyBoxes
from UNetSegmentationLib.inference.layout import VolumeLayout


def only_slices(layout: VolumeLayout, wanted: Optional[Sequence[int]], batch_size: int, slice_count: int) -> VolumeLayout:
    """``layout`` with body boxes only in the batches of the whole run that hold one of ``wanted``
    (None: every slice, ``layout`` as it is)."""
    if wanted is None or len(layout.grid.network_positions(slice_count)) < slice_count:  # thin slices: the positions are shared
        return layout
    chosen = layout.bodies.slices_with_body
    is_wanted = _mask(wanted, slice_count)
    keep = np.zeros(slice_count, dtype=bool)
    for start in range(0, len(chosen), batch_size):
        batch = chosen[start:start + batch_size]
        if is_wanted[batch].any():
            keep[batch] = True
    boxes = layout.bodies.boxes.copy()
    boxes[~keep] = 0  # (0, 0, 0, 0): no body, not computed
    return dataclasses.replace(layout, bodies=BodyBoxes(boxes))


def blank_other_slices(label_slices: np.ndarray, confidence_slices: Optional[np.ndarray], wanted: Optional[Sequence[int]]) -> None:
    """Background (and full confidence) in every slice of the [slice, row, column] views but ``wanted``
    (None: every slice is wanted)."""
    if wanted is None:
        return
    others = ~_mask(wanted, label_slices.shape[0])
    label_slices[others] = 0
    if confidence_slices is not None:
        confidence_slices[others] = 1.0


def _mask(wanted: Sequence[int], count: int) -> np.ndarray:
    mask = np.zeros(count, dtype=bool)
    mask[np.asarray(list(wanted), dtype=np.int64)] = True
    return mask

"""Where on a slice the interactive network runs: around the object and the clicks, not the whole slice.

A click or a propagation step asks about one object, and the network is fully convolutional: what it says
about the object depends on the image near it, so only the region holding the previous mask and the
clicks' disks, grown by :data:`MARGIN_MM` on each side, is computed (the rest of the slice is not the
object). The interaction-centred crop is what DeepEdit and nnInteractive do for the same reason (and the
interactive network trains on crops, never on whole slices only). The region is aligned to the network's
pooling grid as ``predict``'s body crop is (:func:`~..inference.slicing.aligned_box`), so the network meets
the anatomy at the phase it has on the whole slice. A small object costs a fraction of a slice: a kidney
(~12 cm) at 3 mm is ~75 × 75 model pixels of a 130 × 130 slice, three times fewer.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from UNetSegmentationLib.inference.body import Box
from UNetSegmentationLib.inference.resolution import ModelGrid
from UNetSegmentationLib.inference.slicing import aligned_box

#: mm of image around the object and the clicks that the network sees
MARGIN_MM = 50.0
#: a previous-mask value at or above this is the object
THRESHOLD = 0.5


def work_box(guidance: np.ndarray, spacing_mm: Tuple[float, float], multiple: int, margin_mm: float = MARGIN_MM) -> Optional[Box]:
    """The (first row, end row, first column, end column) the network runs on for a batch's guidance
    ``(N, 3, H, W)`` (previous mask, positive, negative): every slice's object and click disks, grown by
    ``margin_mm``, aligned to ``multiple``; None where there is neither object nor click (nothing to segment)."""
    interest = (guidance[:, 0] >= THRESHOLD) | (guidance[:, 1] > 0) | (guidance[:, 2] > 0)
    rows = np.flatnonzero(interest.any(axis=(0, 2)))
    columns = np.flatnonzero(interest.any(axis=(0, 1)))
    if not rows.size:
        return None
    height, width = interest.shape[1:]
    grow_rows, grow_columns = (int(np.ceil(margin_mm / s)) for s in spacing_mm)
    box = (max(0, rows[0] - grow_rows), min(height, rows[-1] + 1 + grow_rows), max(0, columns[0] - grow_columns), min(width, columns[-1] + 1 + grow_columns))
    return aligned_box(box, ModelGrid((1.0, 1.0)), max(1, int(multiple)), (height, width))

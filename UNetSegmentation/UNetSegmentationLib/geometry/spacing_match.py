"""When a scan's spacing counts as the model's: the one rule that decides whether slices are resampled.

Pure Python (no numpy, no torch): the Slicer panel asks it too, to say whether a volume will be
resampled before the run starts.
"""

from __future__ import annotations

from typing import Sequence

#: spacings within this relative difference count as the same (no resampling): 0.5 % is under a tenth
#: of a pixel across a 512-pixel slice
SAME_SPACING = 0.005


def same_spacing(have: float, want: float) -> bool:
    """Whether ``have`` mm is ``want`` mm for resampling's purposes (within :data:`SAME_SPACING`)."""
    return abs(float(have) - float(want)) <= SAME_SPACING * float(want)


def same_in_plane(have: Sequence[float], want: Sequence[float]) -> bool:
    """Whether (row, column) spacings ``have`` are the model's ``want`` on both axes."""
    return all(same_spacing(h, w) for h, w in zip(have, want))

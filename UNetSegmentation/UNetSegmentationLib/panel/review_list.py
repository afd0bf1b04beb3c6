"""The panel's "Review these slices first" list: the ``done`` event's ``review`` entries (the slices the
model was least sure about, most uncertain first; :mod:`~UNetSegmentationLib.inference.review`) worded
for the list. Choosing an entry moves the slice views to that slice (the Slicer layer computes where).
Torch-, numpy- and SimpleITK-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from UNetSegmentationLib.protocol.events import Event

@dataclass(frozen=True)
class ReviewItem:
    """One entry: slice ``index`` along image axis ``axis`` (0 = i, 1 = j, 2 = k), its doubt ``score`` and its text."""

    index: int
    axis: int
    score: float
    label: str


def review_items(done_event: Optional[Event]) -> List[ReviewItem]:
    """The list's entries from a ``predict`` ``done`` event (empty without one or without a ranking);
    malformed entries are skipped."""
    items = []
    for rank, entry in enumerate((done_event or {}).get("review") or [], 1):
        try:
            index, axis, score = int(entry["slice"]), "ijk".index(str(entry["axis"])), float(entry["score"])
        except (KeyError, TypeError, ValueError):
            continue
        items.append(ReviewItem(index, axis, score, f"{rank}. slice {index} ({'ijk'[axis]}): doubt {score:.2f}"))
    return items

"""The slices to review first: every slice ranked by the model's uncertainty (issue 16; being built).

:func:`review_ranking` gives the :class:`~UNetSegmentationLib.inference.pipeline.SliceObserver` a run
attaches to its prediction (None: no ranking), whose ``finish(review_list)`` returns the ``done``
event's fields and writes ``--review-list``.
"""

from __future__ import annotations

from typing import Optional


def review_ranking(options, geometry, metadata) -> Optional[object]:
    """The ranking a run keeps (None while the ranking is being built)."""
    return None

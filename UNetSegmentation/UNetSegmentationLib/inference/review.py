"""The slices to review first: every slice ranked by the model's uncertainty (issue 16).

While ``predict`` runs, a :class:`ReviewRanking` (a :class:`~UNetSegmentationLib.inference.pipeline.SliceObserver`)
scores each slice from the labels and the probability of each chosen label that the pipeline decided
anyway: no extra network call. The score itself is a quality signal of
:mod:`~UNetSegmentationLib.inference.quality` (the boundary uncertainty), the module that also gives a
cohort's case confidence; ``bench/review_ranking.py`` compares the candidates of
:data:`~UNetSegmentationLib.inference.quality.UNCERTAINTY_SCORES` against per-slice Dice on the real CT
(BENCHMARKS.md, "Review ranking"). The ``done`` event gets the top :data:`REVIEW_TOP` slices; ``--review-list FILE``
(.json or .csv) gets every slice, ranked.

Slices are numbered along the image axis they run along (``axis`` ``i``, ``j`` or ``k``):
:class:`~UNetSegmentationLib.inference.slicing.SliceGeometry` never reverses that axis, so the index
the pipeline sees is the image's.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.quality import DEFAULT_SCORE, UNCERTAINTY_SCORES, SliceScore
from UNetSegmentationLib.io.outputs import atomic_output, check_output_path

#: slices the ``done`` event lists (the review list file has them all)
REVIEW_TOP = 10
#: what ``--review-list`` may be written as
REVIEW_LIST_EXTENSIONS = (".json", ".csv")
#: the review list's CSV columns, also the JSON entries' keys
REVIEW_FIELDS = ("rank", "slice", "axis", "score")

@dataclass(frozen=True)
class ReviewEntry:
    """One slice of the ranking: its index along image axis ``axis`` and its uncertainty score."""

    rank: int
    slice: int
    axis: str
    score: float

    def as_event(self) -> dict:
        """The ``done`` event's form: ``{"slice": k, "axis": "k", "score": s}``."""
        return {"slice": self.slice, "axis": self.axis, "score": round(self.score, 6)}


class ReviewRanking:
    """Scores every slice the pipeline decides (``observe``) and ranks them, most uncertain first."""

    def __init__(self, axis: str, score: SliceScore = UNCERTAINTY_SCORES[DEFAULT_SCORE], overwrite: bool = False) -> None:
        self.axis = axis
        self.score = score
        self.overwrite = overwrite
        self.scores: Dict[int, float] = {}

    def observe(self, indices: np.ndarray, labels: np.ndarray, confidence: np.ndarray) -> None:
        """Score a batch: ``indices`` (B,) slices along the slice axis, ``labels``/``confidence`` (B, rows, columns)."""
        for index, value in zip(np.asarray(indices).tolist(), self.score(np.asarray(labels), np.asarray(confidence, dtype=np.float32))):
            self.scores[int(index)] = float(value)

    def ranked(self) -> List[ReviewEntry]:
        """Every scored slice, most uncertain first (ties: the lower slice index first)."""
        order = sorted(self.scores.items(), key=lambda item: (-item[1], item[0]))
        return [ReviewEntry(rank, index, self.axis, score) for rank, (index, score) in enumerate(order, 1)]

    def finish(self, review_list: Optional[Path] = None) -> dict:
        """The ``done`` event's ``review`` field (top :data:`REVIEW_TOP`); writes every slice to ``review_list`` when given."""
        entries = self.ranked()
        if review_list is not None:
            write_review_list(entries, Path(review_list), self.overwrite)
        return {"review": [entry.as_event() for entry in entries[:REVIEW_TOP]]}


def check_review_list(review_list: Optional[Path], overwrite: bool, others: Sequence[Path] = ()) -> Optional[Path]:
    """``--review-list`` checked before any work (a .json or .csv file we may write, not one of ``others``); None when not asked for."""
    if review_list is None:
        return None
    path = check_output_path(review_list, overwrite, what="--review-list", extensions=REVIEW_LIST_EXTENSIONS)
    if any(path.resolve() == Path(other).resolve() for other in others):
        raise UserError(f"--review-list {path} must name a different file than the input and the other outputs")
    return path


def review_list_text(entries: Sequence[ReviewEntry], extension: str) -> str:
    """Every entry as ``.json`` (``{"slices": [{rank, slice, axis, score}, ...]}``) or ``.csv`` (a header row, then one row each)."""
    rows = [{"rank": entry.rank, **entry.as_event()} for entry in entries]  # the columns of REVIEW_FIELDS
    if extension == ".json":
        return json.dumps({"slices": rows}, indent=1) + "\n"
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=REVIEW_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_review_list(entries: Sequence[ReviewEntry], path: Path, overwrite: bool = False) -> None:
    """Write the ranking to ``path`` (.json or .csv), renamed into place only when complete."""
    text = review_list_text(entries, path.suffix.lower())
    with atomic_output([path], overwrite=overwrite) as temporaries:
        temporaries[0].write_text(text, encoding="utf-8")


def review_ranking(options, geometry) -> ReviewRanking:
    """The ranking a run keeps: always on (a few numpy passes per batch); slices along ``geometry``'s slice axis.

    ``options`` (:class:`~UNetSegmentationLib.inference.options.SegmentationOptions`) says whether an
    existing review list may be replaced.
    """
    return ReviewRanking("ijk"[geometry.slice_axis], overwrite=bool(getattr(options, "overwrite", False)))

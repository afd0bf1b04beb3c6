"""The slices to review first: every slice ranked by the model's uncertainty (issue 16).

While ``predict`` runs, a :class:`ReviewRanking` (a :class:`~UNetSegmentationLib.inference.pipeline.SliceObserver`)
scores each slice from the labels and the probability of each chosen label that the pipeline decided
anyway: no extra network call, a few numpy passes over a ``(B, rows, columns)`` batch. The score is
the mean uncertainty (1 − probability of the chosen label) over the voxels near predicted label
boundaries (:func:`boundary_uncertainty`): where a segmentation is wrong, it is mostly wrong at its
edges, and there the network hesitates. ``bench/review_ranking.py`` compares it with the other
candidates of :data:`UNCERTAINTY_SCORES` against per-slice Dice on the real CT (BENCHMARKS.md,
"Review ranking"). The ``done`` event gets the top :data:`REVIEW_TOP` slices; ``--review-list FILE``
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
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.outputs import atomic_output, check_output_path

#: slices the ``done`` event lists (the review list file has them all)
REVIEW_TOP = 10
#: voxels this far (in pixels, either side) from a change of predicted label count as boundary voxels:
#: the pixels on both sides of the change (a wider band dilutes the errors with confident pixels; bench/review_ranking.py)
BOUNDARY_BAND = 1
#: what ``--review-list`` may be written as
REVIEW_LIST_EXTENSIONS = (".json", ".csv")
#: the review list's CSV columns, also the JSON entries' keys
REVIEW_FIELDS = ("rank", "slice", "axis", "score")

#: ``(labels (B, rows, columns), confidence (B, rows, columns)) → (B,)`` uncertainty per slice, higher = review sooner
SliceScore = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``(B, rows, columns)`` bool grown by ``steps`` pixels in each in-plane direction (a square)."""
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
    change[:, 1:, :] |= down
    change[:, :-1, :] |= down
    across = labels[:, :, 1:] != labels[:, :, :-1]
    change[:, :, 1:] |= across
    change[:, :, :-1] |= across
    return _dilate(change, max(band - 1, 0))


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(B,)`` mean of ``values`` over ``mask`` per slice; 0 where the mask is empty."""
    count = mask.sum(axis=(1, 2))
    total = np.where(mask, values, 0.0).sum(axis=(1, 2), dtype=np.float64)
    return np.divide(total, count, out=np.zeros(len(values), dtype=np.float64), where=count > 0)


def boundary_uncertainty(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Mean 1 − confidence over the voxels near predicted boundaries (0 for a slice of one label)."""
    return _masked_mean(1.0 - confidence, boundary_band(labels))


def wide_boundary_uncertainty(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """As :func:`boundary_uncertainty` over a band of 3 pixels either side of each change."""
    return _masked_mean(1.0 - confidence, boundary_band(labels, 3))


def boundary_total_uncertainty(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """The boundary voxels' 1 − confidence summed, per voxel of the slice (more doubtful edge, higher)."""
    band = boundary_band(labels)
    return np.where(band, 1.0 - confidence, 0.0).sum(axis=(1, 2), dtype=np.float64) / (labels.shape[1] * labels.shape[2])


def foreground_uncertainty(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Mean 1 − confidence over the voxels labelled with a class (0 for an empty slice)."""
    return _masked_mean(1.0 - confidence, labels != 0)


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

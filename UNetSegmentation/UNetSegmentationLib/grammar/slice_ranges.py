"""Slice ranges (``12-18,40``): the one grammar of ``--train-slices``, ``evaluate --slices`` and the
panel's slice box.

Why bounded: expanding ``0-99999999999`` into a set of 10¹¹ integers got the process OOM-killed
(issue 23, HIGH 3). Every part is checked as text (ASCII digits only, at most :data:`MAX_DIGITS`
digits), then every bound against the volume's slice count (or :data:`MAX_SLICE_INDEX` when the count
is not known yet) *before* anything is expanded, so the largest list this module builds has as many
entries as the volume has slices.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional

from UNetSegmentationLib.errors import UserError

#: the largest slice index any volume may have (no scan has a million slices along its slice axis);
#: the bound used while the volume is not known yet
MAX_SLICE_INDEX = 999_999
#: digits a slice number may have (``MAX_SLICE_INDEX`` has 6): longer text is refused before ``int()``
MAX_DIGITS = 7
#: characters of range text read at all (a pasted megabyte is refused before it is split)
MAX_TEXT = 10_000

_PART = re.compile(r"([0-9]+)(?:-([0-9]+))?")
EXAMPLE = "12-18,40"


def parse_slice_ranges(text: str, count: Optional[int], *, option: str) -> List[int]:
    """``"12-18,40"`` → ``[12, 13, …, 18, 40]``: sorted distinct slice indices from 0.

    ``count``: the volume's slices along its slice axis (every index must be below it), or None when
    the volume is not read yet (then only the hard cap :data:`MAX_SLICE_INDEX` applies; call again
    with the count once it is known). ``option`` names the option or box in every message.
    Raises :class:`UserError` for anything else, before building any list.
    """
    ranges = check_slice_ranges(text, count, option=option)
    chosen = set()
    for first, last in ranges:
        chosen.update(range(first, last + 1))
    return sorted(chosen)


#: ``evaluate --slices``: every slice, or those the checkpoint's training held out
ALL_SLICES, CHECKPOINT_SLICES = "all", "checkpoint"


def parse_slice_selection(text: Optional[str], *, option: str = "--slices") -> Optional[str]:
    """``evaluate --slices``: None (``all``), ``"checkpoint"`` (the held-out slices recorded at training),
    or range text like ``4-6,16,17``, checked now against the hard cap and expanded per volume against
    its slice count (:func:`parse_slice_ranges`)."""
    if text is None or text == ALL_SLICES:
        return None
    if text == CHECKPOINT_SLICES:
        return text
    check_slice_ranges(text, None, option=option)
    return text


def check_slice_ranges(text: str, count: Optional[int], *, option: str) -> List[tuple]:
    """The ``(first, last)`` pairs of ``text``, every bound checked; nothing expanded (the panel calls
    this while the user types)."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{option}: give slice numbers and ranges from 0, e.g. {EXAMPLE}")
    if len(text) > MAX_TEXT:
        raise UserError(f"{option}: the slice list is {len(text)} characters long; give at most {MAX_TEXT} (ranges like 0-99 are shorter)")
    limit = MAX_SLICE_INDEX if count is None else min(int(count) - 1, MAX_SLICE_INDEX)
    if count is not None and int(count) < 1:
        raise UserError(f"{option}: the volume has no slices to choose from")
    ranges = []
    for part in text.split(","):
        part = part.strip()
        match = _PART.fullmatch(part)
        if not match:
            raise UserError(f"{option}: {part[:40]!r} is no slice number or range; write numbers from 0 and ranges FIRST-LAST separated by commas, e.g. {EXAMPLE}")
        if any(group is not None and len(group) > MAX_DIGITS for group in match.groups()):
            raise UserError(f"{option}: {part[:40]!r} is beyond {_range_text(count)}")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise UserError(f"{option}: {part!r} runs backwards; write FIRST-LAST with FIRST <= LAST")
        if last > limit:
            raise UserError(f"{option}: slice {last} is beyond {_range_text(count)}")
        ranges.append((first, last))
    return ranges


def _range_text(count: Optional[int]) -> str:
    if count is None:
        return f"the largest slice number accepted ({MAX_SLICE_INDEX})"
    return f"the volume's {count} slices (0-{int(count) - 1})"


def format_slice_ranges(slices: Iterable[int]) -> str:
    """The shortest range text of ``slices`` (``[12, 13, 14, 40]`` → ``"12-14,40"``): what a
    command line the panel writes carries, and what :func:`parse_slice_ranges` reads back."""
    ordered = sorted({int(s) for s in slices})
    parts: List[str] = []
    start = previous = None
    for index in ordered + [None]:
        if index is not None and previous is not None and index == previous + 1:
            previous = index
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = index
    return ",".join(parts)

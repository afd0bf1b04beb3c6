"""Names of the image axes (``--axis``, the panel's slice-axis choice): ``auto``, ``i``, ``j``, ``k``
(or ``0``, ``1``, ``2``). One spelling for the command line, the options objects and the panel."""

from __future__ import annotations

from typing import Optional, Union

from UNetSegmentationLib.errors import UserError

AUTO = "auto"
#: ``--axis`` names of the image axes 0, 1, 2; ``auto`` picks the one closest to superior-inferior
AXIS_NAMES = ("i", "j", "k")
AXIS_CHOICES = (AUTO,) + AXIS_NAMES


def parse_axis(text: Union[str, int, None], *, option: str = "--axis") -> Optional[int]:
    """``auto``/None → None (chosen from the direction matrix); ``i``/``j``/``k``, ``0``/``1``/``2`` or an int → image axis."""
    if text is None or text == AUTO:
        return None
    value = str(text).strip().lower()
    if value == AUTO:
        return None
    if value in AXIS_NAMES:
        return AXIS_NAMES.index(value)
    if value in ("0", "1", "2"):
        return int(value)
    raise UserError(f"{option} must be auto, i, j or k (or 0, 1, 2); got {str(text)[:40]!r}")


def axis_name(axis: Optional[int]) -> str:
    """The ``--axis`` text of an image axis (None: ``auto``)."""
    return AUTO if axis is None else AXIS_NAMES[axis]

"""Which image axis the slices run along, and which axes are a slice's rows and columns.

The network learned axial slices, rows toward posterior and columns toward the patient's left. A scan's
slice axis is the image axis closest to superior-inferior (unless the user names one); of the other two,
rows are the axis closer to anterior-posterior. The engine (``inference/slicing.SliceGeometry``, from
ITK's LPS direction matrix) and the Slicer side (``UNetSegmentationSlicer/slices.py``, from a volume
node's IJK-to-RAS directions) both ask :func:`slice_axes`: only absolute direction components matter
here, so LPS and RAS give the same answer (the flips, which depend on the signs, are the engine's).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

#: components of an anatomical direction: left-right, posterior-anterior, inferior-superior (LPS and RAS alike)
LEFT_RIGHT, POSTERIOR_ANTERIOR, SUPERIOR_INFERIOR = 0, 1, 2


def slice_axes(directions: Sequence[Sequence[float]], slice_axis: Optional[int] = None) -> Tuple[int, int, int]:
    """``(slice axis, row axis, column axis)`` (image axes 0 = i, 1 = j, 2 = k) for ``directions[a]``, the
    anatomical direction of image axis ``a``. Ties go to the lower axis, as on every caller before."""
    if slice_axis is None:
        slice_axis = max(range(3), key=lambda axis: abs(float(directions[axis][SUPERIOR_INFERIOR])))
    first, second = [axis for axis in range(3) if axis != slice_axis]

    def alignment(rows: int, columns: int) -> float:
        return abs(float(directions[rows][POSTERIOR_ANTERIOR])) + abs(float(directions[columns][LEFT_RIGHT]))

    rows, columns = max(((first, second), (second, first)), key=lambda pair: alignment(*pair))
    return slice_axis, rows, columns

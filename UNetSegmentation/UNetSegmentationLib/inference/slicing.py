"""From a volume to 2.5D network inputs and back: slice axis, canonical in-plane orientation,
neighbour-slice channels, padding.

Everything here works on *views* of the volume (transposes and reversed strides): nothing copies
the whole volume. Only the batch being assembled is materialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np


AXIS_NAMES = {"i": 0, "j": 1, "k": 2, "0": 0, "1": 1, "2": 2}
# LPS unit vectors: the slice axis is the image axis closest to superior-inferior; in the slice,
# rows run toward posterior and columns toward the patient's left (radiological axial view).
_LEFT, _POSTERIOR, _SUPERIOR = 0, 1, 2


@dataclass(frozen=True)
class SliceGeometry:
    """How the [k, j, i] voxel array maps to slices: which image axis slices run along, and how each
    slice is transposed and flipped so the network always sees the same anatomical orientation.

    ``slice_axis``, ``row_axis``, ``column_axis`` are ITK image axes (0 = i, 1 = j, 2 = k);
    ``flip_rows``/``flip_columns`` reverse the in-plane axes.
    """

    slice_axis: int
    row_axis: int
    column_axis: int
    flip_rows: bool
    flip_columns: bool

    @staticmethod
    def from_direction(direction: Sequence[float], slice_axis: Optional[int] = None) -> "SliceGeometry":
        """Choose the slice axis (closest to S unless given) and the canonical in-plane orientation."""
        matrix = np.asarray(direction, dtype=float).reshape(3, 3)  # column a: direction of image axis a in LPS
        if slice_axis is None:
            slice_axis = int(np.argmax(np.abs(matrix[_SUPERIOR])))
        in_plane = [a for a in range(3) if a != slice_axis]

        def alignment(rows: int, columns: int) -> float:
            return abs(matrix[_POSTERIOR, rows]) + abs(matrix[_LEFT, columns])

        row_axis, column_axis = max((in_plane, in_plane[::-1]), key=lambda pair: alignment(*pair))
        return SliceGeometry(
            slice_axis=slice_axis,
            row_axis=row_axis,
            column_axis=column_axis,
            flip_rows=bool(matrix[_POSTERIOR, row_axis] < 0),
            flip_columns=bool(matrix[_LEFT, column_axis] < 0),
        )

    def slices_view(self, array: np.ndarray) -> np.ndarray:
        """View of a [k, j, i] array as [slice, row, column] (writes go through to ``array``)."""
        # numpy axis of ITK image axis a is 2 - a
        view = array.transpose(2 - self.slice_axis, 2 - self.row_axis, 2 - self.column_axis)
        return view[:, :: -1 if self.flip_rows else 1, :: -1 if self.flip_columns else 1]

    def describe(self) -> str:
        names = "ijk"
        return f"slices along {names[self.slice_axis]}, rows along {'-' if self.flip_rows else '+'}{names[self.row_axis]}, columns along {'-' if self.flip_columns else '+'}{names[self.column_axis]}"


def context_indices(slice_indices: np.ndarray, context: int, slice_count: int) -> np.ndarray:
    """``(B, 2c+1)`` indices of slices k-c … k+c for each k, the edge slice repeated beyond the ends."""
    offsets = np.arange(-context, context + 1)
    return np.clip(np.asarray(slice_indices)[:, None] + offsets[None, :], 0, slice_count - 1)


def gather_context(slices: np.ndarray, slice_indices: np.ndarray, context: int) -> np.ndarray:
    """``(B, 2c+1, rows, columns)`` 2.5D inputs for ``slice_indices`` of a [slice, row, column] view."""
    indices = context_indices(slice_indices, context, slices.shape[0])
    return slices[indices.reshape(-1)].reshape(indices.shape + slices.shape[1:])


def padding_for(shape: Tuple[int, int], multiple: int) -> Tuple[int, int]:
    """Rows and columns to add (at the end) so both sizes are divisible by ``multiple``."""
    return tuple((-size) % multiple for size in shape)


def input_batches(
    slices: np.ndarray,
    batch_size: int,
    context: int,
    mapping: Callable[[np.ndarray], np.ndarray],
    padding: Tuple[int, int] = (0, 0),
    indices: Optional[Sequence[int]] = None,
) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """``(indices, batch)`` for consecutive batches of ``indices`` (default: every slice, in order) of a
    [slice, row, column] view: ``batch`` is ``(B, 2c+1, rows + padding[0], columns + padding[1])``
    float32, normalised by ``mapping`` and zero-padded (in normalised units) at the far edges."""
    chosen = np.arange(slices.shape[0]) if indices is None else np.asarray(indices, dtype=int)
    for start in range(0, len(chosen), batch_size):
        batch_indices = chosen[start:start + batch_size]
        yield batch_indices, normalised_batch(slices, batch_indices, context, mapping, padding)


def normalised_batch(slices: np.ndarray, indices: np.ndarray, context: int, mapping: Callable[[np.ndarray], np.ndarray], padding: Tuple[int, int] = (0, 0)) -> np.ndarray:
    """The network input of ``indices``: ``(B, 2c+1, rows + padding[0], columns + padding[1])`` float32."""
    batch = mapping(gather_context(slices, indices, context))
    pad_rows, pad_columns = padding
    if pad_rows or pad_columns:
        batch = np.pad(batch, ((0, 0), (0, 0), (0, pad_rows), (0, pad_columns)))
    return batch

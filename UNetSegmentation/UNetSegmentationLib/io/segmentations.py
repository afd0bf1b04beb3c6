"""Results on the input's grid: label maps, Slicer ``.seg.nrrd`` segmentations and confidence maps.

SimpleITK writes label and scalar maps (NRRD, NIfTI, MHA), and Slicer segmentations with the
classes' names, colours, label values and terminology in the header fields of :mod:`.segment_fields`
(``slicerio`` and Slicer read them). Outputs always carry exactly the
reference volume's origin, spacing and direction, and the size of the array written (the input's: a run
may give a one-voxel :func:`grid_reference` instead of the input, whose voxels are then no longer held). A writer's failure is a :class:`UserError`
naming the final file (never the temporary one of :mod:`.outputs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.io.compression import level_for, write_arguments
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.outputs import split_extension
from UNetSegmentationLib.io.segment_fields import segmentation_header
from UNetSegmentationLib.io.verified_write import MIN_FREE_BYTES, free_space, full_disk_note

if TYPE_CHECKING:  # annotations only: io/ stays below model/ (model/checkpoint.py writes through io.outputs)
    from UNetSegmentationLib.io.class_info import ClassInfo


def grid_reference(image: sitk.Image) -> sitk.Image:
    """A one-voxel image with ``image``'s origin, spacing and direction: all a writer here needs of the input's
    grid (the written array brings its size), so a run can let the input's voxels go before it writes."""
    return grid_at(image.GetOrigin(), image.GetSpacing(), image.GetDirection())


def grid_at(origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]) -> sitk.Image:
    """:func:`grid_reference` of the grid ``origin``, ``spacing``, ``direction`` (a header's, before any voxel is read)."""
    reference = sitk.Image([1] * len(spacing), sitk.sitkUInt8)
    reference.SetOrigin(tuple(origin))
    reference.SetSpacing(tuple(spacing))
    reference.SetDirection(tuple(direction))
    return reference


def place_on_grid(image: sitk.Image, reference: sitk.Image) -> None:
    """``image`` on ``reference``'s grid: its origin, spacing and direction (not its size: see :func:`grid_reference`)."""
    image.SetOrigin(reference.GetOrigin())
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())


def label_dtype(max_value: int) -> np.dtype:
    """The smallest unsigned type that holds label values up to ``max_value`` (uint8, else uint16)."""
    return np.dtype(np.uint8 if max_value <= 255 else np.uint16)


def write_labels(labels: np.ndarray, reference: sitk.Image, path: Path, classes: Sequence[ClassInfo], final_name: Optional[Path] = None, compress: Optional[int] = None) -> None:
    """Write a label map (array in SimpleITK's [k, j, i] order) on ``reference``'s grid.

    The format follows the extension of ``final_name`` (default ``path``): ``.seg.nrrd`` gives a Slicer
    segmentation with the classes' names, colours, label values and terminology; anything else a
    label map through SimpleITK. ``compress``: ``--compress``'s level (None: the measured one, io/compression.py).
    """
    extension = split_extension(final_name or path)[1].lower()
    try:
        if extension == ".seg.nrrd":
            _write_segmentation(labels, reference, path, classes, compress)
        else:
            image = sitk.GetImageFromArray(labels)
            place_on_grid(image, reference)
            sitk.WriteImage(image, str(path), **write_arguments(str(final_name or path), level_for(compress, floats=False)))
    except RuntimeError as error:
        raise UserError(f"cannot write {final_name or path}: {_write_failure(error, path, final_name)}") from None


def _write_failure(error: RuntimeError, path: Path, final_name: Optional[Path]) -> str:
    """The writer's reason (its last line), naming the final file rather than the temporary one, and the
    cause when the disk is full: ITK's compressed NRRD writer says only "_nrrdGzWrite: failed to write to file"."""
    text = str(error).strip()
    reason = text.splitlines()[-1] if text else type(error).__name__
    if final_name is not None:
        reason = reason.replace(str(path), str(final_name))
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    if free_space(folder) < MIN_FREE_BYTES:
        reason = f"{reason[:200]}; {full_disk_note(folder)}"
    return reason[:400]


#: the widest unsigned type a label's bit fits in: values up to 63 take the one-pass :func:`label_extents`
_BIT_TYPES = (np.uint8, np.uint16, np.uint32, np.uint64)
#: slices of the label map turned into bits at a time (bounds the temporary: 16 × 512² × 8 bytes at most)
_EXTENT_CHUNK = 16


def _label_extent(labels: np.ndarray, value: int) -> list:
    """``[i_min, i_max, j_min, j_max, k_min, k_max]`` of the voxels equal to ``value`` in a [k, j, i]
    array (``[0, -1, 0, -1, 0, -1]`` if there are none), from axis projections of its mask."""
    mask = labels == value
    k = np.flatnonzero(mask.any(axis=(1, 2)))
    if not k.size:
        return [0, -1, 0, -1, 0, -1]
    slab = mask[k[0]:k[-1] + 1]
    j = np.flatnonzero(slab.any(axis=(0, 2)))
    i = np.flatnonzero(slab.any(axis=(0, 1)))
    return [int(i[0]), int(i[-1]), int(j[0]), int(j[-1]), int(k[0]), int(k[-1])]


def label_extents(labels: np.ndarray, values: Sequence[int]) -> list:
    """:func:`_label_extent` of every value of ``values`` in one pass over a [k, j, i] label map, not one per
    value (14 classes of a 512×512×600 map: 0.1 s instead of 1.3 s). Each voxel becomes the bit of its value
    (``1 << label``), OR-reduced along each axis, so every slice, row and column knows which values it
    holds; a value's extent is its bit's first and last index on each axis. Maps holding a value above 63 (no
    integer type has its bit) are scanned per value."""
    values = [int(v) for v in values]
    if not values or not labels.size:
        return [[0, -1, 0, -1, 0, -1] for _ in values]
    top = int(labels.max())
    if top > 63 or labels.dtype.kind not in "ui" or int(labels.min()) < 0:
        return [_label_extent(labels, v) for v in values]
    bits = next(t for t in _BIT_TYPES if top < np.iinfo(t).bits)
    one = bits(1)
    along_k = np.zeros(labels.shape[0], dtype=bits)
    along_j = np.zeros(labels.shape[1], dtype=bits)
    along_i = np.zeros(labels.shape[2], dtype=bits)
    for k0 in range(0, labels.shape[0], _EXTENT_CHUNK):
        chunk = np.left_shift(one, labels[k0:k0 + _EXTENT_CHUNK], dtype=bits, casting="unsafe")  # values checked non-negative above
        rows = np.bitwise_or.reduce(chunk, axis=2)  # (slices, rows): the values each row of each slice holds
        along_k[k0:k0 + len(chunk)] = np.bitwise_or.reduce(rows, axis=1)
        along_j |= np.bitwise_or.reduce(rows, axis=0)
        along_i |= np.bitwise_or.reduce(chunk.reshape(-1, chunk.shape[2]), axis=0)
    extents = []
    for value in values:
        if not 0 <= value <= top:
            extents.append([0, -1, 0, -1, 0, -1])
            continue
        bit = np.left_shift(one, value, dtype=bits)
        k, j, i = (np.flatnonzero(axis & bit) for axis in (along_k, along_j, along_i))
        extents.append([int(i[0]), int(i[-1]), int(j[0]), int(j[-1]), int(k[0]), int(k[-1])] if k.size else [0, -1, 0, -1, 0, -1])
    return extents


def _write_segmentation(labels: np.ndarray, reference: sitk.Image, path: Path, classes: Sequence[ClassInfo], compress: Optional[int] = None) -> None:
    """A Slicer segmentation written by ITK's NRRD writer (Teem, as Slicer writes it): the header in
    UTF-8, so non-ASCII names survive; every value checked by :mod:`.segment_fields` first."""
    extents = label_extents(labels, [info.value for info in classes])
    segments = [
        {"value": info.value, "name": info.name, "color": info.color, "extent": extent, "terminology": info.terminology}
        for info, extent in zip(classes, extents)
    ]
    try:
        header = segmentation_header(segments)
    except ValueError as error:  # metadata is checked when a checkpoint is loaded; this guards other callers
        raise RuntimeError(f"a Slicer segmentation cannot hold it: {error}") from None  # write_labels names the file
    image = sitk.GetImageFromArray(labels)
    place_on_grid(image, reference)
    for key, value in header.items():
        image.SetMetaData(key, value)
    sitk.WriteImage(image, str(path), **write_arguments(str(path), level_for(compress, floats=False)))


def write_scalar(volume: np.ndarray, reference: sitk.Image, path: Path, final_name: Optional[Path] = None, compress: Optional[int] = None) -> None:
    """Write a scalar map (e.g. probabilities) on ``reference``'s grid, compressed (io/compression.py)."""
    image = sitk.GetImageFromArray(volume)
    place_on_grid(image, reference)
    try:
        sitk.WriteImage(image, str(path), **write_arguments(str(final_name or path), level_for(compress, floats=volume.dtype.kind == "f")))
    except RuntimeError as error:
        raise UserError(f"cannot write {final_name or path}: {_write_failure(error, path, final_name)}") from None

"""A NRRD's voxels without ITK's reader: raw data mapped from the file, gzip data decoded by zlib-ng.

ITK's NRRD reader copies raw voxels into a buffer of its own (0.2-0.6 s for the 315 MB of a
512×512×600 16-bit CT here, before anything else can start), and inflates gzip voxels without checking
the stream's CRC-32, which the engine then checked over every decoded voxel (0.16 s per 315 MB). Here:

- **raw** voxels are the file's pages, mapped read-only (as nibabel maps an uncompressed NIfTI): nothing
  is copied, and a slice is read from the page cache when the run first looks at it. POSIX only: Windows
  cannot delete a file while it is mapped, and the panel deletes the volume it saved once a request ends.
  The file must not be cut short while the run reads it (the process would be stopped by the system);
- **gzip** voxels are inflated by zlib-ng (the ``zlib-ng`` package, which the panel installs too) straight
  into the array the run keeps, and inflate checks the gzip trailer, CRC-32 and length, on the way: as
  fast as ITK's inflate and no pass after it (BENCHMARKS.md, *Fourth round*, fifth session).

Only what this reads exactly as ITK's reader would is read here: voxel data attached to the header,
no line or byte skip, voxels of one byte or in the host's byte order, of the type ITK reports for the
file. Everything else, and any gzip stream that does not decode cleanly to exactly the bytes the header
announces (cut short, corrupt, a second member, bytes after it), gives None: ITK's reader then reads the
file as before, and the checks of :mod:`.volumes` name what is wrong with it.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import sys
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.io.input_header import InputHeader
from UNetSegmentationLib.io.payload import DEFLATE, RAW, Payload, describe_payload, nrrd_fields

_STEP = 1 << 22  # compressed bytes read, and decoded bytes written, at a time
_GZIP_ONLY = 16 + 15  # zlib's window bits for a gzip wrapper (whose trailer inflate checks)
#: raw voxels are mapped from the file where a mapped file can still be deleted (POSIX; not Windows)
MAPS_RAW_FILES = os.name == "posix"
#: SimpleITK's name of each scalar voxel type (:attr:`InputHeader.pixel_type`) → the numpy type of its arrays
_SCALAR_TYPES = {
    sitk.GetPixelIDValueAsString(pixel_id): np.dtype(dtype)
    for pixel_id, dtype in ((sitk.sitkInt8, np.int8), (sitk.sitkUInt8, np.uint8), (sitk.sitkInt16, np.int16), (sitk.sitkUInt16, np.uint16),
                            (sitk.sitkInt32, np.int32), (sitk.sitkUInt32, np.uint32), (sitk.sitkInt64, np.int64), (sitk.sitkUInt64, np.uint64),
                            (sitk.sitkFloat32, np.float32), (sitk.sitkFloat64, np.float64))
}


def nrrd_voxels(header: InputHeader) -> Optional[np.ndarray]:
    """The voxels of ``header``'s NRRD file as ITK's reader gives them: a read-only ``[k, j, i]`` array of the
    type ITK reports, mapped from the file (raw) or decoded by zlib-ng with the stream's CRC-32 and length
    checked (gzip). None where ITK reads the file instead (the module docstring says when). A
    ``MemoryError`` for the decoded array is the caller's to word."""
    layout = _direct_layout(header)
    if layout is None:
        return None
    payload, dtype = layout
    shape = tuple(reversed(header.size))
    volume = _mapped(payload, shape, dtype) if payload.encoding == RAW else _decoded(payload, shape, dtype)
    if volume is not None:
        volume.flags.writeable = False  # as ITK's array view of its image
    return volume


def _zlib_ng():
    """zlib-ng's zlib-compatible module, or None when the package is not installed (ITK then decodes)."""
    try:
        from zlib_ng import zlib_ng
    except ImportError:
        return None
    return zlib_ng


def _mapped(payload: Payload, shape: Tuple[int, ...], dtype: np.dtype) -> Optional[np.ndarray]:
    """The raw voxels as the file's pages, mapped read-only (None where the file cannot be mapped)."""
    try:
        with open(payload.data_file, "rb") as file:
            pages = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)  # the mapping outlives the file object
        return np.frombuffer(pages, dtype=dtype, count=math.prod(shape), offset=payload.offset).reshape(shape)
    except (OSError, ValueError):  # not mappable, or shorter than announced (verify_data refuses that first)
        return None


def _decoded(payload: Payload, shape: Tuple[int, ...], dtype: np.dtype) -> Optional[np.ndarray]:
    """The gzip voxels inflated by zlib-ng, or None (not installed; the stream not exactly what the header announces)."""
    inflate = _zlib_ng()
    if inflate is None:
        return None
    volume = _unadvised_array(shape, dtype)
    written = memoryview(volume.reshape(-1)).cast("B")
    decoder, filled = inflate.decompressobj(_GZIP_ONLY), 0
    try:
        with open(payload.data_file, "rb") as file:
            file.seek(payload.offset)
            while not decoder.eof:
                source = decoder.unconsumed_tail or file.read(_STEP)
                if not source:
                    return None  # cut short
                piece = decoder.decompress(source, min(_STEP, written.nbytes - filled) or 1)
                if len(piece) > written.nbytes - filled:
                    return None  # more than announced
                written[filled:filled + len(piece)] = piece
                filled += len(piece)
            trailing = decoder.unused_data or file.read(1)
    except (OSError, inflate.error):
        return None  # unreadable, corrupt, or a trailer that does not match: ITK's path names it
    return volume if filled == written.nbytes and not trailing else None


def _unadvised_array(shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array in memory of its own, on the kernel's ordinary pages as ITK's buffers are: numpy
    asks for huge pages for large arrays, which on a host short of them stalls on compaction (0.04-1.0 s to
    touch 315 MB here, against 0.25 s steady; BENCHMARKS.md, *Fourth round*, fifth session)."""
    size = math.prod(shape) * dtype.itemsize
    try:
        memory = mmap.mmap(-1, size)
    except OSError as error:
        if error.errno == errno.ENOMEM:
            raise MemoryError(f"{size} bytes") from None
        raise
    return np.frombuffer(memory, dtype=dtype).reshape(shape)


def _direct_layout(header: InputHeader) -> Optional[Tuple[Payload, np.dtype]]:
    """``(payload, numpy type)`` of ``header``'s file when it is a NRRD this module reads exactly as ITK does, else None."""
    if header.dicom_files or header.dimension != 3 or header.components != 1:
        return None
    payload = describe_payload(header.path)
    if payload is None or payload.format != "NRRD" or payload.data_file != header.path or payload.offset < 0:
        return None
    if payload.encoding != DEFLATE and (payload.encoding != RAW or not MAPS_RAW_FILES):
        return None
    fields, _ = nrrd_fields(header.path)
    dtype = _SCALAR_TYPES.get(header.pixel_type)
    if dtype is None or _int_field(fields, "lineskip") or _int_field(fields, "byteskip"):
        return None
    if dtype.itemsize > 1 and fields.get("endian", "").lower() != sys.byteorder:
        return None  # voxels in the other byte order (or none stated): ITK swaps them
    if payload.expected_bytes != header.voxels * dtype.itemsize:
        return None
    return payload, dtype


def _int_field(fields: dict, key: str) -> int:
    """A NRRD integer field (0 when absent; -1 when it is not an integer, so that the caller declines the file)."""
    text = fields.get(key, "0").strip()
    try:
        return int(text)
    except ValueError:
        return -1

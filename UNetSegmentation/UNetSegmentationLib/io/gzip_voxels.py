"""A gzip-encoded NRRD's voxels decoded by zlib-ng, checked by the stream's own trailer as they are decoded.

ITK's NRRD reader inflates a ``gzip`` NRRD with the zlib it bundles and does not check the stream's
CRC-32, so the engine checked it afterwards over every decoded voxel (:func:`~.payload.checksum_matches`).
zlib-ng (the ``zlib-ng`` package, which the panel installs too) inflates the same stream faster and
checks the gzip trailer, CRC-32 and length, as it goes: for the 512×512×300 clinical fixture 0.58 s
against ITK's 0.90 s plus the 0.16 s check, written straight into the array the run keeps (BENCHMARKS.md,
*Fourth round*, fifth session).

Only what this decodes exactly as ITK's reader would is decoded here: one gzip stream attached to the
header, no line or byte skip, voxels of one byte or little-endian, of the type ITK reports for the file.
Everything else, and any stream that does not decode cleanly to exactly the bytes the header announces
(cut short, corrupt, a second member, bytes after it), returns None: ITK's reader then reads the file
as before, and the checks of :mod:`.volumes` name what is wrong with it.
"""

from __future__ import annotations

import errno
import math
import mmap
import sys
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.io.input_header import InputHeader
from UNetSegmentationLib.io.payload import DEFLATE, describe_payload, nrrd_fields

_STEP = 1 << 22  # compressed bytes read, and decoded bytes written, at a time
_GZIP_ONLY = 16 + 15  # zlib's window bits for a gzip wrapper (whose trailer inflate checks)
#: SimpleITK's name of each scalar voxel type (:attr:`InputHeader.pixel_type`) → the numpy type of its arrays
_SCALAR_TYPES = {
    sitk.GetPixelIDValueAsString(pixel_id): np.dtype(dtype)
    for pixel_id, dtype in ((sitk.sitkInt8, np.int8), (sitk.sitkUInt8, np.uint8), (sitk.sitkInt16, np.int16), (sitk.sitkUInt16, np.uint16),
                            (sitk.sitkInt32, np.int32), (sitk.sitkUInt32, np.uint32), (sitk.sitkInt64, np.int64), (sitk.sitkUInt64, np.uint64),
                            (sitk.sitkFloat32, np.float32), (sitk.sitkFloat64, np.float64))
}


def _zlib_ng():
    """zlib-ng's zlib-compatible module, or None when the package is not installed (ITK then decodes)."""
    try:
        from zlib_ng import zlib_ng
    except ImportError:
        return None
    return zlib_ng


def decode_gzip_nrrd(header: InputHeader) -> Optional[np.ndarray]:
    """The voxels of ``header``'s NRRD file as ITK's reader gives them (a read-only ``[k, j, i]`` array of the
    type ITK reports), decoded by zlib-ng with the stream's CRC-32 and length checked; None when zlib-ng is
    not installed, when the file is not one this decodes exactly as ITK does, or when its stream does not
    decode cleanly to the bytes its header announces (the module docstring says which). A ``MemoryError``
    for the array is the caller's to word."""
    inflate = _zlib_ng()
    dtype = _decodable_dtype(header) if inflate is not None else None
    if dtype is None:
        return None
    payload = describe_payload(header.path)
    volume = _unadvised_array(tuple(reversed(header.size)), dtype)
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
    if filled != written.nbytes or trailing:
        return None
    volume.flags.writeable = False  # as ITK's array view of its image
    return volume


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


def _decodable_dtype(header: InputHeader) -> Optional[np.dtype]:
    """The numpy type of ``header``'s voxels when the file is a NRRD this module decodes exactly as ITK does, else None."""
    if header.dicom_files or header.dimension != 3 or header.components != 1:
        return None
    payload = describe_payload(header.path)
    if payload is None or payload.format != "NRRD" or payload.encoding != DEFLATE or payload.data_file != header.path:
        return None
    fields, _ = nrrd_fields(header.path)
    if fields.get("encoding", "").lower() not in ("gzip", "gz") or _int_field(fields, "lineskip") or _int_field(fields, "byteskip"):
        return None
    dtype = _SCALAR_TYPES.get(header.pixel_type)
    if dtype is None:
        return None
    if dtype.itemsize > 1 and fields.get("endian", "").lower() != sys.byteorder:
        return None  # big-endian voxels (or a host that is): ITK swaps them
    if payload.expected_bytes != header.voxels * dtype.itemsize:
        return None
    return dtype


def _int_field(fields: dict, key: str) -> int:
    """A NRRD integer field (0 when absent; -1 when it is not an integer, so that the caller declines the file)."""
    text = fields.get(key, "0").strip()
    try:
        return int(text)
    except ValueError:
        return -1

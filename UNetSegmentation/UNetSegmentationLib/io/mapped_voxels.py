"""A raw NRRD's voxels as the file's own pages, mapped read-only instead of copied by ITK's reader.

ITK's reader copies raw voxels into a buffer of its own before anything else can start: 0.12 s for the
157 MB of a 512×512×300 16-bit CT here and 0.25-0.6 s for 512×512×600, most of it the kernel handing
out the buffer's pages. Mapped (as nibabel maps an uncompressed NIfTI), nothing is copied: a slice is
read from the page cache when the run first looks at it (BENCHMARKS.md, *Fifth round*).
An uncompressed NRRD is what the panel saves for the engine.

Mapped only where ITK's reader would give exactly these voxels: data attached to the header, no line or
byte skip, voxels of one byte or in the host's byte order, of the type ITK reports for the file; and only
on POSIX, because Windows cannot delete a file while it is mapped (the panel deletes the volume it saved
once a request ends). Everything else gives None and ITK reads the file as before. A file cut short
while the run reads it stops the process (the system's bus error), as with any mapped file;
:func:`~.volumes.verify_data` has found all its voxels there before.

Compressed NRRDs stay with ITK: zlib-ng decoding into the array the run keeps, with the stream's CRC-32
checked on the way, measured no faster than ITK's inflate plus the check beside the body (same section).
"""

from __future__ import annotations

import mmap
import os
import sys
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.io.input_header import InputHeader
from UNetSegmentationLib.io.payload import RAW, Payload, describe_payload, nrrd_fields

#: raw voxels are mapped from the file where a mapped file can still be deleted (POSIX; not Windows)
MAPS_RAW_FILES = os.name == "posix"
#: SimpleITK's name of each scalar voxel type (:attr:`InputHeader.pixel_type`) → the numpy type of its arrays
_SCALAR_TYPES = {
    sitk.GetPixelIDValueAsString(pixel_id): np.dtype(dtype)
    for pixel_id, dtype in ((sitk.sitkInt8, np.int8), (sitk.sitkUInt8, np.uint8), (sitk.sitkInt16, np.int16), (sitk.sitkUInt16, np.uint16),
                            (sitk.sitkInt32, np.int32), (sitk.sitkUInt32, np.uint32), (sitk.sitkInt64, np.int64), (sitk.sitkUInt64, np.uint64),
                            (sitk.sitkFloat32, np.float32), (sitk.sitkFloat64, np.float64))
}


def mapped_voxels(header: InputHeader) -> Optional[np.ndarray]:
    """The voxels of ``header``'s raw NRRD file as ITK's reader gives them, a read-only ``[k, j, i]`` array of the
    type ITK reports over the file's pages; None where ITK reads the file instead (the module docstring says when)."""
    layout = _mappable(header)
    if layout is None:
        return None
    payload, dtype = layout
    try:
        with open(payload.data_file, "rb") as file:
            pages = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)  # the mapping outlives the file object
        volume = np.frombuffer(pages, dtype=dtype, count=header.voxels, offset=payload.offset)
    except (OSError, ValueError):  # not mappable, or shorter than announced (verify_data refuses that first)
        return None
    return volume.reshape(tuple(reversed(header.size)))


def _mappable(header: InputHeader) -> Optional[Tuple[Payload, np.dtype]]:
    """``(payload, numpy type)`` of ``header``'s file when it is a raw NRRD this module maps exactly as ITK reads it, else None."""
    if not MAPS_RAW_FILES or header.dicom_files or header.dimension != 3 or header.components != 1:
        return None
    payload = describe_payload(header.path)
    if payload is None or payload.format != "NRRD" or payload.encoding != RAW or payload.data_file != header.path or payload.offset < 0:
        return None
    fields, _ = nrrd_fields(header.path)
    dtype = _SCALAR_TYPES.get(header.pixel_type)
    if dtype is None or int(fields.get("lineskip", "0")) or int(fields.get("byteskip", "0")):  # integers: describe_payload read them
        return None
    if dtype.itemsize > 1 and fields.get("endian", "").lower() != sys.byteorder:
        return None  # voxels in the other byte order (or none stated): ITK swaps them
    if payload.expected_bytes != header.voxels * dtype.itemsize:
        return None
    return payload, dtype


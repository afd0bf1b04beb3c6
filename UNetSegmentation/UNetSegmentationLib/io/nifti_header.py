"""The fields of a NIfTI-1 or NIfTI-2 header that say how much voxel data follows and where it lies.

ITK reads NIfTI through its own copy of niftilib, which fills a short file's missing voxels with
zeros and chooses between the qform and the sform on its own. To refuse a truncated file and to say
which transform was used, the engine reads these fields itself: dimensions, voxel type, data offset,
both transforms and their codes. Standard library only (:mod:`struct`, :mod:`gzip`): the output
checks of :mod:`.verified_write` run in processes that must stay light.
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

#: bytes per voxel of each NIfTI datatype code (nifti1.h); RGB24 is 3 bytes, complex types two floats
DATATYPE_BYTES = {
    2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8, 1536: 16, 1792: 16, 2048: 32, 2304: 4,
}
NIFTI1_SIZE, NIFTI2_SIZE = 348, 540


@dataclass(frozen=True)
class NiftiHeader:
    """What the engine needs from a NIfTI header (spatial transforms map voxel (i, j, k) to RAS mm)."""

    version: int  # 1 or 2
    single_file: bool  # header and data in one file; False for the "ni1"/"ni2" magic of a .hdr/.img pair
    dimensions: Tuple[int, ...]  # dim[1..dim[0]]
    datatype: int
    voxel_offset: int  # where the voxels start in the data file (vox_offset, at least the header's size for one file)
    pixdim: Tuple[float, ...]  # pixdim[0..7]; pixdim[0] is qfac (the qform's handedness)
    qform_code: int
    sform_code: int
    quaternion: Tuple[float, float, float]  # quatern_b, c, d
    qoffset: Tuple[float, float, float]
    srow: Tuple[Tuple[float, ...], Tuple[float, ...], Tuple[float, ...]]  # srow_x, srow_y, srow_z (4 values each)

    @property
    def bytes_per_voxel(self) -> Optional[int]:
        return DATATYPE_BYTES.get(self.datatype)

    @property
    def data_bytes(self) -> Optional[int]:
        """Bytes of voxel data the header announces (None: a datatype no reader knows)."""
        if self.bytes_per_voxel is None:
            return None
        return math.prod(max(d, 1) for d in self.dimensions) * self.bytes_per_voxel  # niftilib reads a size <= 0 as 1


def read_nifti_header(path: Path) -> Optional[NiftiHeader]:
    """The header of the NIfTI file ``path`` (gzip-compressed or not), or None if it is no NIfTI file."""
    opener = gzip.open if is_gzip(path) else open
    try:
        with opener(path, "rb") as file:
            raw = file.read(NIFTI2_SIZE)
    except (OSError, EOFError):
        return None
    return parse_nifti_header(raw)


def parse_nifti_header(raw: bytes) -> Optional[NiftiHeader]:
    """Parse the first 348 (NIfTI-1) or 540 (NIfTI-2) bytes of a file; None if they are not a NIfTI header."""
    for endian in "<>":
        if len(raw) >= 4 and struct.unpack(endian + "i", raw[:4])[0] == NIFTI1_SIZE and len(raw) >= NIFTI1_SIZE:
            return _parse_nifti1(raw, endian)
        if len(raw) >= 4 and struct.unpack(endian + "i", raw[:4])[0] == NIFTI2_SIZE and len(raw) >= NIFTI2_SIZE:
            return _parse_nifti2(raw, endian)
    return None


def _parse_nifti1(raw: bytes, e: str) -> Optional[NiftiHeader]:
    # any magic: readers take a 348-byte header with an unknown magic for ANALYZE 7.5 and still use its fields
    dim = struct.unpack(e + "8h", raw[40:56])
    single = raw[344:348] != b"ni1\x00"
    vox_offset = struct.unpack(e + "f", raw[108:112])[0]
    offset = int(vox_offset) if math.isfinite(vox_offset) else 0
    return NiftiHeader(
        version=1,
        single_file=single,
        dimensions=tuple(dim[1:1 + min(max(dim[0], 0), 7)]),
        datatype=struct.unpack(e + "h", raw[70:72])[0],
        voxel_offset=max(offset, NIFTI1_SIZE) if single else max(offset, 0),
        pixdim=struct.unpack(e + "8f", raw[76:108]),
        qform_code=struct.unpack(e + "h", raw[252:254])[0],
        sform_code=struct.unpack(e + "h", raw[254:256])[0],
        quaternion=struct.unpack(e + "3f", raw[256:268]),
        qoffset=struct.unpack(e + "3f", raw[268:280]),
        srow=(struct.unpack(e + "4f", raw[280:296]), struct.unpack(e + "4f", raw[296:312]), struct.unpack(e + "4f", raw[312:328])),
    )


def _parse_nifti2(raw: bytes, e: str) -> Optional[NiftiHeader]:
    dim = struct.unpack(e + "8q", raw[16:80])
    single = raw[4:7] != b"ni2"
    offset = struct.unpack(e + "q", raw[168:176])[0]
    return NiftiHeader(
        version=2,
        single_file=single,
        dimensions=tuple(dim[1:1 + min(max(dim[0], 0), 7)]),
        datatype=struct.unpack(e + "h", raw[12:14])[0],
        voxel_offset=max(offset, NIFTI2_SIZE) if single else max(offset, 0),
        pixdim=struct.unpack(e + "8d", raw[104:168]),
        qform_code=struct.unpack(e + "i", raw[344:348])[0],
        sform_code=struct.unpack(e + "i", raw[348:352])[0],
        quaternion=struct.unpack(e + "3d", raw[352:376]),
        qoffset=struct.unpack(e + "3d", raw[376:400]),
        srow=(struct.unpack(e + "4d", raw[400:432]), struct.unpack(e + "4d", raw[432:464]), struct.unpack(e + "4d", raw[464:496])),
    )


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic bytes."""
    try:
        with open(path, "rb") as file:
            return file.read(2) == b"\x1f\x8b"
    except OSError:
        return False

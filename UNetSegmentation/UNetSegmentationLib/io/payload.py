"""Is all the voxel data a volume file's header announces really there? Checked without holding it.

A reader trusts the header: a 309-byte NRRD that claims 2048×2048×2000 voxels makes ITK allocate
16.8 GB before it finds out, a cut NIfTI is read with its missing slices as zeros, a cut MetaImage
fails with "No such file or directory". :func:`describe_payload` reads the format's own header
(NRRD, NIfTI-1/2, MetaImage; for other formats it returns None) and says where the data lies, how
it is encoded and how many decoded bytes the header announces; :func:`missing_data` compares that
with the file: raw data by size, compressed data first by the most a stream of that length can
decode to (deflate expands at most 1032-fold: a gzip bomb's header is refused without decoding
it) and then, when asked, by decoding the stream in 1 MiB steps and counting (nothing is kept).

The same check tells an input that is cut short (:mod:`.volumes`) and an output that the disk cut
short (:mod:`.verified_write`). Standard library only: the process runner imports the output side
in Slicer's GUI process.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Tuple

from UNetSegmentationLib.io.nifti_header import is_gzip, read_nifti_header

RAW, DEFLATE, TEXT, HEX = "raw", "deflate", "text", "hex"
#: the most one byte of a deflate stream decodes to (RFC 1951: a 258-byte match costs at least two bits)
MAX_DEFLATE_RATIO = 1032
_HEADER_LIMIT = 1 << 20  # a text header longer than this is no header
_STEP = 1 << 20  # bytes decoded at a time while counting

_NRRD_TYPES = {
    1: ("signed char", "int8", "uchar", "unsigned char", "uint8"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "ushort", "unsigned short", "unsigned short int", "uint16"),
    4: ("int", "signed int", "int32", "uint", "unsigned int", "uint32", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "ulonglong",
        "unsigned long long", "unsigned long long int", "uint64", "double"),
}
NRRD_TYPE_BYTES = {name: size for size, names in _NRRD_TYPES.items() for name in names}
NRRD_ENCODINGS = {"raw": RAW, "gz": DEFLATE, "gzip": DEFLATE, "txt": TEXT, "text": TEXT, "ascii": TEXT, "hex": HEX}
#: MetaIO's MET_ValueTypeSize (MET_LONG is 4 bytes there)
META_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_ASCII_CHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                   "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


@dataclass(frozen=True)
class Payload:
    """Where a volume file's voxel data lies and what its header announces."""

    format: str  # "NRRD", "NIfTI", "MetaImage"
    data_file: Path
    offset: int  # where the (encoded) data starts in data_file; -1: the raw data is the file's last bytes
    encoding: str  # RAW, DEFLATE (gzip or zlib), TEXT, HEX
    expected_bytes: int  # decoded bytes the header announces (voxels × bytes per voxel, plus a decoded byte skip)
    compressed_bytes: Optional[int] = None  # the encoded length the header states (MetaImage's CompressedDataSize)
    value_bytes: int = 1  # bytes per voxel component: TEXT data holds expected_bytes / value_bytes numbers


def format_bytes(count: float) -> str:
    """``16.8 GB``, ``309 bytes``: decimal units, as file managers show sizes."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} bytes"


def file_start(path: Path, count: int = 8) -> Optional[bytes]:
    """The first ``count`` bytes of ``path`` (a format's magic), or None when it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read(count)
    except OSError:
        return None


def describe_payload(path: Path) -> Optional[Payload]:
    """The payload of the NRRD, NIfTI or MetaImage file ``path``; None for other formats, or when the header
    does not say enough (multi-file data, an unknown voxel type): the reader then decides alone."""
    path = Path(path)
    start = file_start(path)
    if start is None:
        return None
    if start.startswith(b"NRRD000"):
        return _nrrd_payload(path)
    if path.name.lower().endswith((".nii", ".nii.gz", ".hdr", ".hdr.gz", ".img", ".img.gz")) or start[:2] == b"\x1f\x8b":
        nifti = _nifti_payload(path)
        if nifti is not None:
            return nifti
    if path.name.lower().endswith((".mha", ".mhd")):
        return _meta_payload(path)
    return None


def missing_data(payload: Payload, decode: bool = True) -> Optional[str]:
    """What is missing, as a phrase (``its header announces 16.8 GB of voxel data but the file holds 201 bytes``),
    or None when the data is all there. ``decode``: decode compressed data to its end marker and count it (its
    checksum is checked on the way: readers do not all check it); else only the bound of what its length can hold."""
    try:
        size = payload.data_file.stat().st_size
    except FileNotFoundError:
        return f"its data file {payload.data_file} is missing"
    except OSError as error:
        return f"its data file {payload.data_file} cannot be read ({error.strerror or error})"
    expected = payload.expected_bytes
    if payload.offset < 0:  # raw data at the end of the file
        held = size
    else:
        held = max(size - payload.offset, 0)
    announced = f"its header announces {format_bytes(expected)} of voxel data"
    if payload.encoding == RAW:
        return None if held >= expected else f"{announced} but the file holds {format_bytes(held)}"
    if payload.encoding in (TEXT, HEX):
        least = 2 * (expected // max(payload.value_bytes, 1)) - 1 if payload.encoding == TEXT else 2 * expected  # a digit and a separator per number; two digits per byte
        return None if held >= least else f"{announced}, written as {payload.encoding} that needs at least {format_bytes(least)}, but the file holds {format_bytes(held)}"
    if payload.compressed_bytes is not None:
        held = min(held, max(payload.compressed_bytes, 0))
    if expected > MAX_DEFLATE_RATIO * held + 1024:
        return f"{announced} but its {format_bytes(held)} of compressed data can hold at most {format_bytes(MAX_DEFLATE_RATIO * held + 1024)}"
    if not decode:
        return None
    with open(payload.data_file, "rb") as file:
        file.seek(payload.offset)
        decoded, ended, complaint = decoded_length(file, held)
    if complaint:
        return f"its compressed voxel data is corrupt ({complaint.split(': ', 1)[-1]})"
    if decoded < expected or not ended:
        return f"{announced} but its compressed data stops after {format_bytes(decoded)}, before its end"
    return None


def ends_as_announced(payload: Payload) -> bool:
    """Whether ``payload``'s compressed data is one gzip member that ends the file with the length its header
    announces (the trailer's length modulo 2^32): how a file written whole ends; a file cut short ends in the
    middle of its stream instead, where those four bytes are compressed data (a 2^-32 chance of matching).
    Reading the last 8 bytes instead of decoding the stream; False whenever it cannot tell (a zlib stream has
    no length)."""
    try:
        held = payload.data_file.stat().st_size - payload.offset
        if payload.encoding != DEFLATE or payload.offset < 0 or held < 20:
            return False
        with open(payload.data_file, "rb") as file:
            file.seek(payload.offset)
            magic = file.read(2)
            file.seek(payload.offset + held - 4)
            length = int.from_bytes(file.read(4), "little")
    except OSError:
        return False
    return magic == b"\x1f\x8b" and length == payload.expected_bytes % (1 << 32)


def checksum_matches(payload: Payload, decoded) -> bool:
    """Whether ``decoded`` (a buffer: what a reader made of ``payload``'s compressed data, less the decoded bytes
    before the voxels, ``payload.expected_bytes - len(decoded)``: a NIfTI's header, a NRRD's byte skip) is
    exactly what the stream holds, by the stream's own trailer: a gzip member's CRC-32 and length, a zlib
    stream's Adler-32, computed over the bytes as read (a pass over memory, a sixth of decoding the stream
    again). False whenever it cannot tell (several gzip members, bytes after the stream, values the reader
    converted): :func:`missing_data` then decodes and counts it."""
    size = memoryview(decoded).nbytes
    prefix = payload.expected_bytes - size
    try:
        held = payload.data_file.stat().st_size - payload.offset
        if payload.encoding != DEFLATE or prefix < 0 or payload.offset < 0 or held < 12:
            return False
        if payload.compressed_bytes is not None and payload.compressed_bytes != held:
            return False
        with open(payload.data_file, "rb") as file:
            file.seek(payload.offset)
            start = file.read(min(held, _STEP))
            file.seek(payload.offset + held - 8)
            trailer = file.read(8)
    except OSError:
        return False
    head = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(start, prefix) if prefix else b""
    if len(head) < prefix:
        return False
    if start[:2] == b"\x1f\x8b":  # gzip: CRC-32 and the length modulo 2^32, little-endian
        crc, length = int.from_bytes(trailer[:4], "little"), int.from_bytes(trailer[4:], "little")
        return length == payload.expected_bytes % (1 << 32) and zlib.crc32(decoded, zlib.crc32(head)) == crc
    return zlib.adler32(decoded, zlib.adler32(head)) == int.from_bytes(trailer[4:], "big")  # zlib: Adler-32, big-endian


def decoded_length(file: BinaryIO, length: int) -> Tuple[int, bool, Optional[str]]:
    """``(bytes decoded, whether the data reached its end marker, the decoder's complaint or None)`` for the gzip
    or zlib stream(s) in the next ``length`` bytes of ``file``, decoded 1 MiB at a time and counted, never kept.
    Corrupt data, a wrong checksum included, is a complaint; a stream cut short is not (it just does not end)."""
    decoder, decoded, left = zlib.decompressobj(zlib.MAX_WBITS | 32), 0, length
    pending = b""
    while True:
        if not pending:
            pending = file.read(min(_STEP, left)) if left > 0 else b""
            left -= len(pending)
            if not pending:
                return decoded, False, None
        try:
            decoded += len(decoder.decompress(pending, _STEP))
        except zlib.error as error:
            return decoded, False, str(error)
        pending = decoder.unconsumed_tail
        if decoder.eof:  # a member ended: concatenated gzip members go on, anything else is the end
            rest = decoder.unused_data + pending
            if not rest.startswith(b"\x1f\x8b"):
                return decoded, True, None
            decoder, pending = zlib.decompressobj(zlib.MAX_WBITS | 32), rest


# --- the formats' headers ----------------------------------------------------------------------------


def text_header(path: Path, stop) -> Tuple[List[str], int, str]:
    """Header lines of a text-headed format before the line where ``stop(line)`` is true, the offset after
    that line, and the line itself ("" when the file ended first)."""
    lines, offset = [], 0
    with open(path, "rb") as file:
        while offset <= _HEADER_LIMIT:
            raw = file.readline(_HEADER_LIMIT)
            if not raw:
                break
            offset += len(raw)
            line = raw.decode("latin-1").rstrip("\r\n")
            if stop(line):
                return lines, offset, line
            lines.append(line)
    return lines, offset, ""


def nrrd_fields(path: Path) -> Tuple[Dict[str, str], int]:
    """A NRRD header's fields (keys lower case without spaces: ``spacedirections``; comments and ``key:=value``
    lines left out) and the offset after the header's blank line."""
    lines, offset, _ = text_header(path, lambda line: line == "")
    fields: Dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower().replace(" ", "")] = value.strip()
    return fields, offset


def meta_fields(path: Path) -> Tuple[Dict[str, str], int, str]:
    """A MetaImage header's fields before ``ElementDataFile`` (keys lower case), the offset after that line and the line."""
    lines, offset, last = text_header(path, lambda line: line.split("=")[0].strip().lower() == "elementdatafile")
    return {line.split("=", 1)[0].strip().lower(): line.split("=", 1)[1].strip() for line in lines if "=" in line}, offset, last


def _nrrd_payload(path: Path) -> Optional[Payload]:
    fields, offset = nrrd_fields(path)
    encoding = NRRD_ENCODINGS.get(fields.get("encoding", "").lower())
    element = NRRD_TYPE_BYTES.get(fields.get("type", "").lower().replace("_t", ""))
    sizes = _integers(fields.get("sizes", ""))
    if encoding is None or element is None or not sizes or any(s <= 0 for s in sizes):
        return None
    data_file = path
    if "datafile" in fields:
        name = fields["datafile"].split()
        if len(name) != 1 or name[0] == "LIST":  # a list or a pattern of files: the reader checks those
            return None
        data_file, offset = path.parent / name[0], 0
    line_skip, byte_skip = _integer(fields.get("lineskip", "0")), _integer(fields.get("byteskip", "0"))
    if line_skip is None or byte_skip is None or line_skip < 0:
        return None
    offset = _after_lines(data_file, offset, line_skip)
    expected = math.prod(sizes) * element
    if encoding == RAW:
        offset = -1 if byte_skip == -1 else offset + max(byte_skip, 0)
    elif encoding == DEFLATE and byte_skip > 0:
        expected += byte_skip  # skipped after decoding
    return Payload("NRRD", data_file, offset, encoding, expected, value_bytes=element)


def _after_lines(path: Path, offset: int, count: int) -> int:
    """The offset after ``count`` more lines of ``path`` from ``offset`` (NRRD's line skip)."""
    if count == 0:
        return offset
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            for _ in range(count):
                line = file.readline(_HEADER_LIMIT)
                if not line:
                    break
                offset += len(line)
    except OSError:
        pass
    return offset


def _nifti_payload(path: Path) -> Optional[Payload]:
    header = read_nifti_header(path)
    if header is None or header.data_bytes is None:
        return None
    data_file = path
    if not header.single_file:  # a .hdr/.img pair: the voxels are in the .img (possibly gzip-compressed)
        stem = path.name[: -len(".gz")] if path.name.lower().endswith(".gz") else path.name
        image_names = [stem[:-4] + ".img", stem[:-4] + ".img.gz"]
        data_file = next((path.with_name(n) for n in image_names if path.with_name(n).exists()), path.with_name(image_names[0]))
    if is_gzip(data_file):  # compressed: the offset counts decoded bytes
        return Payload("NIfTI", data_file, 0, DEFLATE, header.voxel_offset + header.data_bytes)
    return Payload("NIfTI", data_file, header.voxel_offset, RAW, header.data_bytes)


def _meta_payload(path: Path) -> Optional[Payload]:
    fields, offset, last = meta_fields(path)
    if not last:
        return None
    location = last.split("=", 1)[1].strip() if "=" in last else ""
    sizes, element = _integers(fields.get("dimsize", "")), META_TYPE_BYTES.get(fields.get("elementtype", "").upper())
    channels = _integer(fields.get("elementnumberofchannels", "1"))
    if not sizes or element is None or channels is None or channels < 1 or any(s <= 0 for s in sizes) or "%" in location or location.upper().startswith("LIST"):
        return None
    expected = math.prod(sizes) * element * channels
    compressed = fields.get("compresseddata", "false").lower() == "true"
    binary = fields.get("binarydata", "true").lower() != "false"
    if location.upper() != "LOCAL":
        data_file, skip = path.parent / location, _integer(fields.get("headersize", "0"))
        offset = -1 if skip == -1 and not compressed else max(skip or 0, 0)
    else:
        data_file = path
    encoding = DEFLATE if compressed else (RAW if binary else TEXT)
    compressed_size = _integer(fields.get("compresseddatasize", "")) if compressed else None
    return Payload("MetaImage", data_file, offset, encoding, expected, compressed_size, element)


def _integers(text: str) -> List[int]:
    values = [_integer(part) for part in text.split()]
    return [] if any(v is None for v in values) else values  # type: ignore[misc]


def _integer(text: str) -> Optional[int]:
    text = text.strip()
    return int(text) if re.fullmatch(r"[+-]?[0-9]{1,18}", text) else None

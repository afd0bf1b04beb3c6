"""Read a checkpoint's metadata without torch or safetensors: only ``json`` and ``struct``.

The Slicer panel shows a checkpoint's classes, architecture and per-depth metrics as soon as the
user picks the file, before PyTorch is even installed. A safetensors file starts with an 8-byte
little-endian header length followed by that many bytes of JSON; our metadata is the JSON string
stored under ``header["__metadata__"]["unetseg"]`` (see :mod:`UNetSegmentationLib.model.checkpoint`).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Dict, Union

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.metadata import METADATA_KEY, ModelMetadata

SAFETENSORS, TORCH = "safetensors", "torch"
#: safetensors itself refuses headers above 100 MB; ours are a few kB
MAX_HEADER_BYTES = 100 * 1024 * 1024
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_MARK = 0x80

PathLike = Union[str, "os.PathLike[str]"]


def checkpoint_kind(path: PathLike) -> str:
    """``"safetensors"`` or ``"torch"`` (a plain state dict), decided by the bytes; else a :class:`UserError`."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            head = file.read(9)
            size = os.fstat(file.fileno()).st_size
    except FileNotFoundError:
        raise UserError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint is a folder, not a file: {path}") from None
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    if size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes)")
    if len(head) == 9 and head[8:9] == b"{":
        return SAFETENSORS
    if head.startswith(_ZIP_MAGIC) or (head and head[0] == _PICKLE_PROTOCOL_MARK):
        return TORCH
    raise UserError(f"{path} is not a checkpoint: neither a safetensors file nor a PyTorch file (unknown magic bytes {head[:4]!r})")


def read_safetensors_header(path: PathLike) -> Dict[str, Any]:
    """The JSON header of a safetensors file (tensor table plus ``__metadata__``), validated for size."""
    path = Path(path)
    if checkpoint_kind(path) != SAFETENSORS:
        raise UserError(f"{path} is a plain PyTorch file: it has no metadata")
    size = path.stat().st_size
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise UserError(f"checkpoint {path} is truncated or corrupt: its header says {length} bytes but the file has {size}")
        raw = file.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise UserError(f"checkpoint {path} is corrupt: its header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise UserError(f"checkpoint {path} is corrupt: its header is not a JSON object")
    return header


def read_metadata(path: PathLike) -> ModelMetadata:
    """The validated :class:`ModelMetadata` of a safetensors checkpoint, without torch."""
    path = Path(path)
    header = read_safetensors_header(path)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise UserError(
            f"{path} is a safetensors file without UNetSegmentation metadata (no {METADATA_KEY!r} header entry); "
            "create checkpoints with 'unetseg create' or 'unetseg train'"
        )
    return ModelMetadata.loads(metadata[METADATA_KEY], source=str(path))

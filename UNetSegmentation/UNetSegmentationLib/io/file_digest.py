"""A file's SHA-256: the identity of a checkpoint (the ONNX cache's binding, a fine-tuned model's
lineage, a cohort's manifest key and DICOM SEG), read in 1 MiB blocks so a large file is never held
whole. (``hashlib.file_digest`` does this from Python 3.11; the engine still runs on 3.9.)"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Union


def file_digest(path: Union[str, Path]) -> "hashlib._Hash":
    """A SHA-256 hash object fed with the file's bytes (callers may ``copy()`` it and go on feeding it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest


def file_sha256(path: Union[str, Path]) -> str:
    """The file's SHA-256, hex."""
    return file_digest(path).hexdigest()

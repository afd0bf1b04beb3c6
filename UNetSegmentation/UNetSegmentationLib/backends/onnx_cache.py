"""Where ONNX exports of a checkpoint are kept, and the key that binds an export to its checkpoint.

Decides which file an export of a checkpoint, depth and guidance is (its name and cache key) and
where it may live (beside the checkpoint, then the cache folder; a shipped export beside the model).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import List

from UNetSegmentationLib.model.depth import depth_tag


EXPORT_VERSION = 2  # 2: the decision (chosen channel, confidence) instead of the probabilities


OPSET = 18


SUFFIX = ".onnx"


SHIPPED_SUFFIX = ".shipped.onnx"


def cache_dir() -> Path:
    if os.environ.get("UNETSEG_CACHE_DIR"):
        return Path(os.environ["UNETSEG_CACHE_DIR"]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unetseg" / "onnx"


def content_digest(path: Path):
    """A SHA-256 hash object fed with a checkpoint file's bytes (keys continue from copies of it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def cache_key(checkpoint, depth, guidance: bool, portable: bool = False, content=None) -> str:
    """The export's identity: the checkpoint's bytes (``content``: their :func:`content_digest`, when
    already known) and metadata, depth, guidance, export format, opset and (unless ``portable``: a
    shipped export, checked when it was made, serves every installation) the installed PyTorch's version."""
    digest = (content if content is not None else content_digest(checkpoint.path)).copy()
    identity = {"metadata": checkpoint.metadata.to_json(), "depth": depth, "guidance": bool(guidance), "export": EXPORT_VERSION, "opset": OPSET}
    if not portable:
        identity["torch"] = torch_version()
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def torch_version() -> str:
    """The installed PyTorch's version, read without importing it (the cache key needs it on every run)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        import torch

        return torch.__version__


def export_name(checkpoint, depth, key: str) -> str:
    stem = checkpoint.path.name
    for suffix in (".safetensors", ".pth", ".pt"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}.{depth_tag(depth)}.{key}{SUFFIX}"


def cache_locations(checkpoint) -> List[Path]:
    """Where an export of ``checkpoint`` may live, in the order they are tried."""
    return [checkpoint.path.resolve().parent, cache_dir()]


def shipped_export(checkpoint, depth, guidance: bool = True, content=None) -> Path:
    """Where an export shipped with ``checkpoint`` lies: beside it, named by the portable key (the
    bundled model ships its recommended depth, so the Slicer module's first run needs no export
    and imports no PyTorch). Made by ``Resources/Tools/ship_onnx_export.py``."""
    key = cache_key(checkpoint, depth, guidance, portable=True, content=content)
    return checkpoint.path.resolve().parent / export_name(checkpoint, depth, key).replace(SUFFIX, SHIPPED_SUFFIX)

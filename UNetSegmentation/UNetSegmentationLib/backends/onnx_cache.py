"""Where ONNX exports of a checkpoint are kept, and the binding that ties an export to its checkpoint.

Decides which file an export of a checkpoint, depth and guidance is (its name and cache key), where
it may live (beside the checkpoint, then the cache folder; a shipped export beside the model), and
whether a file found there may serve a run:

- *bound*: every export carries in its own metadata the SHA-256 binding of the checkpoint's bytes
  (weights and metadata, the calibration temperature included: a recalibrated checkpoint never runs an
  export made before), the depth, the guidance, the export format and opset (and PyTorch's
  version, except in the portable binding a shipped export is found by). The file name holds only a
  prefix of it; before an export is used, its stored binding must equal the one computed from the
  checkpoint (:func:`export_problem`), so another model's export copied over a cached one, a file
  without the binding, or one with nonsense in its properties is never trusted: it is made again.
  A cached file another user owns, or that every user may write, is not trusted either
  (:func:`foreign_export_problem`).
- *written safely*: an export is written under a temporary name (:func:`partial_export`), created
  with the ordinary permissions (0666 less the umask, like any file the user makes) and locked
  (``flock``) while it is written; a later run removes the partial files whose writer is gone
  (:func:`remove_abandoned_partials`: the lock dies with its process).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import time
from pathlib import Path
from typing import Iterator, List, Mapping, Optional

try:
    import fcntl
except ImportError:  # Windows: partial exports are judged by their age alone
    fcntl = None

from UNetSegmentationLib.io.file_digest import file_digest
from UNetSegmentationLib.model.depth import depth_tag


EXPORT_VERSION = 3  # 3: the probabilities again (resampled onto the input grid before the decision); 2 was the decision


OPSET = 18


SUFFIX = ".onnx"


SHIPPED_SUFFIX = ".shipped.onnx"


PARTIAL_SUFFIX = ".partial.onnx"


#: export properties: the binding of the checkpoint it was made from (with and without PyTorch's version)
BINDING, PORTABLE_BINDING = "unetseg.binding", "unetseg.portable_binding"
#: ... the multiple the input's rows and columns are padded to, and the largest difference from PyTorch found
REQUIRED_MULTIPLE, CHECKED_DIFFERENCE = "unetseg.required_multiple", "unetseg.max_abs_difference"
#: a partial export older than this is abandoned where no lock can tell (no ``fcntl``: Windows)
ABANDONED_AFTER_S = 3600.0
#: ... and one younger than this is left alone (its writer may not hold its lock yet)
SETTLING_S = 30.0


def cache_dir() -> Path:
    if os.environ.get("UNETSEG_CACHE_DIR"):
        return Path(os.environ["UNETSEG_CACHE_DIR"]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unetseg" / "onnx"


def content_digest(path: Path):
    """A SHA-256 hash object fed with a checkpoint file's bytes (keys continue from copies of it)."""
    return file_digest(path)


def export_binding(checkpoint, depth, guidance: bool, portable: bool = False, content=None) -> str:
    """The export's identity, a SHA-256 in hex: the checkpoint's bytes (``content``: their
    :func:`content_digest`, when already known) and metadata, depth, guidance, export format, opset
    and (unless ``portable``: a shipped export, checked when it was made, serves every installation)
    the installed PyTorch's version. Stored in the export (:data:`BINDING`, :data:`PORTABLE_BINDING`)."""
    digest = (content if content is not None else content_digest(checkpoint.path)).copy()
    identity = {"metadata": checkpoint.metadata.to_json(), "depth": depth, "guidance": bool(guidance), "export": EXPORT_VERSION, "opset": OPSET}
    if not portable:
        identity["torch"] = torch_version()
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cache_key(checkpoint, depth, guidance: bool, portable: bool = False, content=None) -> str:
    """The part of :func:`export_binding` an export's file name holds (16 hex digits)."""
    return export_binding(checkpoint, depth, guidance, portable, content)[:16]


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


def export_problem(properties: Mapping[str, str], binding: str, binding_property: str = BINDING) -> Optional[str]:
    """Why an export whose metadata holds ``properties`` may not serve the checkpoint whose binding is
    ``binding`` (None: it may): it must carry exactly that binding (under ``binding_property``), a
    usable padding multiple and a difference from PyTorch within the tolerance it was checked to."""
    from UNetSegmentationLib.backends.plan import ONNX_TOLERANCE  # (plan imports nothing of the ONNX side)

    stored = properties.get(binding_property)
    if stored is None:
        return "it carries no record of the checkpoint it was made from"
    if stored != binding:
        return "it was made from another checkpoint (or for another depth or PyTorch version)"
    multiple = properties.get(REQUIRED_MULTIPLE, "")
    if not (multiple.isascii() and multiple.isdigit() and 1 <= int(multiple) <= 4096):
        return f"its padding multiple {multiple[:40]!r} is not a number in 1..4096"
    try:
        difference = float(properties.get(CHECKED_DIFFERENCE, ""))
    except ValueError:
        difference = float("nan")
    if not 0 <= difference <= ONNX_TOLERANCE:
        return f"its recorded difference from PyTorch {properties.get(CHECKED_DIFFERENCE, '')[:40]!r} is not within {ONNX_TOLERANCE:g}"
    return None


def foreign_export_problem(path: Path) -> Optional[str]:
    """Why a cached export at ``path`` cannot be trusted whatever it holds (None: it can be): a file
    another user owns, or one every user may write (anyone could have put a crafted export there).
    Where the system has no owners (Windows) nothing is refused here."""
    if not hasattr(os, "getuid"):
        return None
    status = path.stat()
    if status.st_uid != os.getuid():
        return f"it belongs to another user (uid {status.st_uid})"
    if status.st_mode & 0o002:
        return "every user may write it"
    return None


@contextlib.contextmanager
def partial_export(target: Path) -> Iterator[Path]:
    """A new temporary file beside ``target`` to write an export into, with the permissions of any new
    file (0666 less the umask), locked while the block runs (:func:`remove_abandoned_partials` leaves
    it alone meanwhile) and removed after it unless it was renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f"{target.name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
    handle: Optional[int] = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    if fcntl is None:  # no lock to hold (and Windows renames no open file)
        os.close(handle)
        handle = None
    try:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield path
    finally:
        if handle is not None:
            os.close(handle)
        try:
            path.unlink()
        except FileNotFoundError:  # renamed into place
            pass


def remove_abandoned_partials(folder: Path, now: Optional[float] = None) -> List[Path]:
    """Remove the partial exports in ``folder`` that no run is writing any more (a run killed while it
    exported leaves one): their lock is free (or, without ``fcntl``, they are older than
    :data:`ABANDONED_AFTER_S`). Returns what was removed; a folder that cannot be read or written is left as it is."""
    removed = []
    now = time.time() if now is None else now
    try:
        candidates = [p for p in Path(folder).iterdir() if p.name.endswith(PARTIAL_SUFFIX)]
    except OSError:
        return removed
    for path in candidates:
        try:
            age = now - path.stat().st_mtime
            if age < SETTLING_S or (fcntl is None and age < ABANDONED_AFTER_S):
                continue
            if fcntl is None:
                path.unlink()
                removed.append(path)
                continue
            handle = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer holds it
            path.unlink()
            removed.append(path)
        except OSError:
            pass
        finally:
            os.close(handle)
    return removed

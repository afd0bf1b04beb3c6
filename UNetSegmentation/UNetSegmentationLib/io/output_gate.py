"""The one gate every file or folder the engine writes passes before any work: label maps, segmentations,
DICOM SEGs, probability maps, review lists, manifests, QC folders, exports, created and trained models.

Why one gate: each output kind used to check a little of its own (``predict``'s label map the most,
``--manifest`` nothing), so a manifest could be appended to a scan, a checkpoint or the bundled model,
and hang on a FIFO. :func:`check_output` says, from the file system alone and without opening
anything, whether a path may be written:

- it stays inside the folder the user named (``inside``): no ``..`` or absolute name escaping it, no
  symbolic link leading out of it;
- it is no special file (FIFO, device, socket: opening one may block forever or write to hardware) and
  no broken symbolic link (writing through it would create a file wherever it points);
- a file is not a folder and a folder is not a file;
- it is none of the bundled model's files (the model, its shipped ONNX export, its card): ``unetseg demo``
  and the panel need them intact;
- it is none of the paths the run reads (``protected``: the inputs, the checkpoint in use), nor a file
  inside a protected folder (a DICOM series' slice);
- an existing file is replaced only with ``overwrite``.

Format rules (extensions), free disk space and the lock of one writer per output stay with
:func:`~.outputs.check_output_path`, which asks this gate first. Standard library only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable, Optional, Union

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.bundled_files import bundled_files, models_folder
from UNetSegmentationLib.io.path_names import path_problem

FILE, FOLDER = "file", "folder"
PathLike = Union[str, "os.PathLike[str]"]


def check_output(
    path: PathLike,
    *,
    what: str,
    overwrite: bool,
    inside: Optional[PathLike] = None,
    protected: Iterable[PathLike] = (),
    kind: str = FILE,
) -> Path:
    """The resolved ``path`` if the engine may write it (a ``kind`` of ``"file"`` or ``"folder"``), else a
    :class:`UserError` naming ``what`` and the way out. Nothing is opened or created."""
    if kind not in (FILE, FOLDER):
        raise ValueError(f"kind must be {FILE!r} or {FOLDER!r}, got {kind!r}")
    text = os.fspath(path)
    if not text or "\0" in text:
        raise UserError(f"{what}: {text!r} is no file name")
    problem = path_problem(text)  # a name ITK's writers abort on (not UTF-8) or no file system holds (io/path_names)
    if problem:
        raise UserError(f"{what}: {problem}")
    path = Path(text)
    if inside is not None:
        _check_inside(path, Path(inside), what)
    resolved = path.resolve()
    _check_kind(path, resolved, what, kind)
    _check_not_bundled(resolved, what, kind)
    _check_not_protected(path, resolved, what, protected)
    if kind == FILE and os.path.lexists(path) and not overwrite:
        raise UserError(f"{what} {path} already exists; pass --overwrite to replace it")
    return resolved


def _check_inside(path: Path, inside: Path, what: str) -> None:
    """``path`` lies in ``inside``, written as a name (no absolute escape, no ``..`` out) and on the disk (no link out)."""
    folder = os.path.abspath(inside)
    if not _is_within(os.path.abspath(path), folder):
        raise UserError(f"{what} {path} lies outside the folder {inside} it must be written in; give a plain name inside it (no '..', no absolute path)")
    if not _is_within(str(path.resolve()), str(Path(folder).resolve())):
        raise UserError(f"{what} {path} leads outside the folder {inside} through a symbolic link; give a name inside it")


def _is_within(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives (Windows)
        return False


def _check_kind(path: Path, resolved: Path, what: str, kind: str) -> None:
    """No special file, no broken link, a file where a file is meant and a folder where a folder is meant."""
    try:
        status = os.stat(path)  # follows links: what a write would reach
    except FileNotFoundError:
        if os.path.islink(path):
            raise UserError(f"{what} {path} is a broken symbolic link (to {os.readlink(path)}); remove it or choose another name") from None
        status = None
    except OSError as error:
        raise UserError(f"cannot write {what} {path}: {error.strerror or error}") from None
    if status is not None:
        special = _special_kind(status.st_mode)
        if special:
            raise UserError(f"{what} {path} is a {special}, not a regular {kind}; choose another name")
        if kind == FILE and stat.S_ISDIR(status.st_mode):
            raise UserError(f"{what} {path} is a folder; give a file name")
        if kind == FOLDER and not stat.S_ISDIR(status.st_mode):
            raise UserError(f"{what} {path} is a file, not a folder; give a folder name")
    parent = resolved.parent
    try:
        parent_status = os.stat(parent)
    except OSError:
        return  # a missing folder: the writer (or check_output_path) says so, or a folder output creates it
    if not stat.S_ISDIR(parent_status.st_mode):
        raise UserError(f"cannot write {what} {path}: {parent} is not a folder")


def _special_kind(mode: int) -> Optional[str]:
    """``"FIFO (named pipe)"`` etc. for a special file's mode; None for regular files, folders and links."""
    for test, name in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return None


def _check_not_bundled(resolved: Path, what: str, kind: str) -> None:
    """Neither a bundled model's file nor, for a folder output, the bundled models' folder."""
    folder = models_folder().resolve()
    if kind == FOLDER and _is_within(str(resolved), str(folder)):
        raise UserError(f"{what} {resolved} is in the bundled models' folder {folder}; choose another folder")
    for bundled in bundled_files():
        if _same(resolved, bundled):
            raise UserError(f"{what} {resolved} is a file of the bundled model (unetseg demo and the Slicer module need it); choose another name")


def _check_not_protected(path: Path, resolved: Path, what: str, protected: Iterable[PathLike]) -> None:
    """Not a path the run reads (an input, the checkpoint), nor an existing file inside a protected folder."""
    exists = os.path.lexists(path)
    for item in protected:
        other = Path(os.fspath(item))
        if _same(resolved, other):
            raise UserError(f"{what} {path} would overwrite the input or checkpoint {other} that this run reads; choose another name")
        if exists and other.is_dir() and _is_within(str(resolved), str(other.resolve())):
            raise UserError(f"{what} {path} would overwrite a file of the input folder {other}; choose another name")


def _same(resolved: Path, other: Path) -> bool:
    """Whether ``resolved`` and ``other`` name the same file: by path, or as the same inode (a hard link)."""
    try:
        if resolved == other.resolve():
            return True
    except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before Python 3.13): not comparable by path
        pass
    try:
        return os.path.samestat(os.stat(resolved), os.stat(other))
    except OSError:
        return False

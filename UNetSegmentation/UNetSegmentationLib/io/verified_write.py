"""A written file takes its final name only when it is complete: on the disk, and holding all its data.

ITK's NIfTI writer does not notice a full disk (it exits 0 and leaves a cut file that ITK then reads
back without an error, the missing voxels as zeros), and an operating system may report a full disk
only when the data is flushed. So before :func:`~.outputs.atomic_output` renames a temporary file,
:func:`verify_written` flushes it to the disk (``fsync``: a late "no space" or I/O error surfaces
here) and, for volume formats, checks with :mod:`.payload` that the file holds every byte of voxel
data its own header announces: a gzip stream by the length in its trailer at the file's end (a cut file
ends elsewhere in its stream), other compressed data by decoding it to its end. After the rename the folder is
flushed too, so the new name survives a power cut. Standard library only (see :mod:`.payload`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.payload import describe_payload, ends_as_announced, format_bytes, missing_data

#: errors that mean the disk (or the user's quota) is full
FULL_DISK_ERRORS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
#: errors of fsync that mean the data did not reach the disk (others, e.g. EINVAL: the file system cannot sync)
_LOST_DATA = (errno.EIO, *FULL_DISK_ERRORS)
#: below this much free space no output can be written (a header alone takes a few hundred bytes)
MIN_FREE_BYTES = 64 * 1024


def free_space(folder: Path) -> int:
    """Bytes the current user may still write in ``folder``'s file system (a large number when unknown)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62


def full_disk_note(folder: Path) -> str:
    """``the disk is probably full (12.0 kB free in /data)``, or a plainer hint when it is not."""
    free = free_space(folder)
    if free < MIN_FREE_BYTES:
        return f"the disk is probably full ({format_bytes(free)} free in {folder})"
    return f"the disk may have been full or the file changed while it was written ({format_bytes(free)} free in {folder} now)"


def check_room(path: Path, what: str = "output") -> None:
    """Refuse, before any work, to write ``path`` into a folder whose disk is full."""
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    free = free_space(folder)
    if free < MIN_FREE_BYTES:
        raise UserError(f"cannot write {what} {path}: the disk holding {folder} is full ({format_bytes(free)} free); free some space or choose another folder")


def flush_to_disk(path: Path, final: Path) -> None:
    """``fsync`` ``path``; a write the disk lost (full, I/O error) is a :class:`UserError` naming ``final``."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise UserError(f"cannot write {final}: {error.strerror or error}") from None
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno in _LOST_DATA:
            raise UserError(f"cannot write {final}: {error.strerror} ({full_disk_note(final.parent)})") from None
    finally:
        os.close(descriptor)


def verify_written(path: Path, final: Path, volume: bool) -> None:
    """Flush ``path`` (the temporary file of ``final``) to the disk and, for a ``volume`` format, check that it
    holds all the voxel data its header announces; else a :class:`UserError` naming ``final``."""
    flush_to_disk(path, final)
    if not volume:
        return
    payload = describe_payload(path)
    if payload is None:
        problem = "its header is incomplete"
    elif ends_as_announced(payload):  # a gzip stream that ends the file with its announced length: not cut short
        problem = None
    else:
        problem = missing_data(payload)
    if problem:
        raise UserError(f"cannot write {final}: the file came out incomplete ({problem}); {full_disk_note(Path(final).parent)}")


def flush_folder(folder: Path) -> None:
    """``fsync`` a folder so that a rename in it survives a power cut (POSIX; elsewhere nothing to do)."""
    if os.name != "posix":  # pragma: no cover - Windows cannot open folders
        return
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

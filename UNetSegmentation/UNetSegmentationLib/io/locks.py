"""One writer per output: an operating-system lock on ``.NAME.unetseg-lock`` beside the output.

The lock is ``flock`` on the lock file (on Windows, ``msvcrt.locking`` on its first byte), held for
the whole run. The operating system releases it when its holder ends, however it ends: a run killed
by the kernel's out-of-memory killer, a crashed run, a zombie or a recycled process id never block a
later run. The file holds the writer's process id and host, only to name the writer in the refusal
(and so that the process runner can tidy up the lock file of a child it killed).

Protocol: open (or create) the lock file, take the lock without waiting, then make sure the file
taken is still the one at that name (a holder that ends removes the file while it still holds the
lock, so a run that opened the old file retries on a fresh one), then write pid and host.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import Dict

from UNetSegmentationLib.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt

#: lock file descriptors this process holds: output path → descriptor
_held: Dict[Path, int] = {}


def lock_path(path: Path) -> Path:
    """The lock file of output ``path``: ``.NAME.unetseg-lock`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.unetseg-lock")


def _try_lock(descriptor: int) -> bool:
    """Take the exclusive lock on ``descriptor`` without waiting; False if another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK):
            return False
        raise
    return True


def _holder(descriptor: int) -> str:
    """``process N`` / ``process N on HOST`` from a held lock file's text (``an unknown process`` if unreadable)."""
    try:
        text = os.pread(descriptor, 200, 0).decode("utf-8", "replace").split() if hasattr(os, "pread") else []
    except OSError:
        text = []
    if len(text) < 2 or not text[0].isdigit():
        return "an unknown process"
    return f"process {text[0]}" if text[1] == socket.gethostname() else f"process {text[0]} on {text[1]}"


def _same_file(descriptor: int, lock: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(lock))
    except FileNotFoundError:
        return False


def claim_output(path: Path, what: str = "output") -> None:
    """Hold ``path``'s lock until :func:`release_output`, or refuse: another run is writing ``path``."""
    path = Path(path)
    lock = lock_path(path)
    for _ in range(10):
        try:
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise UserError(f"cannot write {what} {path}: {error.strerror or error}") from None
        try:
            if not _try_lock(descriptor):
                raise UserError(
                    f"{what} {path} is being written by another unetseg run ({_holder(descriptor)}); wait for it to finish "
                    f"or choose another output name (its lock file: {lock})"
                )
            if not _same_file(descriptor, lock):  # its holder removed it as we opened it: try the new one
                os.close(descriptor)
                continue
            _write_owner(descriptor, path, what, lock)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(descriptor)
            raise
        _held[path] = descriptor
        return
    raise UserError(f"cannot claim {what} {path}: its lock file {lock} keeps being replaced; is another run starting?")


def _write_owner(descriptor: int, path: Path, what: str, lock: Path) -> None:
    """Write pid and host into the held lock; a full disk ends the claim (file removed) with a message."""
    try:
        os.ftruncate(descriptor, 0)
        text = f"{os.getpid()} {socket.gethostname()}\n".encode()
        if os.write(descriptor, text) != len(text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as error:
        with contextlib.suppress(OSError):
            lock.unlink()
        reason = "the disk is full" if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) else (error.strerror or str(error))
        raise UserError(f"cannot write {what} {path}: {reason} (no room even for its lock file {lock.name})") from None


def release_output(path: Path) -> None:
    """Remove ``path``'s lock file and release the lock, if this process holds it (removed first, while held)."""
    descriptor = _held.pop(Path(path), None)
    if descriptor is None:
        return
    lock = lock_path(path)
    if _same_file(descriptor, lock):
        with contextlib.suppress(OSError):
            lock.unlink()
    with contextlib.suppress(OSError):
        os.close(descriptor)


def remove_abandoned_lock(path: Path, pid: int) -> bool:
    """Remove ``path``'s lock file if process ``pid`` wrote it and no process holds its lock now (a killed
    run's leftover); the lock is taken first, so a run that has just claimed the file is never robbed of it."""
    lock = lock_path(path)
    try:
        descriptor = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        if not _try_lock(descriptor) or not _same_file(descriptor, lock):
            return False
        text = os.pread(descriptor, 200, 0).decode("utf-8", "replace").split() if hasattr(os, "pread") else []
        if not text or text[0] != str(pid):
            return False
        lock.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(descriptor)

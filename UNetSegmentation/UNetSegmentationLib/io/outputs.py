"""Output files: checked before any work, written under a temporary name, renamed when complete.

A run that fails or is cancelled leaves no partial file and never touches an existing file unless
the user asked for ``--overwrite``. Temporary names are predictable from the writer's process id
(``.NAME.unetseg-PID.partial.EXT``) so the process runner can remove them after killing a child.

Two runs never write the same output at once: inside :func:`claiming_outputs` (``unetseg predict``),
:func:`check_output_path` also creates an exclusive lock file ``.NAME.unetseg-lock`` next to the
output (``O_CREAT | O_EXCL``, holding the writer's process id and host). A second run naming the
same output is refused with a message; a lock left by a process that no longer exists (killed) is
taken over. Locks are removed when the run ends, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from UNetSegmentationLib.errors import UserError

#: compound extensions first, so ".seg.nrrd" wins over ".nrrd"
IMAGE_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha")


def split_extension(path: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple:
    """``("name", ".nii.gz")`` for ``name.nii.gz``; ``(name, "")`` when the extension is not one of ``extensions``."""
    name = Path(path).name
    for extension in extensions:
        if name.lower().endswith(extension) and len(name) > len(extension):
            return name[: -len(extension)], name[-len(extension):]
    return name, ""


def temporary_path(path: Path, pid: int | None = None) -> Path:
    """Where ``path`` is written before the rename; keeps the extension so writers pick the format."""
    path = Path(path)
    stem, extension = split_extension(path, IMAGE_EXTENSIONS + (".safetensors", ".json", ".csv", ".png"))
    if not extension:
        stem, extension = path.stem, path.suffix
    return path.with_name(f".{stem}.unetseg-{os.getpid() if pid is None else pid}.partial{extension}")


def check_output_path(path: Path, overwrite: bool, what: str = "output", extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Path:
    """Refuse, before any work, an output we could not or should not write."""
    path = Path(path)
    if extensions and not split_extension(path, extensions)[1]:
        raise UserError(f"{what} {path}: unsupported file type; use one of {', '.join(extensions)}")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UserError(f"{what} {path} already exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {what} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: no permission to write in {parent}")
    if _claim_scopes:
        claim_output(path, what)
        _claim_scopes[-1].append(path)
    return path


# --- one writer per output ----------------------------------------------------------------------------

#: lock files this process holds: output path → lock path
_held_locks: Dict[Path, Path] = {}
#: open :func:`claiming_outputs` blocks, innermost last, each with the outputs it claimed
_claim_scopes: List[List[Path]] = []


def lock_path(path: Path) -> Path:
    """The lock file of output ``path``: ``.NAME.unetseg-lock`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.unetseg-lock")


def lock_holder(lock: Path) -> Optional[str]:
    """Who holds ``lock`` (``"process N"`` or ``"process N on HOST"``), or None when it is stale.

    Stale: no such file, or written by this process, or by a process of this host that no longer
    exists. A lock from another host, or one being written this instant, counts as held.
    """
    try:
        text = Path(lock).read_text(encoding="utf-8", errors="replace").split()
    except FileNotFoundError:
        return None
    except OSError:
        return "an unknown process"
    if len(text) < 2 or not text[0].isdigit():
        return "an unknown process"
    pid, host = int(text[0]), text[1]
    if host != socket.gethostname():
        return f"process {pid} on {host}"
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except (PermissionError, OverflowError, ValueError):
        pass
    return f"process {pid}"


def claim_output(path: Path, what: str = "output") -> None:
    """Create ``path``'s lock file exclusively, or refuse: another run is writing ``path``."""
    path = Path(path)
    lock = lock_path(path)
    for _ in range(3):
        try:
            descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = lock_holder(lock)
            if holder is None:  # left behind by a killed run: take it over
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise UserError(
                f"{what} {path} is being written by another unetseg run ({holder}); wait for it to finish or choose "
                f"another output name (if no run is active, delete {lock})"
            ) from None
        except OSError as error:
            raise UserError(f"cannot write {what} {path}: {error.strerror or error}") from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(f"{os.getpid()} {socket.gethostname()}\n")
        _held_locks[path] = lock
        return
    raise UserError(f"cannot claim {what} {path}: its lock file {lock} keeps reappearing; is another run starting?")


def release_output(path: Path) -> None:
    """Remove ``path``'s lock file if this process holds it."""
    lock = _held_locks.pop(Path(path), None)
    if lock is not None and lock_holder(lock) is None:
        with contextlib.suppress(OSError):
            lock.unlink()


@contextlib.contextmanager
def claiming_outputs() -> Iterator[None]:
    """Within the block, :func:`check_output_path` also claims each output; all claims end with the block."""
    _claim_scopes.append([])
    try:
        yield
    finally:
        for path in _claim_scopes.pop():
            release_output(path)


def claims_outputs(function):
    """Decorator: run ``function`` inside :func:`claiming_outputs`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with claiming_outputs():
            return function(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def atomic_output(paths: Sequence[Path], overwrite: bool = False) -> Iterator[List[Path]]:
    """Yield temporary paths for ``paths``; rename them all into place only if the block succeeds.

    On any exception (including cancellation) the temporary files are removed and the final paths
    are untouched.
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        if path.exists() and not overwrite:
            raise UserError(f"{path} already exists; pass --overwrite to replace it")
    temporaries = [temporary_path(p) for p in paths]
    try:
        yield temporaries
        for temporary in temporaries:
            if not temporary.exists():
                raise RuntimeError(f"writer did not create {temporary}")
        permissions = _default_file_permissions()
        for temporary, path in zip(temporaries, paths):
            os.chmod(temporary, permissions)  # some writers (safetensors) create 0600 files
            os.replace(temporary, path)
    except OSError as error:
        _remove(temporaries)
        raise UserError(f"cannot write {', '.join(map(str, paths))}: {error.strerror or error}") from None
    except BaseException:
        _remove(temporaries)
        raise


def _default_file_permissions() -> int:
    """What a plain ``open(path, "w")`` would give: 0666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            Path(path).unlink()

"""Output files: checked before any work, written under a temporary name, renamed when complete.

A run that fails or is cancelled leaves no partial file and never touches an existing file unless
the user asked for ``--overwrite``. Temporary names are predictable from the writer's process id
(``.NAME.unetseg-PID.partial.EXT``) so the process runner can remove them after killing a child.
Before the rename every file is flushed to the disk and, for volume formats, checked to hold all
the voxel data its header announces (:mod:`.verified_write`): a disk that fills up mid-write is a
message, never a cut file under the final name.

Two runs never write the same output at once: inside :func:`claiming_outputs` (``unetseg predict``),
:func:`check_output_path` also takes an operating-system lock on ``.NAME.unetseg-lock`` next to the
output (:mod:`.locks`), released when the run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.locks import claim_output, lock_path, release_output, remove_abandoned_lock
from UNetSegmentationLib.io.output_gate import check_output
from UNetSegmentationLib.io.verified_write import FULL_DISK_ERRORS, check_room, flush_folder, verify_written

__all__ = ["lock_path"]  # the lock file's name, for the process runner's tidying up

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


def remove_leftovers(outputs: Iterable[Path], pid: Optional[int]) -> None:
    """What a killed writer ``pid`` left of ``outputs``: its temporary files and its lock files (the lock
    only if nobody holds it now), never a finished output. The runner, the warm engine's client and a
    cohort's lost worker all tidy up with this."""
    if pid is None:
        return
    for path in outputs:
        with contextlib.suppress(OSError):
            temporary_path(path, pid).unlink()
        remove_abandoned_lock(Path(path), pid)


def check_output_path(
    path: Union[str, Path],
    overwrite: bool,
    what: str = "output",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    inside: Optional[Path] = None,
    protected: Iterable[Path] = (),
) -> Path:
    """Refuse, before any work, an output we could not or should not write.

    ``path`` as the user typed it: a trailing ``/`` names a folder, even one that does not exist yet.
    The extension is matched whole (``x.seg.nrrd`` is a segmentation, never a ``.nrrd`` scalar map).
    What any output must be (inside ``inside``, no special file, not the bundled model nor one of
    ``protected``, not replaced without ``overwrite``) is :func:`~.output_gate.check_output`'s to say.
    """
    text = os.fspath(path)
    path = Path(path)
    if text.endswith(("/", os.sep)) and text.strip("/" + os.sep):
        meant = path if split_extension(path, tuple(extensions))[1] else path / f"labels{extensions[0] if extensions else ''}"
        raise UserError(f"{what} {text} ends in '{text[-1]}', so it names a folder; give a file name, e.g. {meant}")
    if extensions:
        extension = split_extension(path, tuple(IMAGE_EXTENSIONS) + tuple(extensions))[1]
        if extension.lower() == ".seg.nrrd" and ".seg.nrrd" not in extensions:
            raise UserError(f"{what} {path}: .seg.nrrd is a Slicer segmentation name, but a {what} is no segmentation; use one of {', '.join(extensions)}")
        if extension.lower() not in [e.lower() for e in extensions]:
            raise UserError(f"{what} {path}: unsupported file type; use one of {', '.join(extensions)}")
    check_output(path, what=what, overwrite=overwrite, inside=inside, protected=protected)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {what} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: no permission to write in {parent}")
    check_room(path, what)
    scopes = _scopes()
    if scopes:
        claim_output(path, what)
        scopes[-1].append(path)
    return path


# --- one writer per output (:mod:`.locks`) ---------------------------------------------------------------

#: per thread, its open :func:`claiming_outputs` blocks, innermost last, each with the outputs it claimed: a
#: warm engine's request claims and releases its own outputs whatever another thread of the process does
_claims = threading.local()


def _scopes() -> List[List[Path]]:
    """This thread's open :func:`claiming_outputs` blocks."""
    if not hasattr(_claims, "scopes"):
        _claims.scopes = []
    return _claims.scopes


def claim_outputs(paths: Sequence[Path], what: str = "output") -> None:
    """Claim ``paths`` (already checked) inside this thread's innermost :func:`claiming_outputs` block."""
    scopes = _scopes()
    if not scopes:
        raise RuntimeError("claim_outputs outside a claiming_outputs block")
    for path in paths:
        claim_output(Path(path), what)
        scopes[-1].append(Path(path))


@contextlib.contextmanager
def claiming_outputs() -> Iterator[None]:
    """Within the block (on this thread), :func:`check_output_path` also claims each output; all claims end with the block."""
    scopes = _scopes()
    scopes.append([])
    try:
        yield
    finally:
        for path in scopes.pop():
            release_output(path)


@contextlib.contextmanager
def atomic_output(paths: Sequence[Path], overwrite: bool = False) -> Iterator[List[Path]]:
    """Yield temporary paths for ``paths``; rename them all into place only if the block succeeds and
    every file is verified complete (:func:`~.verified_write.verify_written`).

    On any exception (including cancellation) the temporary files are removed and the final paths
    are untouched.
    """
    paths = [Path(p) for p in paths]
    for path in paths:  # the last word before anything is written: never a special file or the bundled model
        check_output(path, what="output", overwrite=overwrite)
    temporaries = [temporary_path(p) for p in paths]
    try:
        yield temporaries
        for temporary, path in zip(temporaries, paths):
            if not temporary.exists():
                raise RuntimeError(f"writer did not create {temporary}")
            verify_written(temporary, path, volume=bool(split_extension(path)[1]))
        permissions = _default_file_permissions()
        for temporary, path in zip(temporaries, paths):
            os.chmod(temporary, permissions)  # some writers (safetensors) create 0600 files
            os.replace(temporary, path)
        for folder in {path.parent for path in paths}:
            flush_folder(folder)
    except OSError as error:
        _remove(temporaries)
        cause = f" (the disk or quota holding {paths[0].parent} is full)" if error.errno in FULL_DISK_ERRORS else ""  # the errno says it: free space, measured now, came back with the temporaries
        raise UserError(f"cannot write {', '.join(map(str, paths))}: {error.strerror or error}{cause}") from None
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

"""Output files: checked before any work, written under a temporary name, renamed when complete.

A run that fails or is cancelled leaves no partial file and never touches an existing file unless
the user asked for ``--overwrite``. Temporary names are predictable from the writer's process id
(``.NAME.unetseg-PID.partial.EXT``) so the process runner can remove them after killing a child.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, List, Sequence

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
    return path


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

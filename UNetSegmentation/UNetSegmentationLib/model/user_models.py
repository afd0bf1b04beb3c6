"""The user's model folder: where the models a user made (by "Improve the model") live, what it holds,
and how a new model gets into it.

Why an engine concept: the panel saves into it, lists it in its model choice and falls back from it,
and a model half-copied into it (a full disk, a killed Slicer) would be listed and chosen as if it were
whole. So a model is saved in one way only, :func:`save_model`: copied beside its final name as a
hidden ``.<name>.partial``, verified (same size and SHA-256 as the source, a readable model header),
and only then given its name, never over an existing file. Torch-, numpy- and SimpleITK-free (the
panel lists the folder from ``setup()``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Iterable, List, Optional, Union

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.file_digest import file_sha256
from UNetSegmentationLib.model.bundled import bundled_model_path
from UNetSegmentationLib.model.header import read_metadata

PathLike = Union[str, Path]

#: the folder, under the folder of Slicer's user settings file (``slicer.app.slicerUserSettingsFilePath``)
SUBFOLDER = ("UNetSegmentation", "Models")
SUFFIX = ".safetensors"
#: characters a model's file name keeps (others become '-')
UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
#: ``<name>-2`` ... ``<name>-999`` are tried before a name is given up
MAX_NUMBERED = 999


def user_models_folder(settings_file_path: PathLike) -> Path:
    """``<folder of Slicer's user settings file>/UNetSegmentation/Models``: beside the user's settings,
    so it survives a Slicer or extension update and is per user."""
    return Path(settings_file_path).parent.joinpath(*SUBFOLDER)


def safe_name(text: str, fallback: str = "model") -> str:
    """``text`` with only characters every file system takes (others become '-')."""
    return UNSAFE.sub("-", str(text)).strip("-.") or fallback


def check_name(name: str) -> str:
    """``name`` itself when it is a safe file stem; else one :class:`UserError`."""
    if UNSAFE.sub("", name) != name or not name.strip(".-"):
        raise UserError(f"The new model's name may hold only letters, digits, '.', '_', '+' and '-' (got {name!r}).")
    return name


def check_folder(folder: PathLike) -> Path:
    """The folder as a path; a :class:`UserError` when a file stands where the folder should be."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"The user models folder {folder} is a file.")
    return folder


def list_models(folder: Optional[PathLike]) -> List[Path]:
    """The models in the folder, newest first (none when it does not exist); hidden files (a save under
    way) are not models."""
    if folder is None or not Path(folder).is_dir():
        return []
    found = [p for p in Path(folder).iterdir() if p.suffix == SUFFIX and not p.name.startswith(".") and p.is_file()]
    return sorted(found, key=lambda p: (-p.stat().st_mtime, p.name))


def free_path(folder: PathLike, name: str, protected: Iterable[PathLike] = ()) -> Path:
    """``<folder>/<name>.safetensors`` (``-2``, ``-3``... when taken): never an existing file, never a
    path in ``protected``, never the bundled model."""
    folder, name = check_folder(folder), check_name(name)
    guarded = {Path(p).resolve() for p in protected} | {bundled_model_path().resolve()}
    for number in range(1, MAX_NUMBERED + 1):
        path = folder / (name + ("" if number == 1 else f"-{number}") + SUFFIX)
        if not path.exists() and path.resolve() not in guarded:
            return path
    raise UserError(f"The user models folder {folder} already holds {MAX_NUMBERED} models named {name}.")


def save_model(source: PathLike, folder: PathLike, name: str, protected: Iterable[PathLike] = ()) -> Path:
    """Put a copy of the model ``source`` into the folder as ``<name>.safetensors`` (see
    :func:`free_path`); returns where. The copy is verified whole (size, SHA-256, readable header)
    before it gets its name, and it never replaces a file: a failure leaves no model and no partial
    file behind (:class:`UserError` saying why)."""
    source = Path(source)
    destination = free_path(folder, name, [source, *protected])
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, partial)
        with open(partial, "rb") as file:
            os.fsync(file.fileno())
        if partial.stat().st_size != source.stat().st_size or file_sha256(partial) != file_sha256(source):
            raise UserError("the copy differs from the model that was trained")
        read_metadata(partial)  # a header that does not read is no model
        _rename_without_replacing(partial, destination)
    except (OSError, UserError) as error:
        partial.unlink(missing_ok=True)
        raise UserError(f"The new model could not be saved in {destination.parent}: {error}") from None
    return destination


def _rename_without_replacing(partial: Path, destination: Path) -> None:
    """Give ``partial`` its final name, atomically, failing if the name was taken meanwhile: a hard link
    where the file system has them, else a rename after a last check."""
    try:
        os.link(partial, destination)
    except FileExistsError:
        raise UserError(f"{destination.name} appeared in the folder meanwhile; nothing was replaced") from None
    except OSError:  # no hard links (FAT, some network shares)
        if destination.exists():
            raise UserError(f"{destination.name} appeared in the folder meanwhile; nothing was replaced") from None
        os.replace(partial, destination)
        return
    partial.unlink()

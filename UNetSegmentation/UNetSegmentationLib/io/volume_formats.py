"""Which file names are volumes the engine reads: one list for cohort discovery, training cases and messages.

Before this list, cohort discovery knew ``.nii.gz .nrrd .nii .mha .mhd`` while training also paired
``.nhdr`` headers (a detached NRRD), so a folder of ``.nhdr`` volumes trained but gave "no volume
found" as a cohort (issue 22). Every reader of volume files goes through SimpleITK, which reads all
of these; a Slicer segmentation (``.seg.nrrd``) is a result, never an input to discover.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

#: volume file name endings, compound ones first (``.nii.gz`` before ``.nii``)
VOLUME_EXTENSIONS: Tuple[str, ...] = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")
#: the segmentation ending that is no input volume (a result of ``predict``, a label file of training)
SEGMENTATION_EXTENSION = ".seg.nrrd"


def volume_extension(file_name: str) -> str:
    """The volume ending of ``file_name`` as written (``""`` when it is none); the name must be longer than it."""
    lower = file_name.lower()
    for extension in VOLUME_EXTENSIONS:
        if lower.endswith(extension) and len(file_name) > len(extension):
            return file_name[-len(extension):]
    return ""


def is_volume_name(file_name: str) -> bool:
    """Whether ``file_name`` names an input volume (a volume ending, not a ``.seg.nrrd`` segmentation)."""
    return bool(volume_extension(file_name)) and not file_name.lower().endswith(SEGMENTATION_EXTENSION)


def without_volume_extension(path: Path) -> str:
    """The file name without its volume ending (``ct01.nii.gz`` → ``ct01``); a name with none loses its last suffix."""
    name = Path(path).name
    extension = volume_extension(name)
    return name[: -len(extension)] if extension else Path(name).stem


def formats_in_words() -> str:
    """For messages: ``.nii.gz, .nrrd, .nhdr, .nii, .mha, .mhd``."""
    return ", ".join(VOLUME_EXTENSIONS)

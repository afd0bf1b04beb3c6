"""A folder as a DICOM series: which files, and whether their slices form one evenly spaced stack.

GDCM (through SimpleITK) finds the series in a folder and orders their files along the slice
normal. Before it opens anything, every entry of the folder must be a regular file or a folder: a
FIFO or a device among the slices would block the scan forever. The slice positions are read from
each file's header (no pixel data) and checked by
:func:`~UNetSegmentationLib.io.geometry_checks.dicom_stack_problem`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import SimpleITK as sitk

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.geometry_checks import dicom_stack_problem
from UNetSegmentationLib.io.native_messages import quiet_itk

IMAGE_POSITION, IMAGE_ORIENTATION = "0020|0032", "0020|0037"


def special_file_kind(mode: int) -> str:
    """``a FIFO (named pipe)``, ``a character device``, ...: what a non-regular file is, in words ('' for a file or folder)."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "" if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "not a regular file"


def check_folder_entries(folder: Path) -> None:
    """Refuse a folder holding anything a reader could block on (FIFOs, devices, sockets)."""
    try:
        entries = list(os.scandir(folder))
    except PermissionError:
        raise UserError(f"cannot read {folder}: permission denied; ask for read access or copy it to a folder you can read") from None
    except OSError as error:
        raise UserError(f"cannot read {folder}: {error.strerror or error}") from None
    for entry in entries:
        try:
            kind = special_file_kind(entry.stat().st_mode)
        except OSError:  # a broken link or a link loop: no reader gets stuck on it, GDCM skips it
            continue
        if kind:
            raise UserError(f"{folder} holds {entry.name}, which is {kind}; a DICOM series folder may hold only files")


def series_in_folder(folder: Path) -> Tuple[str, ...]:
    """The UIDs of the DICOM series in ``folder`` (not its subfolders), as GDCM finds them (none: ``()``)."""
    check_folder_entries(folder)
    with quiet_itk():
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def series_files(folder: Path, series_uid: Optional[str] = None) -> Tuple[str, ...]:
    """The files of the one DICOM series in ``folder`` (or of series ``series_uid``, ``--series``), in
    GDCM's slice order, or a :class:`UserError` that lists the series when the choice is ambiguous."""
    series = series_in_folder(folder)
    if not series:
        raise UserError(f"{folder} is a folder without a DICOM series; give a volume file or a folder holding one DICOM series")
    if series_uid is not None and series_uid not in series:
        raise UserError(f"{folder} holds no DICOM series {series_uid}; it holds {_listed(folder, series)}")
    if series_uid is None and len(series) > 1:
        raise UserError(
            f"{folder} holds {len(series)} DICOM series ({_listed(folder, series)}); choose one with --series UID, "
            "or put the series to segment in a folder of its own"
        )
    with quiet_itk():
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid or series[0]))


def _listed(folder: Path, series: Sequence[str]) -> str:
    """``UID (N files), ...``: the series of a folder as the user chooses among them."""
    with quiet_itk():
        return ", ".join(f"{uid} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))} files)" for uid in series)


def check_stack(folder: Path, names: Tuple[str, ...]) -> None:
    """Refuse a series whose slices are not evenly spaced along one normal (gaps, duplicates, a tilted gantry)."""
    positions: List[Tuple[float, ...]] = []
    orientations: List[Tuple[float, ...]] = []
    reader = sitk.ImageFileReader()
    with quiet_itk():
        for name in names:
            reader.SetFileName(name)
            try:
                reader.ReadImageInformation()
                positions.append(_numbers(reader.GetMetaData(IMAGE_POSITION), 3))
                orientations.append(_numbers(reader.GetMetaData(IMAGE_ORIENTATION), 6))
            except (RuntimeError, ValueError):
                return  # a slice without a readable position: ITK places the series by its own rules
    problem = dicom_stack_problem(str(folder), [Path(n).name for n in names], positions, orientations)
    if problem:
        raise UserError(problem)


def _numbers(text: str, count: int) -> Tuple[float, ...]:
    values = tuple(float(v) for v in text.strip().split("\\"))
    if len(values) != count:
        raise ValueError(f"expected {count} numbers, got {text!r}")
    return values

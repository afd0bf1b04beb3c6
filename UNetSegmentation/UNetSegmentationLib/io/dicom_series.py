"""A folder as a DICOM series: which files, and whether their slices form one evenly spaced stack.

GDCM (through SimpleITK) finds the series in a folder and orders their files along the slice
normal. Before it opens anything, every entry of the folder must be a regular file or a folder with
a name ITK can take (:mod:`.path_names`): a FIFO or a device among the slices would block the scan
forever, a name that is not UTF-8 aborts the process inside GDCM. GDCM leaves out, without a word,
every file it cannot parse: a slice cut short, damaged or unreadable (permissions) would silently
be missing from the volume (11 of 12 slices segmented; at either end of the stack not even a gap
shows it). :func:`check_left_out` refuses the series instead, naming the file. Each slice's
geometry is read from its header (no pixel data): it must state its pixel size, position and
orientation (:mod:`.stated_geometry`), and the slices must form one evenly spaced stack
(:func:`~UNetSegmentationLib.io.geometry_checks.dicom_stack_problem`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Collection, List, Optional, Sequence, Tuple

import SimpleITK as sitk

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.geometry_checks import dicom_stack_problem, stack_spacing
from UNetSegmentationLib.io.native_messages import native_reason, quiet_itk
from UNetSegmentationLib.io.path_names import name_problem
from UNetSegmentationLib.io.stated_geometry import missing_dicom_geometry

IMAGE_POSITION, IMAGE_ORIENTATION, PIXEL_SPACING, ROWS = "0020|0032", "0020|0037", "0028|0030", "0028|0010"
#: suffixes a slice file may carry besides none and a number (``CT.1.3.12.2.1107...16573``)
_SLICE_SUFFIXES = (".dcm", ".dicom", ".ima")


def special_file_kind(mode: int) -> str:
    """``a FIFO (named pipe)``, ``a character device``, ...: what a non-regular file is, in words ('' for a file or folder)."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "" if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "not a regular file"


def check_folder_entries(folder: Path) -> List[str]:
    """The names of the regular files in ``folder``, once it holds nothing a reader could block on (FIFOs,
    devices, sockets) and no name GDCM would abort on."""
    try:
        entries = list(os.scandir(folder))
    except PermissionError:
        raise UserError(f"cannot read {folder}: permission denied; ask for read access or copy it to a folder you can read") from None
    except OSError as error:
        raise UserError(f"cannot read {folder}: {error.strerror or error}") from None
    files = []
    for entry in entries:
        problem = name_problem(entry.name)
        if problem:
            raise UserError(f"{folder} holds a file GDCM cannot open: {problem}")
        try:
            mode = entry.stat().st_mode
        except OSError:  # a broken link or a link loop: no reader gets stuck on it, GDCM skips it
            continue
        kind = special_file_kind(mode)
        if kind:
            raise UserError(f"{folder} holds {entry.name}, which is {kind}; a DICOM series folder may hold only files")
        if stat.S_ISREG(mode):
            files.append(entry.name)
    return files


def series_in_folder(folder: Path) -> Tuple[str, ...]:
    """The UIDs of the DICOM series in ``folder`` (not its subfolders), as GDCM finds them (none: ``()``)."""
    check_folder_entries(folder)
    with quiet_itk():
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def series_files(folder: Path, series_uid: Optional[str] = None) -> Tuple[str, ...]:
    """The files of the one DICOM series in ``folder`` (or of series ``series_uid``, ``--series``), in
    GDCM's slice order, or a :class:`UserError` that lists the series when the choice is ambiguous, or
    when the folder holds a slice GDCM could not read (:func:`check_left_out`)."""
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
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid or series[0]))
        taken = set(files) if len(series) == 1 else {f for uid in series for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)}
    check_left_out(folder, {Path(f).name for f in taken})
    return files


def check_left_out(folder: Path, taken: Collection[str]) -> None:
    """Refuse a folder holding a slice that GDCM left out of every series (``taken``: the names it used): a file
    that cannot be opened, or one meant as a DICOM slice that cannot be parsed. Files that are plainly something
    else (``notes.txt``, hidden files, DICOMDIR) and readable DICOM objects without an image are left alone."""
    reader = sitk.ImageFileReader()
    for name in sorted(set(check_folder_entries(folder)) - set(taken)):
        if name.startswith(".") or name.upper() == "DICOMDIR":
            continue
        path = folder / name
        try:
            with open(path, "rb") as file:
                start = file.read(132)
        except OSError as error:
            raise UserError(
                f"cannot read {path}: {error.strerror or error}; a slice that cannot be read would be missing from the series. "
                "Ask for read access, or move the file out of the folder if it is no slice"
            ) from None
        suffix = Path(name).suffix.lower()
        if not (start[128:132] == b"DICM" or suffix in _SLICE_SUFFIXES or suffix == "" or suffix[1:].isdigit()):
            continue  # plainly not a slice
        reader.SetFileName(str(path))
        try:
            with quiet_itk():
                reader.ReadImageInformation()
            if not reader.HasMetaDataKey(ROWS):
                continue  # a DICOM object without an image (a report, a presentation state)
        except RuntimeError:
            pass
        raise UserError(
            f"{folder}: {name} cannot be read as a slice of the DICOM series (cut short or damaged?), and the series would be "
            "segmented without it; copy or export the series again, or move the file out of the folder if it is no slice"
        )


def _listed(folder: Path, series: Sequence[str]) -> str:
    """``UID (N files), ...``: the series of a folder as the user chooses among them."""
    with quiet_itk():
        return ", ".join(f"{uid} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))} files)" for uid in series)


def check_stack(folder: Path, names: Tuple[str, ...]) -> Optional[float]:
    """The slice spacing (mm along the normal; None for one slice) of a series whose every slice states its
    geometry and whose slices form one evenly spaced stack of one pixel size; else a :class:`UserError` naming
    the slice (a slice without PixelSpacing or position, gaps, duplicates, a tilted gantry)."""
    positions: List[Tuple[float, ...]] = []
    orientations: List[Tuple[float, ...]] = []
    pixel_spacings: List[Tuple[float, ...]] = []
    sizes: List[Tuple[int, ...]] = []
    reader = sitk.ImageFileReader()
    for name in names:
        reader.SetFileName(name)
        try:
            with quiet_itk():
                reader.ReadImageInformation()
            missing = missing_dicom_geometry(str(folder), Path(name).name, set(reader.GetMetaDataKeys()))
            if missing:
                raise UserError(missing)
            positions.append(_numbers(reader.GetMetaData(IMAGE_POSITION), 3))
            orientations.append(_numbers(reader.GetMetaData(IMAGE_ORIENTATION), 6))
            pixel_spacings.append(_numbers(reader.GetMetaData(PIXEL_SPACING), 2))
            sizes.append(tuple(reader.GetSize()[:2]))
        except (RuntimeError, ValueError) as error:
            raise UserError(f"{folder}: the header of slice {Path(name).name} of the DICOM series cannot be read ({native_reason(error, 120)}); copy or export the series again") from None
    problem = dicom_stack_problem(str(folder), [Path(n).name for n in names], positions, orientations, pixel_spacings, sizes)
    if problem:
        raise UserError(problem)
    return stack_spacing(positions, orientations)


def _numbers(text: str, count: int) -> Tuple[float, ...]:
    values = tuple(float(v) for v in text.strip().split("\\"))
    if len(values) != count:
        raise ValueError(f"expected {count} numbers, got {text!r}")
    return values

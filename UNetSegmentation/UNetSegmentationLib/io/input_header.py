"""What an input volume is, from its header alone: size, voxel type, grid, and what the reader will change.

SimpleITK's ``ImageFileReader.ReadImageInformation`` reads a file's header without its voxels (for a
DICOM series, the first slice's header and the number of slices). Everything the engine checks
before reading (dimension, components, emptiness, the memory a run needs, a NIfTI's transforms) is
decided on this :class:`InputHeader`, so a file that claims 17 GB of voxels is refused having
allocated nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import SimpleITK as sitk

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.geometry_checks import itk_grid_in_ras, nifti_orientation_warning, nifti_transform_warning, sform_matrix, shear_degrees
from UNetSegmentationLib.io.native_messages import native_reason, quiet_itk
from UNetSegmentationLib.io.nifti_header import NiftiHeader, read_nifti_header

SUPPORTED = "supported: NRRD, NIfTI, MHA/MHD, a DICOM series folder"
#: DICOM fields that say what a series' values mean, by tag as GDCM names them: without RescaleIntercept a CT's
#: values are the stored numbers (air near 0, not -1000 HU)
DICOM_SCAN_FIELDS = {"0008|0060": "Modality (0008,0060)", "0028|1052": "RescaleIntercept (0028,1052)", "0028|1053": "RescaleSlope (0028,1053)"}


@dataclass(frozen=True)
class InputHeader:
    """An input's header: what it holds and where, before any voxel is read."""

    path: Path
    dimension: int
    size: Tuple[int, ...]  # (i, j, k)
    pixel_type: str  # SimpleITK's words, e.g. "16-bit signed integer"
    components: int
    bytes_per_component: int
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]
    dicom_files: Tuple[str, ...] = ()  # the series' files in slice order (a DICOM folder), else ()
    reader_copies: int = 1  # voxel buffers the reader holds at once (ITK's NIfTI reader copies once: 2)
    warnings: Tuple[str, ...] = ()  # what the reader changes that the user should know (e.g. a NIfTI's other transform)
    data_verified: bool = False  # all the voxel data the header announces was found (compressed data decoded and counted)
    modality: str = ""  # a DICOM series' Modality (0008,0060): "CT", "MR", ...; "" for a volume file or where the series does not say
    absent_fields: Tuple[str, ...] = ()  # DICOM fields of DICOM_SCAN_FIELDS the series' first slice lacks (the scan check weighs them)

    @property
    def voxels(self) -> int:
        return math.prod(self.size)

    @property
    def bytes_per_voxel(self) -> int:
        return self.components * self.bytes_per_component


def read_header(path: Path, dicom_files: Sequence[str] = ()) -> InputHeader:
    """The header of the volume file ``path``, or of the DICOM series ``dicom_files`` in folder ``path``."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(dicom_files[0]) if dicom_files else str(path))
    nifti = None if dicom_files else read_nifti_header(path)
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise UserError(_unreadable(path, error, nifti)) from None
    size = tuple(int(v) for v in reader.GetSize())
    dimension = reader.GetDimension()
    if dicom_files:  # one slice's header: the series stacks len(dicom_files) of them
        size, dimension = (size[0], size[1], len(dicom_files)), 3
    header = InputHeader(
        path=Path(path),
        dimension=dimension,
        size=size,
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
        components=int(reader.GetNumberOfComponents()),
        bytes_per_component=_component_bytes(reader.GetPixelID()),
        spacing=tuple(reader.GetSpacing()),
        origin=tuple(reader.GetOrigin()),
        direction=tuple(reader.GetDirection()),
        dicom_files=tuple(dicom_files),
        reader_copies=2 if nifti is not None else 1,
        modality=reader.GetMetaData("0008|0060").strip().upper() if dicom_files and reader.HasMetaDataKey("0008|0060") else "",
        absent_fields=tuple(name for tag, name in DICOM_SCAN_FIELDS.items() if not reader.HasMetaDataKey(tag)) if dicom_files else (),
    )
    if nifti is not None and dimension == 3:
        used = itk_grid_in_ras(header.spacing, header.origin, header.direction)
        for warning in (nifti_orientation_warning(str(path), nifti), nifti_transform_warning(str(path), nifti, size, used)):
            if warning:
                header = _with_warning(header, warning)
    return header


def _with_warning(header: InputHeader, warning: str) -> InputHeader:
    return dataclasses.replace(header, warnings=header.warnings + (warning,))


def _component_bytes(pixel_id: int) -> int:
    """Bytes per voxel component of a SimpleITK pixel type (8 when SimpleITK does not know it)."""
    try:
        return int(sitk.Image([1, 1], pixel_id).GetSizeOfPixelComponent())
    except (RuntimeError, TypeError):
        return 8


def _unreadable(path: Path, error: RuntimeError, nifti: Optional[NiftiHeader]) -> str:
    """The refusal of a file the reader cannot read, with the reason we can name ourselves where there is one."""
    if nifti is not None and nifti.sform_code > 0 and nifti.qform_code <= 0:
        shear = shear_degrees(sform_matrix(nifti))
        if shear > 0.05:
            return (
                f"cannot read {path}: its NIfTI sform is sheared by {shear:.1f} degrees and it has no qform, so there is no rigid grid to read "
                "it onto; resample it onto a rigid grid first"
            )
    return f"cannot read {path} as an image ({SUPPORTED}): {native_reason(error)}"

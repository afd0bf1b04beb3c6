"""Where a volume's voxels lie must be stated by its file; a reader's invented default is refused.

Every reader fills a missing voxel size with 1 mm and a missing position with the origin, without a
word: ITK reads a NIfTI ``pixdim`` of 0 as 1 mm, a NRRD without ``space directions`` or
``spacings`` and a MetaImage without ``ElementSpacing`` at 1 mm, GDCM a DICOM slice without
PixelSpacing at 1 mm and a series without ImagePositionPatient as a stack at the origin, 1 mm apart.
The engine segments in millimetres (the model's pixel size, the neighbours' distance, the body's
box), so an invented size gives wrong labels that look right; and the labels are written on that
invented grid, where no viewer puts them over the scan. The engine therefore refuses such a file,
naming the field that is missing, instead of warning: there is no size it could assume that would
be right more often than wrong. The run goes on only with the geometry stated. Standard library only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Collection, Optional

from UNetSegmentationLib.io.nifti_header import read_nifti_header
from UNetSegmentationLib.io.payload import file_start, meta_fields, nrrd_fields

#: the DICOM fields each slice of a series must hold for its voxels to have a place: (tag as GDCM names it, name, what a reader invents)
DICOM_GEOMETRY_FIELDS = (
    ("0028|0030", "PixelSpacing (0028,0030)", "a pixel size of 1 mm"),
    ("0020|0032", "ImagePositionPatient (0020,0032)", "the slices' places (a stack at the origin, 1 mm apart)"),
    ("0020|0037", "ImageOrientationPatient (0020,0037)", "the slices' orientation"),
)
_FIX = "the reader would invent 1 mm and the labels would land on a grid no viewer puts over the scan"
_SET = "Set the voxel size (for example in Slicer's Volumes module, Volume Information) and save the volume again"
_AXES = "ijk"


def unstated_geometry(path: Path) -> Optional[str]:
    """Why the volume file ``path`` does not state its voxel size, or None when it does."""
    start = file_start(path) or b""
    if start.startswith(b"NRRD000"):
        fields, _ = nrrd_fields(path)
        if fields.get("spacedirections", "").count("(") < 3 and not _finite_numbers(fields.get("spacings", "")):  # a vector per image axis
            return f"{path} does not state its voxel size: its NRRD header has neither 'space directions' for its three axes nor 'spacings'; {_FIX}. {_SET}"
        return None
    nifti = read_nifti_header(path)
    if nifti is not None:
        unset = [_AXES[a] for a in range(min(3, len(nifti.dimensions))) if nifti.dimensions[a] > 1 and nifti.pixdim[a + 1] == 0]
        if unset:
            return f"{path} does not state its voxel size along {', '.join(unset)}: its NIfTI pixdim is 0 there; {_FIX}. {_SET}"
        return None
    if path.name.lower().endswith((".mha", ".mhd")):
        fields, _, _ = meta_fields(path)
        if "elementspacing" not in fields and "elementsize" not in fields:
            return f"{path} does not state its voxel size: its MetaImage header has no ElementSpacing; {_FIX}. {_SET}"
    return None


def missing_dicom_geometry(folder: str, name: str, present: Collection[str]) -> Optional[str]:
    """Why slice ``name`` of the DICOM series in ``folder`` has no place (the first geometry field it lacks), or None.
    ``present``: the slice's tags as GDCM names them (``0028|0030``)."""
    for tag, field, invented in DICOM_GEOMETRY_FIELDS:
        if tag not in present:
            return (
                f"{folder}: slice {name} of the DICOM series has no {field}; the reader would invent {invented}, and the labels would "
                "land on a grid no viewer puts over the scan. Export the series again with its geometry, or convert it to NRRD or NIfTI "
                "with the right voxel size and position and segment that"
            )
    return None


def _finite_numbers(text: str) -> bool:
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        return False
    return bool(values) and all(math.isfinite(v) and v != 0 for v in values)

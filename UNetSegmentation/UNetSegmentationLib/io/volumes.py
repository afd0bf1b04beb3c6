"""Input volumes: reading 3D scalar images and refusing what the engine cannot segment.

SimpleITK reads NRRD, NIfTI, MHA/MHD and DICOM series. Every refusal is a :class:`UserError` that
says why (not 3D, vector pixels, no voxels, NaN/Inf voxels, slices too large, no read permission).
Writing results on a volume's grid is :mod:`.segmentations`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.errors import UserError


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise UserError(f"{folder} is a folder without a DICOM series; give a volume file or a folder holding one DICOM series")
    if len(series) > 1:
        raise UserError(
            f"{folder} holds {len(series)} DICOM series ({', '.join(series)}); put the series to segment in a folder of its own"
        )
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def read_volume(path) -> sitk.Image:
    """A 3D scalar image, or a :class:`UserError` that says why not."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"input not found: {path}")
    _check_readable(path)
    try:
        image = _read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[-1][:200] if str(error).strip() else ""
        raise UserError(f"cannot read {path} as an image (supported: NRRD, NIfTI, MHA/MHD, a DICOM series folder): {detail}") from None
    validate_volume(image, path)
    return image


def _check_readable(path: Path) -> None:
    """Name a permission problem as such (SimpleITK would only say it cannot read the file)."""
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            with open(path, "rb") as file:
                file.read(1)
    except PermissionError:
        raise UserError(f"cannot read {path}: permission denied; ask for read access or copy it to a folder you can read") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None


def validate_volume(image: sitk.Image, source="input") -> None:
    """Refuse what the engine cannot segment: not 3D, vector/RGB pixels, or no voxels."""
    dimension = image.GetDimension()
    if dimension != 3:
        raise UserError(f"{source} is a {dimension}D image ({'x'.join(map(str, image.GetSize()))}); a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(
            f"{source} has {image.GetNumberOfComponentsPerPixel()} components per voxel ({image.GetPixelIDTypeAsString()}); "
            "a scalar (grey-value) volume is needed"
        )
    if 0 in image.GetSize():
        raise UserError(f"{source} is empty (size {image.GetSize()})")


def check_finite(volume: np.ndarray, source="input", chunk: int = 16) -> None:
    """NaN or infinite voxels make normalisation meaningless: refuse them (checked slab by slab)."""
    if not np.issubdtype(volume.dtype, np.floating):
        return
    for start in range(0, volume.shape[0], chunk):
        slab = volume[start:start + chunk]
        if not np.isfinite(slab).all():
            nan, inf = int(np.isnan(slab).sum()), int(np.isinf(slab).sum())
            raise UserError(f"{source} contains NaN or infinite voxels (from slab {start}: {nan} NaN, {inf} Inf); fix or mask them first")


def constant_value(volume: np.ndarray, chunk: int = 16) -> Optional[float]:
    """The value of every voxel if the volume is constant, else None (stops at the first slab that varies)."""
    if volume.size == 0:
        return None
    first = volume[(0,) * volume.ndim]
    for start in range(0, volume.shape[0], chunk):
        if (volume[start:start + chunk] != first).any():
            return None
    return float(first)


#: the largest slice (rows x columns) ``predict`` segments; one network call on a bigger slice needs
#: several GB even at batch size 1. Raise it with the environment variable UNETSEG_MAX_SLICE_PIXELS.
MAX_SLICE_PIXELS = 2048 * 2048


def max_slice_pixels() -> int:
    text = os.environ.get("UNETSEG_MAX_SLICE_PIXELS", "")
    return int(text) if text.strip().isdigit() and int(text) > 0 else MAX_SLICE_PIXELS


def check_slice_size(shape: Tuple[int, int], source="input") -> None:
    """Refuse slices above :func:`max_slice_pixels` with a way out, before any network call."""
    rows, columns = (int(v) for v in shape)
    limit = max_slice_pixels()
    if rows * columns > limit:
        raise UserError(
            f"{source} has slices of {rows}x{columns} pixels ({rows * columns / 1e6:.1f} million), more than the "
            f"{limit / 1e6:.1f} million{' (2048x2048)' if limit == MAX_SLICE_PIXELS else ''} one network call can hold in memory; resample it to a coarser "
            "in-plane spacing or crop it first (Slicer: Crop Volume), or raise the limit with UNETSEG_MAX_SLICE_PIXELS"
        )


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """4×4 matrix from voxel index (i, j, k) to physical LPS coordinates."""
    matrix = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix

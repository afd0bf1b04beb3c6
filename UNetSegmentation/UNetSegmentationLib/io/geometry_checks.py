"""Geometry a reader changes without a word: a NIfTI's competing transforms, a DICOM series with gaps.

ITK reads every volume onto a rigid, uniform grid (origin, spacing, an orthonormal direction). Two
inputs do not fit one and ITK fits them anyway:

- a **NIfTI file** carries two transforms, the qform (rigid) and the sform (any affine, possibly
  sheared); ITK uses one of them, or the sform with its shear removed. When the transforms disagree
  the labels land where ITK (and Slicer) put the image, and a viewer that uses the other transform
  shows them elsewhere: :func:`nifti_transform_warning` says which transform was used and by how
  many millimetres the other one differs (a ``warning`` event; the run goes on);
- a **DICOM series** is a stack of slices, each with its own position. ITK assumes they are evenly
  spaced along the slice normal: after a gap of missing slices, or with slices shifted sideways (a
  tilted gantry), every later slice would be misplaced. :func:`dicom_stack_problem` finds that from
  the slice positions; the run is refused.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from UNetSegmentationLib.io.nifti_header import NiftiHeader

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def itk_grid_in_ras(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """4×4 voxel-index → RAS matrix of the grid ITK read (ITK works in LPS)."""
    matrix = np.eye(4)
    matrix[:3, :3] = _LPS_TO_RAS @ np.asarray(direction, float).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    matrix[:3, 3] = _LPS_TO_RAS @ np.asarray(origin, float)
    return matrix


def qform_matrix(header: NiftiHeader) -> np.ndarray:
    """The qform as a 4×4 voxel → RAS matrix (NIfTI-1 method 2: quaternion, pixdim, qfac)."""
    b, c, d = (float(v) for v in header.quaternion)
    a = math.sqrt(max(1.0 - (b * b + c * c + d * d), 0.0))
    rotation = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ])
    qfac = -1.0 if header.pixdim[0] < 0 else 1.0
    steps = [abs(float(v)) if float(v) != 0 else 1.0 for v in header.pixdim[1:4]]
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([steps[0], steps[1], qfac * steps[2]])
    matrix[:3, 3] = header.qoffset
    return matrix


def sform_matrix(header: NiftiHeader) -> np.ndarray:
    """The sform as a 4×4 voxel → RAS matrix (NIfTI-1 method 3: the srow rows)."""
    matrix = np.eye(4)
    matrix[:3, :] = np.asarray(header.srow, float)
    return matrix


def corner_distance(first: np.ndarray, second: np.ndarray, size: Sequence[int]) -> float:
    """Largest distance in mm between where two voxel → world matrices put the volume's corner voxels."""
    corners = np.array([[i, j, k, 1.0] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    return float(np.max(np.linalg.norm((corners @ first.T - corners @ second.T)[:, :3], axis=1)))


def shear_degrees(matrix: np.ndarray) -> float:
    """How far (degrees) the most skewed pair of a transform's axes is from a right angle (0: no shear)."""
    if not np.isfinite(matrix[:3, :3]).all() or np.abs(matrix[:3, :3]).max() > 1e12:
        return 0.0  # not a transform anything could follow: nothing to measure
    with np.errstate(all="ignore"):
        axes = [matrix[:3, a] / (np.linalg.norm(matrix[:3, a]) or 1.0) for a in range(3)]
        cosines = [abs(float(np.dot(axes[x], axes[y]))) for x, y in ((0, 1), (0, 2), (1, 2))]
    return max(90.0 - math.degrees(math.acos(min(c, 1.0))) for c in cosines)


def nifti_transform_warning(source: str, header: NiftiHeader, size: Sequence[int], used: np.ndarray) -> Optional[str]:
    """A warning when a transform the NIfTI file sets (code > 0) differs from the grid ITK read (``used``,
    voxel → RAS), naming the transform ITK followed and the difference in mm; None when they agree."""
    makers = (("qform", header.qform_code, qform_matrix), ("sform", header.sform_code, sform_matrix))
    with np.errstate(all="ignore"):  # a header may hold NaN, Inf or 1e38: such a transform is not compared
        forms = {name: make(header) for name, code, make in makers if code > 0}
        forms = {name: matrix for name, matrix in forms.items() if np.isfinite(matrix).all() and np.abs(matrix).max() < 1e12}
        tolerance = 0.1 * max(min(np.linalg.norm(used[:3, a]) for a in range(3)), 1e-3)  # a tenth of the finest voxel step
        differing = {name: corner_distance(matrix, used, size) for name, matrix in forms.items()}
    differing = {name: distance for name, distance in differing.items() if distance > tolerance}
    if not differing:
        return None
    followed = [name for name in forms if name not in differing]
    how = f"its {followed[0]}" if followed else "neither exactly (ITK removed the sform's shear)"
    details = []
    for name, distance in differing.items():
        shear = shear_degrees(forms[name])
        sheared = f", sheared by {shear:.1f} degrees" if shear > 0.05 else ""
        details.append(f"its {name} (code {header.qform_code if name == 'qform' else header.sform_code}{sheared}) places the volume up to {distance:.1f} mm elsewhere")
    return (
        f"{source}: the NIfTI transforms disagree: {'; '.join(details)}. The image was read with {how}, as ITK and Slicer read it, "
        "and the labels are written on that grid; a viewer that uses the other transform shows image and labels apart"
    )


def nifti_orientation_warning(source: str, header: NiftiHeader) -> Optional[str]:
    """A warning when a NIfTI (or ANALYZE) file states no orientation or position (qform_code and sform_code both 0):
    the reader then places it by a convention, and the slice axis and the labels' placement follow that guess."""
    if header.qform_code > 0 or header.sform_code > 0:
        return None
    return (
        f"{source}: the NIfTI file states no orientation or position (its qform_code and sform_code are 0); it is read "
        "as ITK reads it, unrotated at the origin, so the slice axis is chosen from that guess: check that the labels lie "
        "where you expect, or give the file its transform (or choose --axis)"
    )


def dicom_stack_problem(
    source: str,
    names: Sequence[str],
    positions: Sequence[Tuple[float, ...]],
    orientations: Sequence[Tuple[float, ...]],
    pixel_spacings: Sequence[Tuple[float, ...]] = (),
    sizes: Sequence[Tuple[int, ...]] = (),
) -> Optional[str]:
    """Why the slices (in the reader's order) do not form one evenly spaced stack of one pixel size, or None when they do.

    ``positions``: each slice's ImagePositionPatient; ``orientations``: its ImageOrientationPatient (6 values);
    ``pixel_spacings``: its PixelSpacing (the reader gives every slice the first slice's); ``sizes``: its columns and rows.
    """
    for index, size in enumerate(sizes):
        if tuple(size) != tuple(sizes[0]):
            return (
                f"{source}: the slices of the DICOM series differ in size: {names[index]} has {size[0]} x {size[1]} pixels where "
                f"{names[0]} has {sizes[0][0]} x {sizes[0][1]}; they do not stack into one volume (a localizer or a reformat in the folder?): "
                "move the odd slices out of the folder"
            )
    for index, spacing_ in enumerate(pixel_spacings):
        if max(abs(a - b) for a, b in zip(spacing_, pixel_spacings[0])) > 1e-4 * max(pixel_spacings[0]):
            return (
                f"{source}: the slices of the DICOM series have different pixel sizes: {names[index]} has PixelSpacing "
                f"{_mm(spacing_)} where {names[0]} has {_mm(pixel_spacings[0])}; the reader would give every slice the first one's. "
                "Resample the series to one pixel size first"
            )
    if len(positions) < 2:
        return None
    first = np.asarray(orientations[0], float)
    if any(np.max(np.abs(np.asarray(o, float) - first)) > 1e-3 for o in orientations):
        return f"{source}: the slices of the DICOM series do not share one orientation (ImageOrientationPatient differs); it cannot be segmented as one volume"
    along, steps, normal = _steps_along_normal(positions, orientations)
    spacing = float(np.median(along))
    tolerance = max(0.01 * abs(spacing), 1e-3)
    for index, step in enumerate(along):
        if abs(step) <= tolerance:
            return f"{source}: slices {index} and {index + 1} of the DICOM series ({names[index]}, {names[index + 1]}) are at the same position; remove the duplicate slices"
        if abs(step - spacing) > tolerance:
            return (
                f"{source}: the DICOM series has uneven slice spacing: slices {index} and {index + 1} ({names[index]}, {names[index + 1]}) are "
                f"{abs(step):.2f} mm apart where the others are {abs(spacing):.2f} mm (missing slices?); segmenting it on a uniform grid would misplace "
                "every slice after the gap: complete the series, or resample it to a uniform spacing first"
            )
    sideways = float(np.max(np.linalg.norm(steps - np.outer(along, normal), axis=1)))
    if sideways > tolerance:
        return (
            f"{source}: each slice of the DICOM series is shifted sideways by up to {sideways:.2f} mm from the one before (a tilted gantry or a sheared "
            "stack); segmenting it on a rectangular grid would misplace the slices: resample it onto a rectangular grid first"
        )
    return None


def stack_spacing(positions: Sequence[Tuple[float, ...]], orientations: Sequence[Tuple[float, ...]]) -> Optional[float]:
    """The distance in mm between neighbouring slices of a stack checked by :func:`dicom_stack_problem`
    (the median step along the normal, as the reader spaces them); None for one slice."""
    if len(positions) < 2:
        return None
    return abs(float(np.median(_steps_along_normal(positions, orientations)[0])))


def _steps_along_normal(positions: Sequence[Tuple[float, ...]], orientations: Sequence[Tuple[float, ...]]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(each step's length along the slice normal, the steps, the normal)`` between consecutive slice positions."""
    first = np.asarray(orientations[0], float)
    normal = np.cross(first[:3], first[3:])
    normal /= np.linalg.norm(normal) or 1.0
    steps = np.diff(np.asarray(positions, float), axis=0)
    return steps @ normal, steps, normal


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in values) + " mm"

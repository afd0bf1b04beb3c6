"""Input volumes: checked from their header first, then read; refused when the engine cannot segment them.

SimpleITK reads NRRD, NIfTI, MHA/MHD and DICOM series. :func:`inspect_input` decides from the
file system and the header alone, before anything is allocated or opened in a way that could block:
only a regular file or a folder holding one DICOM series is an input (a FIFO, ``/dev/zero`` or a
socket is refused before any lock is taken), a 3D scalar volume with voxels, whose voxel data is all
there (:mod:`.payload`), on a grid the reader does not silently change (:mod:`.geometry_checks`).
:func:`read_volume` then reads it. Every refusal is a :class:`UserError` that says why. Writing
results on a volume's grid is :mod:`.segmentations`.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import threading
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.dicom_series import check_stack, series_files, special_file_kind
from UNetSegmentationLib.io.input_header import SUPPORTED, InputHeader, read_header
from UNetSegmentationLib.io.mapped_voxels import mapped_voxels
from UNetSegmentationLib.io.native_messages import native_reason, quiet_itk
from UNetSegmentationLib.io.path_names import path_problem
from UNetSegmentationLib.io.payload import DEFLATE, checksum_matches, describe_payload, format_bytes, missing_data
from UNetSegmentationLib.io.reader_hazards import reader_hazard
from UNetSegmentationLib.io.segmentations import grid_at, grid_reference, place_on_grid
from UNetSegmentationLib.io.stated_geometry import unstated_geometry


def inspect_input(path, series_uid: Optional[str] = None) -> InputHeader:
    """The header of input ``path`` once everything that can be known without reading the voxels is
    right, or a :class:`UserError` that says what is not. ``series_uid`` (``--series``) chooses a series
    in a DICOM folder that holds several."""
    path = Path(path)
    problem = path_problem(path)  # before any C++ reader sees it: a name that is not UTF-8 aborts the process there
    if problem:
        raise UserError(f"cannot read the input: {problem}")
    mode = _stat_mode(path)
    kind = special_file_kind(mode)
    if kind:
        raise UserError(f"input {path} is {kind}, not a volume file; give a regular file (.nrrd, .nii, .nii.gz, .mha) or a DICOM series folder")
    _check_readable(path)
    if series_uid is not None and not os.path.isdir(path):
        raise UserError(f"--series {series_uid}: {path} is not a DICOM folder")
    if os.path.isdir(path):
        files = series_files(path, series_uid)
        header = read_header(path, files)
    else:
        hazard = reader_hazard(path)  # a header ITK's reader would crash or hang on: it never sees it
        if hazard:
            raise UserError(f"cannot read {path}: {hazard}")
        header = read_header(path)
    validate_header(header)
    if header.dicom_files:
        slice_spacing = check_stack(path, header.dicom_files)
        if slice_spacing:  # one slice's header cannot know the distance to the next: the stack's positions do
            header = dataclasses.replace(header, spacing=tuple(header.spacing[:2]) + (slice_spacing,))
    else:
        unstated = unstated_geometry(path)
        if unstated:
            raise UserError(unstated)
        _check_payload(path, decode=False)  # sizes only: compressed data is checked as it is read (read_volume)
    return header


def _stat_mode(path: Path) -> int:
    """``os.stat`` of the input (following links), with each failure named for what it is."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise UserError(f"input {path} is a symbolic link to {os.readlink(path)}, which does not exist") from None
        raise UserError(f"input not found: {path}") from None
    except PermissionError:
        raise UserError(f"cannot read {path}: permission denied (on a folder of its path); ask for access or copy it to a folder you can read") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UserError(f"input {path} is a symbolic link loop (following its links leads back to them); point it at the volume file") from None
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None


def verify_data(header: InputHeader) -> InputHeader:
    """``header`` once all the voxel data it announces is known to be there, as far as the file tells without
    decoding it: raw data by the file's size, compressed data by the most its length can hold (a gzip bomb is
    refused here, before anything is allocated). Compressed data is then checked as it is read
    (:func:`read_volume`: the stream's own checksum against what the reader decoded, :func:`~.payload.checksum_matches`;
    decoded and counted where that cannot tell), so a stream cut short or corrupt is refused instead of read
    with zeros or garbage in place of the missing voxels, and it is decoded once, not twice (BENCHMARKS.md,
    *Clinical CT speed*); ``data_verified`` stays False until then."""
    if header.dicom_files or header.data_verified:
        return dataclasses.replace(header, data_verified=True)
    payload = describe_payload(header.path)
    _refuse_missing(header.path, missing_data(payload, decode=False) if payload is not None else None)
    return dataclasses.replace(header, data_verified=payload is None or payload.encoding != DEFLATE)


def _check_decoded(header: InputHeader, image: sitk.Image) -> None:
    """Refuse a file whose compressed stream is cut short or corrupt, by its checksum against ``image``'s voxels
    as the reader decoded them; decoded and counted (:func:`~.payload.missing_data`) where the checksum cannot tell."""
    payload = describe_payload(header.path)
    if payload is None or payload.encoding != DEFLATE:
        return
    if not checksum_matches(payload, sitk.GetArrayViewFromImage(image)):
        _refuse_missing(header.path, missing_data(payload, decode=True))


def _check_payload(path: Path, decode: bool) -> None:
    """Refuse a file cut short or corrupt: less voxel data than its header announces (see :mod:`.payload`);
    ``decode``: count what compressed data decodes to (else only what its length can hold at most)."""
    payload = describe_payload(path)
    _refuse_missing(path, missing_data(payload, decode=decode) if payload is not None else None)


def _refuse_missing(path: Path, problem: Optional[str]) -> None:
    if problem:
        raise UserError(f"{path} is truncated or corrupt: {problem}; copy or export it again")


def validate_header(header: InputHeader) -> None:
    """Refuse from the header what the engine cannot segment: not 3D, vector/RGB voxels, no voxels, or a grid
    that places them nowhere (spacing not finite and positive, origin or direction not finite)."""
    _refuse_shape(header.path, header.dimension, header.size, header.components, header.pixel_type)
    _refuse_grid(header.path, header.spacing, header.origin, header.direction)


@dataclasses.dataclass
class InputVoxels:
    """An input's voxels as read: the read-only ``[k, j, i]`` array, the grid they lie on (ITK's spacing and
    direction, and the one-voxel :func:`~.segmentations.grid_reference` the outputs are written on), and
    ``wait()``, which returns once a compressed stream's check has passed (see :func:`read_voxels`)."""

    volume: np.ndarray
    spacing: Tuple[float, ...]
    direction: Tuple[float, ...]
    reference: sitk.Image
    wait: Callable[[], None]
    image: Optional[sitk.Image] = None  # ITK's image when ITK read the file (``volume`` is a view of its buffer), else None

    def as_image(self) -> sitk.Image:
        """The voxels as a SimpleITK image on the input's grid (ITK's own, or a copy of the mapped voxels)."""
        if self.image is not None:
            return self.image
        image = sitk.GetImageFromArray(self.volume)
        place_on_grid(image, self.reference)
        return image


def read_volume(path, header: Optional[InputHeader] = None) -> sitk.Image:
    """A 3D scalar image, or a :class:`UserError` that says why not (``header``: from :func:`inspect_input`,
    its data verified by :func:`verify_data` here unless it was already; compressed data checked as it is read)."""
    voxels = read_voxels(path, header)
    voxels.wait()
    return voxels.as_image()


def read_voxels(path, header: Optional[InputHeader] = None) -> InputVoxels:
    """:func:`read_volume` without the image: a raw NRRD's voxels mapped from the file (:mod:`.mapped_voxels`);
    anything else read by ITK, whose compressed stream is then checked (its checksum over every decoded voxel:
    0.16 s per 315 MB here) on a thread while the caller goes on. ``wait()`` returns once that check has passed
    and raises :func:`read_volume`'s :class:`UserError` when it has not; the caller calls it before it reports,
    checks or writes anything of the voxels (``predict`` finds the body meanwhile, which uses one core)."""
    header = verify_data(header or inspect_input(path))
    mapped = mapped_voxels(header)
    if mapped is not None:
        reference = grid_at(header.origin, header.spacing, header.direction)
        return InputVoxels(mapped, tuple(header.spacing), tuple(header.direction), reference, lambda: None)
    image, header = _read_image(path, header)
    validate_volume(image, header.path)
    volume, reference = sitk.GetArrayViewFromImage(image), grid_reference(image)
    if header.data_verified:
        return InputVoxels(volume, image.GetSpacing(), image.GetDirection(), reference, lambda: None, image)
    failures: list = []

    def check() -> None:
        try:
            _check_decoded(header, image)
        except BaseException as error:  # raised by wait(), in the caller's thread
            failures.append(error)

    checking = threading.Thread(target=check, name="unetseg-read-check", daemon=True)
    checking.start()

    def wait() -> None:
        checking.join()
        if failures:
            raise failures[0]

    return InputVoxels(volume, image.GetSpacing(), image.GetDirection(), reference, wait, image)


def _read_image(path, header: Optional[InputHeader]) -> Tuple[sitk.Image, InputHeader]:
    """The image as ITK reads it, and its header (verified as far as the file tells without decoding it)."""
    header = verify_data(header or inspect_input(path))
    try:
        with quiet_itk():
            if header.dicom_files:
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(list(header.dicom_files))
                image = reader.Execute()
            else:
                image = sitk.ReadImage(str(header.path))
    except MemoryError:
        raise UserError(_out_of_memory_reading(header)) from None
    except RuntimeError as error:
        if "allocate" in str(error).lower() or "bad_alloc" in str(error).lower():
            raise UserError(_out_of_memory_reading(header)) from None
        if not header.data_verified:  # a stream cut short or corrupt is named as such, not as the reader words it
            _check_payload(header.path, decode=True)
        raise UserError(f"cannot read {header.path} as an image ({SUPPORTED}): {native_reason(error)}") from None
    return image, header


def _out_of_memory_reading(header: InputHeader) -> str:
    size = "x".join(map(str, header.size))
    return (
        f"out of memory while reading {header.path} ({size} voxels of {header.pixel_type}, {format_bytes(header.voxels * header.bytes_per_voxel)}): "
        "close other programs, or crop or resample the volume to fewer voxels"
    )


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
    _refuse_shape(source, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(), image.GetPixelIDTypeAsString())


def _refuse_grid(source, spacing, origin, direction) -> None:
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise UserError(f"{source} has voxel spacings of {tuple(spacing)} mm; a volume needs finite, positive spacings")
    if not all(math.isfinite(v) for v in tuple(origin) + tuple(direction)):
        raise UserError(f"{source} has an origin {tuple(origin)} or direction {tuple(direction)} that is not finite; it is placed nowhere")
    if len(direction) == 9 and abs(float(np.linalg.det(np.reshape(direction, (3, 3))))) < 1e-6:
        raise UserError(f"{source} has a singular direction matrix {tuple(direction)} (two of its axes point the same way, or one is zero); its voxels are placed nowhere: fix its space directions")


def _refuse_shape(source, dimension: int, size, components: int, pixel_type: str) -> None:
    if dimension != 3:
        raise UserError(f"{source} is a {dimension}D image ({'x'.join(map(str, size))}); a 3D volume is needed")
    if components != 1:
        raise UserError(f"{source} has {components} components per voxel ({pixel_type}); a scalar (grey-value) volume is needed")
    if 0 in tuple(size):
        raise UserError(f"{source} is empty (size {tuple(size)})")


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
    """The slice size limit: ``UNETSEG_MAX_SLICE_PIXELS`` when set (a positive whole number), else :data:`MAX_SLICE_PIXELS`."""
    text = os.environ.get("UNETSEG_MAX_SLICE_PIXELS", "").strip()
    if not text:
        return MAX_SLICE_PIXELS
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise UserError(f"UNETSEG_MAX_SLICE_PIXELS must be a positive whole number of pixels per slice (e.g. {MAX_SLICE_PIXELS}), got {text!r}")
    return int(text)


def pixel_count(count: int) -> str:
    """``4.2 million`` from a million on, ``110 pixels`` below (a small limit read "0.0 million")."""
    return f"{count / 1e6:.1f} million" if count >= 1_000_000 else f"{count:,} pixels"


def check_slice_size(shape: Tuple[int, int], source="input") -> None:
    """Refuse slices above :func:`max_slice_pixels` with a way out, before any network call."""
    rows, columns = (int(v) for v in shape)
    limit = max_slice_pixels()
    if rows * columns > limit:
        raise UserError(
            f"{source} has slices of {rows}x{columns} pixels ({pixel_count(rows * columns)}), more than the "
            f"{pixel_count(limit)}{' (2048x2048)' if limit == MAX_SLICE_PIXELS else ''} one network call can hold in memory; resample it to a coarser "
            "in-plane spacing or crop it first (Slicer: Crop Volume), or raise the limit with UNETSEG_MAX_SLICE_PIXELS"
        )


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """4×4 matrix from voxel index (i, j, k) to physical LPS coordinates."""
    matrix = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix

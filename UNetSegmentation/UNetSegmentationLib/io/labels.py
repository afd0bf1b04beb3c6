"""Ground truth for training and evaluation: label maps and Slicer ``.seg.nrrd`` segmentations on the
image's grid, and the classes they stand for. ``unetseg train`` and ``unetseg evaluate`` read labels
through these same functions (:func:`load_case`, :func:`resolve_classes`, :func:`channel_targets`), so a
label value means the same class in both (issue 22, defect 10).

Label maps are read with SimpleITK (arrays ``[k, j, i]``), segmentations with :mod:`slicerio` (voxels
``[i, j, k]``). A grid that differs from the image's (other than a segmentation cropped to its
extent) is an error. :func:`resolve_classes` decides the model's classes and maps every label
volume's values to channel indices; values or segments outside the class list stop with one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import slicerio

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.grammar.class_lists import DEFAULT_OTHER_LABELS, class_key as _key, label_value
from UNetSegmentationLib.io.volumes import check_finite, ijk_to_lps, read_volume
from UNetSegmentationLib.io.class_info import DEFAULT_COLORS, ClassInfo


# --- reading labels -------------------------------------------------------------------------------


@dataclass
class Segment:
    """A named segment of a ``.seg.nrrd`` (its voxels carry ``value`` in :attr:`LabelVolume.array`)."""

    value: int
    name: str
    color: Optional[Tuple[float, float, float]] = None
    terminology: Optional[dict] = None


@dataclass
class LabelVolume:
    """Ground truth on the image's grid: ``array`` is ``[k, j, i]``; for a segmentation, ``segments``
    says which array value is which named segment (``None`` for a plain label map)."""

    path: Path
    array: np.ndarray
    segments: Optional[List[Segment]] = None


def is_segmentation_file(path) -> bool:
    """Whether ``path`` is a Slicer segmentation (``.seg.nrrd``)."""
    return Path(path).name.lower().endswith(".seg.nrrd")


def _distinct(a: Sequence[float], b: Sequence[float], separator: str) -> Tuple[str, str]:
    """``a`` and ``b`` written with as few significant digits as make them read differently (up to 17)."""
    for digits in (4, 6, 8, 10, 17):
        text_a, text_b = (separator.join(f"{float(v):.{digits}g}" for v in values) for values in (a, b))
        if text_a != text_b:
            break
    return text_a, text_b


def _geometry_difference(label: str, size_a, matrix_a, size_b, matrix_b) -> str:
    """What differs between the grid of ``label`` (``size_a``, ijk→LPS ``matrix_a``) and the image's:
    size, spacing, the direction of each axis, origin; each with both values, so none reads the same."""
    matrix_a, matrix_b = np.asarray(matrix_a, dtype=float), np.asarray(matrix_b, dtype=float)
    spacing_a, spacing_b = np.linalg.norm(matrix_a[:3, :3], axis=0), np.linalg.norm(matrix_b[:3, :3], axis=0)
    differences = []
    if tuple(int(s) for s in size_a) != tuple(int(s) for s in size_b):
        differences.append(("size", "x".join(str(int(s)) for s in size_a), "x".join(str(int(s)) for s in size_b), ""))
    if not np.allclose(spacing_a, spacing_b, rtol=1e-4, atol=0):
        differences.append(("spacing", *_distinct(spacing_a, spacing_b, "x"), " mm"))
    directions_a, directions_b = matrix_a[:3, :3] / spacing_a, matrix_b[:3, :3] / spacing_b
    for axis in range(3):
        if not np.allclose(directions_a[:, axis], directions_b[:, axis], atol=1e-4):
            a, b = _distinct(directions_a[:, axis], directions_b[:, axis], ", ")
            differences.append((f"axis {'ijk'[axis]} along", f"({a})", f"({b})", " (LPS)"))
    if not np.allclose(matrix_a[:3, 3], matrix_b[:3, 3], rtol=0, atol=1e-3 * float(spacing_a.min()) + 1e-4):
        a, b = _distinct(matrix_a[:3, 3], matrix_b[:3, 3], ", ")
        differences.append(("origin", f"({a})", f"({b})", " mm"))
    if not differences:  # only within the tolerances above, yet beyond the grid check's
        a, b = _distinct(matrix_a[:3].ravel(), matrix_b[:3].ravel(), ", ")
        differences.append(("the ijk-to-LPS matrix", f"[{a}]", f"[{b}]", ""))
    return "; ".join(f"{label} has {what} {a}{unit}, the image {b}{unit}" for what, a, b, unit in differences)


def _same_geometry(size_a, matrix_a, size_b, matrix_b) -> bool:
    spacing = np.linalg.norm(np.asarray(matrix_a)[:3, :3], axis=0)
    return (
        tuple(int(s) for s in size_a) == tuple(int(s) for s in size_b)
        and np.allclose(matrix_a[:3, :3], matrix_b[:3, :3], rtol=1e-4, atol=1e-4 * float(spacing.max()))
        and np.allclose(matrix_a[:3, 3], matrix_b[:3, 3], rtol=0, atol=1e-3 * float(spacing.min()) + 1e-4)
    )


def read_label(path, image, case: str = "") -> LabelVolume:
    """The ground truth of ``image`` (a SimpleITK image) from a label map or a ``.seg.nrrd``.

    A segmentation stored on a cropped grid (same voxel size and axes, integer offset) is placed on
    the image grid; any other difference in grid is an error.
    """
    path = Path(path)
    where = f"case {case!r}: " if case else ""
    if is_segmentation_file(path):
        return _read_segmentation(path, image, where)
    return _read_label_map(path, image, where)


def _read_label_map(path: Path, image, where: str) -> LabelVolume:
    try:
        label = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise UserError(f"{where}cannot read label {path}: {str(error).strip().splitlines()[-1][:200]}") from None
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{where}label {path} must be a 3D scalar label map (got {label.GetDimension()}D, {label.GetNumberOfComponentsPerPixel()} component(s))")
    if not _same_geometry(label.GetSize(), ijk_to_lps(label), image.GetSize(), ijk_to_lps(image)):
        raise UserError(
            f"{where}image and label have different geometry: "
            f"{_geometry_difference(f'label {path.name}', label.GetSize(), ijk_to_lps(label), image.GetSize(), ijk_to_lps(image))}; "
            "resample the label onto the image grid"
        )
    array = sitk.GetArrayFromImage(label)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise UserError(f"{where}label {path} has non-integer values: a label map must hold integer label values")
        array = array.astype(np.int64)
    if array.min() < 0:
        raise UserError(f"{where}label {path} has negative values (min {array.min()}); label values must be 0 (background) or positive")
    return LabelVolume(path, array)


def _read_segmentation(path: Path, image, where: str) -> LabelVolume:
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as error:  # slicerio/pynrrd raise many types for a bad file
        raise UserError(f"{where}cannot read segmentation {path}: {error}") from None
    _restore_non_ascii_names(path, segmentation)
    voxels = segmentation.get("voxels")
    if voxels is None or voxels.ndim not in (3, 4):
        raise UserError(f"{where}segmentation {path} has no 3D voxel data")
    shape = voxels.shape[-3:]
    values, segments = _segment_values(segmentation, shape)
    seg_matrix = np.asarray(segmentation["ijkToLPS"], dtype=float)
    image_matrix = ijk_to_lps(image)
    size = image.GetSize()
    if _same_geometry(shape, seg_matrix, size, image_matrix):
        return LabelVolume(path, values.transpose(2, 1, 0).copy(), segments)
    placed = _place_cropped(values, seg_matrix, image_matrix, size)
    if placed is not None:
        return LabelVolume(path, placed.transpose(2, 1, 0).copy(), segments)
    raise UserError(
        f"{where}image and label have different geometry: {_geometry_difference(f'segmentation {path.name}', shape, seg_matrix, size, image_matrix)}; "
        "export the segmentation with the image as reference geometry"
    )


def _restore_non_ascii_names(path: Path, segmentation: dict) -> None:
    """Segment names as Slicer wrote them: slicerio's NRRD reader (pynrrd) drops every non-ASCII byte of
    the header (``右肺`` would read as an empty name), ITK's reads the UTF-8 text Slicer writes."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:  # slicerio read it; keep its names
        return
    keys = set(reader.GetMetaDataKeys())
    names = {
        reader.GetMetaData(key): reader.GetMetaData(key[: -len("ID")] + "Name")
        for key in keys if key.startswith("Segment") and key.endswith("_ID") and key[: -len("ID")] + "Name" in keys
    }
    for info in segmentation.get("segments") or []:
        if info.get("id") in names:
            info["name"] = names[info["id"]]


def _segment_values(segmentation: dict, shape: Tuple[int, int, int]) -> Tuple[np.ndarray, List[Segment]]:
    """One ``[i, j, k]`` array holding value ``index + 1`` for each segment, and the segments.

    Overlapping segments: the later one wins, as ``slicerio.extract_segments`` does.
    """
    segments_info = segmentation.get("segments") or []
    dtype = np.uint8 if len(segments_info) < 255 else np.uint16
    values = np.zeros(shape, dtype=dtype)
    segments = []
    for index, info in enumerate(segments_info):
        mask = slicerio.segment_mask(segmentation, info)
        values[mask] = index + 1
        color = info.get("color")
        segments.append(
            Segment(index + 1, str(info.get("name") or info.get("id") or f"Segment_{index + 1}"), tuple(float(c) for c in color) if color and len(color) == 3 else None, info.get("terminology"))
        )
    return values, segments


def _place_cropped(values: np.ndarray, seg_matrix: np.ndarray, image_matrix: np.ndarray, size: Sequence[int]) -> Optional[np.ndarray]:
    """``values`` (``[i, j, k]``, a segmentation cropped to its extent) placed on the image grid of
    ``size``; ``None`` unless it has the image's axes and voxel size at an integer offset and no
    labelled voxel falls outside the image."""
    offset = np.linalg.solve(image_matrix[:3, :3], seg_matrix[:3, 3] - image_matrix[:3, 3])
    rounded = np.round(offset).astype(int)
    aligned = np.allclose(seg_matrix[:3, :3], image_matrix[:3, :3], rtol=1e-4, atol=1e-4) and np.allclose(offset, rounded, atol=1e-3)
    if not aligned:
        return None
    placed = np.zeros(tuple(size), dtype=values.dtype)  # [i, j, k]
    lo = np.maximum(rounded, 0)
    hi = np.minimum(rounded + np.array(values.shape), np.array(size))
    if np.all(hi > lo):
        source = values[tuple(slice(a - r, b - r) for a, b, r in zip(lo, hi, rounded))]
        placed[tuple(slice(a, b) for a, b in zip(lo, hi))] = source
    if int(np.count_nonzero(placed)) != int(np.count_nonzero(values)):
        return None
    return placed


# --- a labelled case ----------------------------------------------------------------------------------


@dataclass
class LoadedCase:
    """A case read from disk and checked: voxels ``[k, j, i]``, the image's grid, its ground truth.
    ``case``: anything with ``name``, ``image`` and ``label`` (training/cases.Case)."""

    case: Any
    volume: np.ndarray
    direction: Tuple[float, ...]
    spacing: Tuple[float, float, float]
    label: LabelVolume


def load_case(case: Any) -> LoadedCase:
    """Read the image, then its label on the image's grid (every problem is a :class:`UserError`)."""
    image = read_volume(case.image)
    volume = sitk.GetArrayFromImage(image)
    if volume.dtype == np.float64:
        volume = volume.astype(np.float32)
    check_finite(volume, source=str(case.image))
    label = read_label(case.label, image, case.name)
    return LoadedCase(case, volume, tuple(image.GetDirection()), tuple(image.GetSpacing()), label)


# --- classes ------------------------------------------------------------------------------------------


def resolve_classes(
    labels: Sequence[Tuple[str, LabelVolume]],
    names: Optional[Sequence[str]] = None,
    declared: Optional[Sequence[ClassInfo]] = None,
    other_labels: str = DEFAULT_OTHER_LABELS,
    label_map: Optional[Dict[str, str]] = None,
    warn: Optional[Callable[[str], None]] = None,
) -> Tuple[List[ClassInfo], List[np.ndarray]]:
    """The model's classes and, per label volume, a lookup from its array values to channel indices.

    Classes come from ``declared`` (a checkpoint's), else ``names`` (``--classes``), else the
    segments of the ``.seg.nrrd`` labels (names, colours and terminology, in order of first
    appearance), else the distinct values of the label maps. Segments are matched to classes by
    name (case-insensitive); label-map values by class value. ``label_map`` (``--label-map``, with
    ``declared`` classes) maps the user's label values or segment names to classes (by name or value)
    first; with it, label-map values it does not name are not matched by value. Anything else is an
    error unless ``other_labels == "background"``, and then ``warn`` names what became background
    (a score against labels read the wrong way must not pass unnoticed: issue 22, defect 10).
    """
    classes = _classes(labels, names, declared)
    mapped = _mapped_channels(label_map, classes) if label_map else None
    lookups = [_channel_lookup(case, label, classes, other_labels, mapped, warn) for case, label in labels]
    return classes, lookups


def channel_targets(label: LabelVolume, lookup: np.ndarray) -> np.ndarray:
    """``label``'s array as channel numbers (uint8; 0 background): what training learns and evaluation scores."""
    values = label.array
    targets = lookup[np.minimum(values, lookup.size - 1)].astype(np.uint8)
    targets[values >= lookup.size] = 0
    return targets


def _mapped_channels(label_map: Dict[str, str], classes: Sequence[ClassInfo]) -> Dict[str, int]:
    """``--label-map``: the user's key (label value, or segment name in :func:`_key` form) → channel."""
    by_name = {_key(c.name): channel for channel, c in enumerate(classes, 1)}
    by_value = {str(c.value): channel for channel, c in enumerate(classes, 1)}
    mapped = {}
    for user, model in label_map.items():
        channel = by_name.get(_key(model), by_value.get(model.strip()))
        if channel is None:
            listed = ", ".join(f"{c.value}={c.name}" for c in classes)
            raise UserError(f"--label-map: the model has no class {model!r} (its classes: {listed})")
        mapped[_key(user)] = channel
    return mapped


def labelled_channels(label: LabelVolume, lookup: np.ndarray) -> set:
    """The channels (1-based) ``label`` says anything about: those of its segments (an empty segment
    still says "none here"), or of the values present in a label map."""
    if label.segments is not None:
        values = [s.value for s in label.segments if s.value < lookup.size]
    else:
        counts = np.bincount(np.asarray(label.array).ravel(), minlength=lookup.size)
        values = [v for v in np.flatnonzero(counts) if v < lookup.size]
    return {int(lookup[v]) for v in values} - {0}


def _classes(labels: Sequence[Tuple[str, LabelVolume]], names: Optional[Sequence[str]], declared: Optional[Sequence[ClassInfo]]) -> List[ClassInfo]:
    """The class list (see :func:`resolve_classes`); named classes take colour and terminology from a segment of that name."""
    segment_source: Dict[str, Segment] = {}
    for _, label in labels:
        for segment in label.segments or []:
            segment_source.setdefault(_key(segment.name), segment)

    def from_segment(value: int, name: str) -> ClassInfo:
        source = segment_source.get(_key(name))
        color = source.color if source and source.color else DEFAULT_COLORS[(value - 1) % len(DEFAULT_COLORS)]
        return ClassInfo(value, name.strip(), tuple(color), source.terminology if source else None)

    if declared:
        return list(declared)
    if names:
        return [from_segment(i, n) for i, n in enumerate(names, 1)]
    if segment_source:
        return [from_segment(i, s.name) for i, s in enumerate(segment_source.values(), 1)]
    values = sorted({int(v) for _, label in labels for v in np.unique(label.array) if v != 0})
    if not values:
        raise UserError("the labels contain no foreground voxels at all: nothing to learn")
    return [ClassInfo(v, f"label {v}", DEFAULT_COLORS[(i) % len(DEFAULT_COLORS)]) for i, v in enumerate(values)]


def _channel_lookup(case: str, label: LabelVolume, classes: Sequence[ClassInfo], other_labels: str, mapped: Optional[Dict[str, int]] = None,
                    warn: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """``lookup[value]`` = the channel (1-based; 0 background) of each array value of ``label``
    (``mapped``: the ``--label-map`` keys → channels, tried first)."""
    class_list = ", ".join(f"{c.value}={c.name}" for c in classes)
    present = np.unique(label.array)
    largest = max([int(present.max())] + [s.value for s in label.segments or []])  # an empty segment has a value too
    lookup = np.zeros(largest + 1, dtype=np.uint8)
    if label.segments is not None:
        by_name = {**{_key(c.name): channel for channel, c in enumerate(classes, 1)}, **(mapped or {})}
        unknown = []
        for segment in label.segments:
            channel = by_name.get(_key(segment.name))
            if channel is None:
                unknown.append(segment.name)
            elif segment.value < lookup.size:
                lookup[segment.value] = channel
        if unknown and other_labels != "background":
            raise UserError(
                f"case {case!r}: label {label.path.name} has segment(s) outside the class list: {', '.join(unknown)} "
                f"(classes: {class_list}); add them to --classes, map them with --label-map, or pass --other-labels background"
            )
        if unknown and warn is not None:
            warn(f"case {case!r}: segment(s) {', '.join(unknown)} of {label.path.name} are no class of the model (classes: {class_list}): read as background (--other-labels background)")
        return lookup
    by_value = {c.value: channel for channel, c in enumerate(classes, 1)}
    if mapped is not None:  # the user's values, as --label-map names them (keys that are no number name segments)
        by_value = {label_value(k): channel for k, channel in mapped.items() if label_value(k) is not None}
    unknown_values = [int(v) for v in present if v != 0 and int(v) not in by_value]
    if unknown_values:
        listed = ", ".join(map(str, unknown_values[:10]))
        where = (f"value(s) the --label-map does not name: {listed} (with --label-map, only the values it names are read; "
                 f"map them too, e.g. {unknown_values[0]}:CLASS" if mapped is not None else f"value(s) outside the class list: {listed} (fix the labels, add classes, map them with --label-map")
        if other_labels != "background":
            raise UserError(f"case {case!r}: label {label.path.name} has {where}, or pass --other-labels background; classes: {class_list})")
        if warn is not None:
            warn(f"case {case!r}: label {label.path.name} has {where.split(' (')[0]}, read as background (--other-labels background); classes: {class_list}")
    for value, channel in by_value.items():
        if value < lookup.size:
            lookup[value] = channel
    return lookup

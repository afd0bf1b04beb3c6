"""Training data: which image/label pairs, how labels become class channels, and 2.5D slice samples.

Cases come from a MONAI decathlon-style JSON datalist (``training`` and optional ``validation``
lists, read with :func:`monai.data.load_decathlon_datalist`), from two folders matched by name, or
from one image/label pair. Labels are label maps (any SimpleITK format) or Slicer ``.seg.nrrd``
segmentations (read with :mod:`slicerio`, whose voxels are ``[i, j, k]``; SimpleITK arrays are
``[k, j, i]``). Everything is read and checked before training starts: missing files, image/label
grids that differ, and label values or segments outside the class list stop with one clear message.

Volumes stay in their stored dtype; 2.5D inputs are gathered through the engine's
:class:`~UNetSegmentationLib.inference.slicing.SliceGeometry` view and normalised batch by batch with the
checkpoint's :class:`~UNetSegmentationLib.inference.normalization.IntensityMapping` — exactly as ``predict``
does — so a model sees the same slices, in the same orientation and intensity scale, in training
and in use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.metadata import DEFAULT_COLORS, ClassInfo, Normalization
from UNetSegmentationLib.inference.normalization import IntensityMapping, fit_normalization
from UNetSegmentationLib.io.outputs import IMAGE_EXTENSIONS, split_extension
from UNetSegmentationLib.inference.slicing import SliceGeometry, gather_context

#: file name endings recognised when pairing folders (compound ones first)
VOLUME_EXTENSIONS = IMAGE_EXTENSIONS + (".mhd", ".nhdr")
#: suffixes a label file's name may add to its image's name (``case7_seg.nii.gz`` ↔ ``case7.nii.gz``)
LABEL_SUFFIXES = ("", "_seg", "-seg", "_label", "-label", "_labels", "-labels", "_mask", "-mask", ".seg", ".label")


# --- which cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One image and its ground-truth label file."""

    name: str
    image: Path
    label: Path


def case_name(path: Path) -> str:
    return split_extension(path, VOLUME_EXTENSIONS)[0] if split_extension(path, VOLUME_EXTENSIONS)[1] else Path(path).name


def _unique_names(cases: List[Case]) -> List[Case]:
    """Make case names unique (``ct``, ``ct#2``…) so logs and held-out slices can refer to them."""
    seen: Dict[str, int] = {}
    out = []
    for case in cases:
        count = seen.get(case.name, 0) + 1
        seen[case.name] = count
        out.append(case if count == 1 else Case(f"{case.name}#{count}", case.image, case.label))
    return out


def cases_from_datalist(path, section: str = "training", base_dir=None, required: bool = True) -> List[Case]:
    """Cases of one section (``training``, ``validation``…) of a decathlon-style JSON datalist.

    Relative paths are resolved against ``base_dir`` (default: the datalist's folder), as MONAI does.
    A missing optional section gives an empty list.
    """
    from monai.data import load_decathlon_datalist

    path = Path(path)
    if not path.is_file():
        raise UserError(f"datalist not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"datalist {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"datalist {path} must be a JSON object with a 'training' list")
    if section not in data:
        if required:
            sections = ", ".join(k for k, v in data.items() if isinstance(v, list)) or "none"
            raise UserError(f"datalist {path} has no {section!r} list (lists found: {sections})")
        return []
    items = data[section]
    if not isinstance(items, list):
        raise UserError(f"datalist {path}: {section!r} must be a list of {{'image': ..., 'label': ...}} objects")
    for index, item in enumerate(items):
        where = f"datalist {path}, {section} item #{index + 1}"
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise UserError(f"{where}: each entry needs an 'image' and a 'label' path")
        for key in ("image", "label"):
            if not isinstance(item[key], str) or not item[key]:
                raise UserError(f"{where}: {key!r} must be one file path (got {item[key]!r}); multi-file inputs are not supported")
    if not items:
        return []
    entries = load_decathlon_datalist(path, is_segmentation=True, data_list_key=section, base_dir=base_dir)
    cases = [Case(str(entry.get("name") or case_name(Path(entry["image"]))), Path(entry["image"]), Path(entry["label"])) for entry in entries]
    check_files(cases, f"datalist {path} ({section})")
    return _unique_names(cases)


def cases_from_folders(images_dir, labels_dir) -> List[Case]:
    """Pair every volume in ``images_dir`` with the label in ``labels_dir`` of the same name.

    ``ct01.nrrd`` pairs with ``ct01.nrrd``, ``ct01.seg.nrrd``, ``ct01_seg.nii.gz``, ``ct01_label.nii.gz``…
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for folder, what in ((images_dir, "--images"), (labels_dir, "--labels")):
        if not folder.is_dir():
            raise UserError(f"{what} {folder} is not a folder")
    images = {case_name(p): p for p in sorted(images_dir.iterdir()) if p.is_file() and split_extension(p, VOLUME_EXTENSIONS)[1] and not p.name.startswith(".")}
    labels = {case_name(p): p for p in sorted(labels_dir.iterdir()) if p.is_file() and split_extension(p, VOLUME_EXTENSIONS)[1] and not p.name.startswith(".")}
    if not images:
        raise UserError(f"--images {images_dir} holds no volume files ({', '.join(VOLUME_EXTENSIONS)})")
    cases, unmatched = [], []
    for name, image in images.items():
        label = next((labels[name + suffix] for suffix in LABEL_SUFFIXES if name + suffix in labels), None)
        if label is None:
            unmatched.append(image.name)
        else:
            cases.append(Case(name, image, label))
    if unmatched:
        raise UserError(
            f"no label in {labels_dir} for {len(unmatched)} image(s) of {images_dir}: {', '.join(unmatched[:5])}"
            f"{' …' if len(unmatched) > 5 else ''} (labels are matched by name, e.g. ct01.nrrd ↔ ct01.seg.nrrd or ct01_label.nii.gz)"
        )
    return cases


def check_files(cases: Sequence[Case], source: str) -> None:
    for case in cases:
        for what, path in (("image", case.image), ("label", case.label)):
            if not Path(path).is_file():
                raise UserError(f"{source}: {what} of case {case.name!r} not found: {path}")


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
    return Path(path).name.lower().endswith(".seg.nrrd")


def _describe(size, matrix) -> str:
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    return (
        f"size {'x'.join(str(int(s)) for s in size)}, spacing {'x'.join(f'{s:.4g}' for s in spacing)} mm, "
        f"origin ({', '.join(f'{v:.4g}' for v in matrix[:3, 3])})"
    )


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
    import SimpleITK as sitk

    from UNetSegmentationLib.io.volumes import ijk_to_lps

    try:
        label = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise UserError(f"{where}cannot read label {path}: {str(error).strip().splitlines()[-1][:200]}") from None
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{where}label {path} must be a 3D scalar label map (got {label.GetDimension()}D, {label.GetNumberOfComponentsPerPixel()} component(s))")
    if not _same_geometry(label.GetSize(), ijk_to_lps(label), image.GetSize(), ijk_to_lps(image)):
        raise UserError(
            f"{where}image and label have different geometry: label {path.name} has {_describe(label.GetSize(), ijk_to_lps(label))}, "
            f"the image {_describe(image.GetSize(), ijk_to_lps(image))}; resample the label onto the image grid"
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
    import slicerio

    from UNetSegmentationLib.io.volumes import ijk_to_lps

    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as error:  # slicerio/pynrrd raise many types for a bad file
        raise UserError(f"{where}cannot read segmentation {path}: {error}") from None
    voxels = segmentation.get("voxels")
    if voxels is None or voxels.ndim not in (3, 4):
        raise UserError(f"{where}segmentation {path} has no 3D voxel data")
    segments_info = segmentation.get("segments") or []
    shape = voxels.shape[-3:]
    # one array value per segment (index + 1); overlapping segments: the later one wins, as slicerio.extract_segments does
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
    seg_matrix = np.asarray(segmentation["ijkToLPS"], dtype=float)
    image_matrix = ijk_to_lps(image)
    size = image.GetSize()
    if _same_geometry(shape, seg_matrix, size, image_matrix):
        return LabelVolume(path, values.transpose(2, 1, 0).copy(), segments)
    # a segmentation cropped to its extent: same axes and voxel size, integer offset inside the image
    offset = np.linalg.solve(image_matrix[:3, :3], seg_matrix[:3, 3] - image_matrix[:3, 3])
    rounded = np.round(offset).astype(int)
    aligned = np.allclose(seg_matrix[:3, :3], image_matrix[:3, :3], rtol=1e-4, atol=1e-4) and np.allclose(offset, rounded, atol=1e-3)
    if aligned:
        placed = np.zeros(tuple(size), dtype=values.dtype)  # [i, j, k]
        lo = np.maximum(rounded, 0)
        hi = np.minimum(rounded + np.array(shape), np.array(size))
        if np.all(hi > lo):
            source = values[tuple(slice(a - r, b - r) for a, b, r in zip(lo, hi, rounded))]
            placed[tuple(slice(a, b) for a, b in zip(lo, hi))] = source
        if int(np.count_nonzero(placed)) == int(np.count_nonzero(values)):
            return LabelVolume(path, placed.transpose(2, 1, 0).copy(), segments)
    raise UserError(
        f"{where}image and label have different geometry: segmentation {path.name} has {_describe(shape, seg_matrix)}, "
        f"the image {_describe(size, image_matrix)}; export the segmentation with the image as reference geometry"
    )


# --- classes ------------------------------------------------------------------------------------------


def _key(name: str) -> str:
    return " ".join(name.strip().lower().split())


def resolve_classes(
    labels: Sequence[Tuple[str, LabelVolume]],
    names: Optional[Sequence[str]] = None,
    declared: Optional[Sequence[ClassInfo]] = None,
    other_labels: str = "error",
) -> Tuple[List[ClassInfo], List[np.ndarray]]:
    """The model's classes and, per label volume, a lookup from its array values to channel indices.

    Classes come from ``declared`` (a checkpoint's), else ``names`` (``--classes``), else the
    segments of the ``.seg.nrrd`` labels (names, colours and terminology, in order of first
    appearance), else the distinct values of the label maps. Segments are matched to classes by
    name (case-insensitive); label-map values by class value. Anything else is an error unless
    ``other_labels == "background"``.
    """
    segment_source: Dict[str, Segment] = {}
    for _, label in labels:
        for segment in label.segments or []:
            segment_source.setdefault(_key(segment.name), segment)

    def from_segment(value: int, name: str) -> ClassInfo:
        source = segment_source.get(_key(name))
        color = source.color if source and source.color else DEFAULT_COLORS[(value - 1) % len(DEFAULT_COLORS)]
        return ClassInfo(value, name.strip(), tuple(color), source.terminology if source else None)

    if declared:
        classes = list(declared)
    elif names:
        classes = [from_segment(i, n) for i, n in enumerate(names, 1)]
    elif segment_source:
        classes = [from_segment(i, s.name) for i, s in enumerate(segment_source.values(), 1)]
    else:
        values = sorted({int(v) for _, label in labels for v in np.unique(label.array) if v != 0})
        if not values:
            raise UserError("the labels contain no foreground voxels at all: nothing to learn")
        classes = [ClassInfo(v, f"label {v}", DEFAULT_COLORS[(i) % len(DEFAULT_COLORS)]) for i, v in enumerate(values)]
    by_name = {_key(c.name): channel for channel, c in enumerate(classes, 1)}
    by_value = {c.value: channel for channel, c in enumerate(classes, 1)}
    class_list = ", ".join(f"{c.value}={c.name}" for c in classes)

    lookups = []
    for case, label in labels:
        present = np.unique(label.array)
        lookup = np.zeros(int(present.max()) + 1, dtype=np.uint8)
        if label.segments is not None:
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
                    f"(classes: {class_list}); add them to --classes or pass --other-labels background"
                )
        else:
            unknown_values = [int(v) for v in present if v != 0 and int(v) not in by_value]
            if unknown_values and other_labels != "background":
                raise UserError(
                    f"case {case!r}: label {label.path.name} has value(s) outside the class list: {', '.join(map(str, unknown_values[:10]))} "
                    f"(classes: {class_list}); fix the labels, add classes, or pass --other-labels background"
                )
            for value, channel in by_value.items():
                if value < lookup.size:
                    lookup[value] = channel
        lookups.append(lookup)
    return classes, lookups


# --- prepared volumes and held-out slices ---------------------------------------------------------------


@dataclass
class PreparedVolume:
    """One case ready for sampling: raw voxels and channel-index targets, both as slice views."""

    name: str
    image_path: Path
    slices: np.ndarray  # [slice, row, column] view of the image voxels (stored dtype)
    targets: np.ndarray  # [slice, row, column] view of uint8 channel indices (0 = background)
    mapping: IntensityMapping
    geometry: SliceGeometry
    spacing: Tuple[float, float, float]  # mm along (slice, row, column)
    train_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    val_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))

    @property
    def slice_count(self) -> int:
        return int(self.slices.shape[0])


def held_out_blocks(slice_count: int, fraction: float, blocks: int = 3, gap: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``(train, held_out)`` slice indices: ``fraction`` of the slices held out in ``blocks`` contiguous
    blocks spread evenly along the volume, and ``gap`` slices on each side of a block used for neither
    (so no training input shows a held-out slice as a neighbour channel when ``gap >= context``).
    """
    if not 0 < fraction < 1:
        raise UserError(f"--val-slices must be a fraction between 0 and 1, got {fraction}")
    held = max(1, int(round(fraction * slice_count)))
    blocks = max(1, min(blocks, held))
    sizes = [held // blocks + (1 if b < held % blocks else 0) for b in range(blocks)]
    val = []
    for b, size in enumerate(sizes):
        centre = (b + 0.5) * slice_count / blocks
        start = int(np.clip(np.floor(centre - size / 2), 0, slice_count - size))
        val.extend(range(start, start + size))
    val = np.unique(val)
    excluded = np.zeros(slice_count, dtype=bool)
    for index in val:
        excluded[max(0, index - gap): index + gap + 1] = True
    train = np.flatnonzero(~excluded)
    if train.size == 0:
        raise UserError(f"holding out {held} of {slice_count} slices (with a gap of {gap}) leaves no slice to train on; lower --val-slices or --val-gap")
    return train, val


@dataclass
class LoadedCase:
    """A case read from disk and checked: voxels ``[k, j, i]``, the image's grid, its ground truth."""

    case: Case
    volume: np.ndarray
    direction: Tuple[float, ...]
    spacing: Tuple[float, float, float]
    label: LabelVolume


def load_case(case: Case) -> LoadedCase:
    """Read the image, then its label on the image's grid (every problem is a :class:`UserError`)."""
    import SimpleITK as sitk

    from UNetSegmentationLib.io.volumes import check_finite, read_volume

    image = read_volume(case.image)
    volume = sitk.GetArrayFromImage(image)
    if volume.dtype == np.float64:
        volume = volume.astype(np.float32)
    check_finite(volume, source=str(case.image))
    label = read_label(case.label, image, case.name)
    return LoadedCase(case, volume, tuple(image.GetDirection()), tuple(image.GetSpacing()), label)


def prepare_volume(loaded: LoadedCase, normalization: Normalization, axis: Optional[int], lookup: np.ndarray) -> PreparedVolume:
    """Slice views of voxels and channel-index targets (``lookup`` maps label values to channels)."""
    values = loaded.label.array
    targets = lookup[np.minimum(values, lookup.size - 1)].astype(np.uint8)
    targets[values >= lookup.size] = 0
    geometry = SliceGeometry.from_direction(loaded.direction, axis)
    spacing = loaded.spacing
    return PreparedVolume(
        name=loaded.case.name,
        image_path=Path(loaded.case.image),
        slices=geometry.slices_view(loaded.volume),
        targets=geometry.slices_view(targets),
        mapping=fit_normalization(normalization, loaded.volume),
        geometry=geometry,
        spacing=(spacing[geometry.slice_axis], spacing[geometry.row_axis], spacing[geometry.column_axis]),
    )


# --- sampling -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentOptions:
    """Random augmentations (MONAI transforms), applied to each 2.5D crop.

    ``flip``: probability of mirroring rows and, independently, columns. Off by default: the engine
    already brings every slice into one anatomical orientation, and mirroring would teach a model to
    confuse left and right structures. ``rotate`` in degrees, ``scale`` as a ±fraction,
    ``intensity`` as a ±shift and ±scale in normalised units; each applied with probability ``prob``.
    """

    flip: float = 0.0
    rotate: float = 15.0
    scale: float = 0.1
    intensity: float = 0.1
    prob: float = 0.5

    def transforms(self):
        """A MONAI ``Compose`` over ``{"image": (C, H, W), "label": (1, H, W)}``, or ``None`` for no augmentation."""
        from monai.transforms import Compose, RandAffined, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

        steps = []
        if self.rotate > 0 or self.scale > 0:
            steps.append(
                RandAffined(
                    keys=("image", "label"),
                    prob=self.prob,
                    rotate_range=(np.deg2rad(self.rotate),),
                    scale_range=(self.scale, self.scale),
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                )
            )
        if self.flip > 0:
            steps += [RandFlipd(keys=("image", "label"), prob=self.flip, spatial_axis=axis) for axis in (0, 1)]
        if self.intensity > 0:
            steps += [
                RandScaleIntensityd(keys="image", factors=self.intensity, prob=self.prob),
                RandShiftIntensityd(keys="image", offsets=self.intensity, prob=self.prob),
            ]
        return Compose(steps) if steps else None


class SliceSampler:
    """Random 2.5D training crops with foreground oversampling.

    With probability ``foreground`` a sample is centred (with jitter) on a random voxel of a class
    chosen uniformly among the classes present in the training slices — so small structures are
    seen as often as large ones — otherwise it is a uniformly random slice and crop. The crop is
    ``crop`` (rows, columns); slices smaller than it are zero-padded (in normalised units, as
    ``predict`` pads).
    """

    def __init__(self, volumes: Sequence[PreparedVolume], context: int, crop: Tuple[int, int], class_count: int, foreground: float = 0.5, augment: Optional[AugmentOptions] = None) -> None:
        self.volumes = [v for v in volumes if v.train_slices.size]
        if not self.volumes:
            raise UserError("no training slices: every case is used for validation")
        self.context = context
        self.crop = tuple(int(c) for c in crop)
        self.foreground = foreground
        self.augment = (augment or AugmentOptions()).transforms()
        # (volume, slice) pairs: all training slices, and per class those containing it
        self.all_slices = np.array([(v, s) for v, volume in enumerate(self.volumes) for s in volume.train_slices], dtype=np.int64)
        self.class_slices: Dict[int, np.ndarray] = {}
        for channel in range(1, class_count + 1):
            pairs = [(v, int(s)) for v, volume in enumerate(self.volumes) for s in volume.train_slices if (volume.targets[s] == channel).any()]
            if pairs:
                self.class_slices[channel] = np.array(pairs, dtype=np.int64)
        self.missing_classes = [c for c in range(1, class_count + 1) if c not in self.class_slices]

    def set_random_state(self, seed: int) -> np.random.Generator:
        """Seed the sampler and the augmentations; returns the generator the sampler draws from."""
        if self.augment is not None:
            self.augment.set_random_state(seed=seed % (2**32))
        self.rng = np.random.default_rng(seed)
        return self.rng

    def _window(self, size: int, crop: int, centre: Optional[int]) -> int:
        if size <= crop:
            return 0
        if centre is None:
            return int(self.rng.integers(0, size - crop + 1))
        jitter = int(self.rng.integers(crop // 4, crop - crop // 4 + 1))
        return int(np.clip(centre - jitter, 0, size - crop))

    def sample(self) -> Tuple[np.ndarray, np.ndarray]:
        """One ``(2c+1, H, W)`` float32 input and its ``(H, W)`` int64 target."""
        rng = self.rng
        centre = None
        if self.class_slices and rng.random() < self.foreground:
            channel = list(self.class_slices)[int(rng.integers(len(self.class_slices)))]
            pairs = self.class_slices[channel]
            v, s = pairs[int(rng.integers(len(pairs)))]
            rows, columns = np.nonzero(self.volumes[v].targets[s] == channel)
            pick = int(rng.integers(rows.size))
            centre = (int(rows[pick]), int(columns[pick]))
        else:
            v, s = self.all_slices[int(rng.integers(len(self.all_slices)))]
        volume = self.volumes[int(v)]
        size_r, size_c = volume.slices.shape[1:]
        r0 = self._window(size_r, self.crop[0], None if centre is None else centre[0])
        c0 = self._window(size_c, self.crop[1], None if centre is None else centre[1])
        window = (slice(None), slice(r0, r0 + self.crop[0]), slice(c0, c0 + self.crop[1]))
        image = volume.mapping(gather_context(volume.slices[window], np.array([int(s)]), self.context))[0]
        target = np.asarray(volume.targets[int(s)][window[1:]], dtype=np.int64)
        pad_r, pad_c = self.crop[0] - image.shape[1], self.crop[1] - image.shape[2]
        if pad_r or pad_c:
            image = np.pad(image, ((0, 0), (0, pad_r), (0, pad_c)))
            target = np.pad(target, ((0, pad_r), (0, pad_c)))
        if self.augment is not None:
            out = self.augment({"image": image, "label": target[None].astype(np.float32)})
            image = np.asarray(out["image"], dtype=np.float32)
            target = np.rint(np.asarray(out["label"])[0]).astype(np.int64)
        return image, target

    def batch(self, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
        samples = [self.sample() for _ in range(batch_size)]
        return np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples])

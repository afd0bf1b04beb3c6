"""The data of one training run: every case read and checked, the classes decided, the model's
metadata made, and each volume prepared and split into training and held-out slices.

Training cases give their training slices (all of them, or all but ``--val-slices`` held out in
blocks with a gap of ``--val-gap`` slices, default the 2.5D neighbours' reach; fewer or smaller blocks where
the volume is short: :mod:`.adapt`); validation cases are held out whole.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.geometry.slice_distance import neighbour_step
from UNetSegmentationLib.grammar.slice_ranges import parse_slice_ranges
from UNetSegmentationLib.model.metadata import ClassInfo, ModelMetadata, Normalization, classes_from_json, out_channels_for
from UNetSegmentationLib.model.training_record import slice_ranges
from UNetSegmentationLib.networks.registry import get_architecture
from UNetSegmentationLib.training.cases import Case
from UNetSegmentationLib.training.config import TrainConfig
from UNetSegmentationLib.io.labels import labelled_channels, load_case, resolve_classes
from UNetSegmentationLib.training.partial_labels import case_unlabelled, labelled_by_case, unlabelled_channels
from UNetSegmentationLib.training.spacing import median_slice_spacing, recorded_spacing, resample_volume, target_spacing
from UNetSegmentationLib.training.adapt import fit_hold_out
from UNetSegmentationLib.training.volumes import PreparedVolume, prepare_volume


@dataclass
class TrainingData:
    """The model's metadata and the prepared volumes: the ``training_count`` training cases first, then the validation cases."""

    metadata: ModelMetadata
    volumes: List[PreparedVolume]
    training_count: int
    spacing: Optional[Tuple[float, float]] = None  # (row, column) mm every volume was resampled to; None: as given
    unlabelled: List[int] = dataclasses.field(default_factory=list)  # channels no training label holds (training/partial_labels.py)

    @property
    def partial(self) -> bool:
        """Whether some case has unknown classes: the run then trains with the marginal loss (partial_labels.py)."""
        return bool(self.unlabelled) or any(v.unlabelled for v in self.volumes)

    def unknown_lines(self, classes: Sequence[ClassInfo]) -> List[str]:
        """Per case whose datalist ``labelled_classes`` leave some classes out: which are unknown there."""
        return [f"case {v.name!r}: unknown, not background (not in its labelled_classes): {', '.join(classes[c - 1].name for c in v.unlabelled)}"
                for v in self.volumes if set(v.unlabelled) - set(self.unlabelled)]

    @property
    def has_validation(self) -> bool:
        return any(v.val_slices.size for v in self.volumes)

    @property
    def training_slices(self) -> int:
        return int(sum(v.train_slices.size for v in self.volumes))

    @property
    def validation_slices(self) -> int:
        return int(sum(v.val_slices.size for v in self.volumes))

    def description(self, extra: Dict[str, Any]) -> Dict[str, Any]:
        """What the checkpoint records about the data (``metadata.training["data"]``): ``extra`` (where
        the cases came from), the training and validation cases, and the held-out slices of each training case."""
        training, validation = self.volumes[: self.training_count], self.volumes[self.training_count:]
        return {
            **extra,
            "training": [
                {"case": v.name, "image": v.image_path.name, "slice_axis": v.axis_name, "train_slices": int(v.train_slices.size), "spacing": list(v.source_spacing or v.spacing)}
                for v in training
            ],
            "validation": [{"case": v.name, "image": v.image_path.name, "slice_axis": v.axis_name} for v in validation],
            "held_out_slices": [
                {"case": v.name, "image": v.image_path.name, "slice_axis": v.axis_name, "slices": [int(s) for s in v.val_slices]}
                for v in training if v.val_slices.size
            ],
        }

    def slicing_lines(self, axis_requested: bool) -> List[str]:
        """What the run says before its first step: per case, the axis it is sliced along (and whether
        ``--axis`` chose it) and which slices train and which are held out (as ``info`` prints them)."""
        how = "as --axis asked" if axis_requested else "auto: the axis closest to head-feet"
        lines = []
        for index, volume in enumerate(self.volumes):
            if index >= self.training_count:
                use = f"all {volume.slice_count} held out for validation"
            else:
                use = f"{volume.train_slices.size} train" + (f", held out {slice_ranges(volume.val_slices)}" if volume.val_slices.size else "")
            lines.append(f"case {volume.name!r}: {volume.slice_count} slices along {volume.axis_name} ({how}); {use}{_resampling(volume)}")
        return lines


def _resampling(volume: PreparedVolume) -> str:
    """``; resampled in-plane from 0.78x0.78 mm (512x512) to 3.05x3.05 mm (131x131)``, or nothing."""
    if volume.source_spacing is None:
        return ""
    rows, columns = volume.slices.shape[1:]
    return (f"; resampled in-plane from {volume.source_spacing[1]:.3g}x{volume.source_spacing[2]:.3g} mm ({volume.source_shape[0]}x{volume.source_shape[1]}) "
            f"to {volume.spacing[1]:.3g}x{volume.spacing[2]:.3g} mm ({rows}x{columns})")


#: a crop may hold at most this many times the pixels of the largest training slice (the rest padding,
#: as small slices need to reach a network's or a loss's minimum size); beyond it the crop is a mistake
MAX_CROP_TO_SLICE_AREA = 4


def check_crop(crop: Sequence[int], volumes: Sequence[PreparedVolume]) -> None:
    """Refuse a crop far larger than every training slice: a crop is cut from one slice, so beyond the
    slice it holds only padding, and a huge one exhausts memory before the first step (it is the
    crop, not the machine, that is wrong)."""
    trained = [v for v in volumes if v.train_slices.size] or list(volumes)
    largest = max((v.slices.shape[1:] for v in trained), key=lambda shape: shape[0] * shape[1])
    if int(crop[0]) * int(crop[1]) > MAX_CROP_TO_SLICE_AREA * largest[0] * largest[1]:
        raise UserError(
            f"--crop {crop[0]}x{crop[1]} is far larger than every training slice (the largest is {largest[0]}x{largest[1]} pixels): "
            f"a crop is cut from one slice, and beyond it holds only padding; use --crop {largest[0]},{largest[1]} or less"
        )


def model_metadata(config: TrainConfig, classes: Sequence[ClassInfo], init_metadata: Optional[ModelMetadata]) -> ModelMetadata:
    """The metadata of the model to train: the ``--init`` checkpoint's (without its measurements, nor its
    calibration temperature, fitted to the old weights), else a new one from ``config``."""
    if init_metadata is not None:
        return dataclasses.replace(init_metadata, depth_metrics={}, recommended_depth=None, training={}, temperature=1.0)
    architecture = get_architecture(config.arch)
    kwargs = dict(architecture.default_kwargs)
    if config.features:
        kwargs["features"] = list(config.features)
    kwargs.update(in_channels=2 * config.context + 1, out_channels=out_channels_for(len(classes)))
    return ModelMetadata(config.arch, kwargs, config.context, Normalization.parse(config.norm), list(classes))


def _declared_classes(config: TrainConfig) -> Optional[List[ClassInfo]]:
    """The classes a ``--classes TABLE.json`` run declares (label values matched by class value), or None."""
    if not config.class_table:
        return None
    return classes_from_json(config.class_table, "--classes")


def load_training_data(config: TrainConfig, train_cases: Sequence[Case], val_cases: Sequence[Case], init_metadata: Optional[ModelMetadata],
                       warn: Optional[Callable[[str], None]] = None) -> TrainingData:
    """Read every case, decide the classes, prepare, resample in-plane to the run's spacing
    (:mod:`.spacing`) and split the volumes; sets ``metadata.training_spacing`` (that spacing) and
    ``metadata.slice_distance`` (the median slice spacing of the training volumes)."""
    loaded_train = [load_case(case) for case in train_cases]
    loaded_val = [load_case(case) for case in val_cases]
    everything = loaded_train + loaded_val
    classes, lookups = resolve_classes(
        [(item.case.name, item.label) for item in everything],
        names=config.classes,
        declared=init_metadata.classes if init_metadata else _declared_classes(config),
        other_labels=config.other_labels,
        label_map=config.label_map,
        warn=warn,
    )
    labelled = set().union(*(labelled_by_case(item.case.labelled, classes, labelled_channels(item.label, lookup)) for item, lookup in zip(loaded_train, lookups)))
    # checked as a checkpoint is on loading: names from the labels' segments must fit a .seg.nrrd header
    metadata = model_metadata(config, classes, init_metadata).checked("the model to train")
    unlabelled = unlabelled_channels(config.partial_classes, metadata.classes, labelled) if metadata.uses_softmax else []
    # per case: the classes its datalist entry leaves out are unknown there (names checked before any volume is prepared)
    per_case = [case_unlabelled(item.case.name, item.case.labelled, metadata.classes, unlabelled) for item in everything]
    per_case = per_case if metadata.uses_softmax else [()] * len(per_case)
    base_distance = init_metadata.context_distance if init_metadata is not None else config.slice_distance
    volumes: List[PreparedVolume] = []
    for index, (item, lookup) in enumerate(zip(everything, lookups)):
        volume = prepare_volume(item, metadata.normalization, config.axis, lookup)
        # no training input may hold a held-out slice as a neighbour: the gap covers the neighbours' reach
        reach = base_distance / volume.spacing[0] if base_distance else 1.0
        gap = int(np.ceil(metadata.context * reach - 1e-6)) if config.val_gap is None else config.val_gap
        if index >= len(loaded_train):
            volume.val_slices = np.arange(volume.slice_count)
        elif item.case.held_out is not None:  # the datalist names this case's held-out slices
            volume.train_slices, volume.val_slices = named_hold_out(volume, item.case.held_out, gap)
        elif config.val_slices:  # fewer or smaller blocks where the volume is short (adapt.py)
            volume.train_slices, volume.val_slices, note = fit_hold_out(volume.slice_count, config.val_slices, config.val_blocks, gap, volume.name)
            if note and warn is not None:
                warn(note)
        else:
            volume.train_slices = np.arange(volume.slice_count)
        if index < len(loaded_train) and config.train_slices is not None:
            volume.train_slices = marked_slices(volume, config.train_slices)
        volumes.append(volume)
    del everything, loaded_train, loaded_val, item  # each volume's voxels now live in its prepared views only
    train_volumes = [v for v in volumes if v.train_slices.size]
    if not train_volumes:
        raise UserError("no training slices: give training cases (the validation cases are not trained on)")
    base_spacing = init_metadata.in_plane_spacing if init_metadata is not None else None
    target = target_spacing(config.spacing, train_volumes, base_spacing)
    metadata.training_spacing = recorded_spacing(target, train_volumes)
    metadata.slice_distance = base_distance or median_slice_spacing(train_volumes)
    volumes = [resample_volume(volume, target, len(metadata.classes) + 1) for volume in volumes]
    for volume in volumes:  # the 2.5D neighbours lie the slice distance away in mm, as predict takes them
        volume.context_step = neighbour_step(metadata.slice_distance, volume.spacing[0], metadata.context)
    if config.crop_given:  # a default crop is fitted to the slices instead (adapt.fit_crop)
        check_crop(config.crop, volumes)
    for volume, unknown in zip(volumes, per_case):
        volume.unlabelled = unknown
    return TrainingData(metadata, volumes, len(train_cases), target, unlabelled)


def named_hold_out(volume: PreparedVolume, text: str, gap: int) -> Tuple[np.ndarray, np.ndarray]:
    """A datalist case's ``held_out_slices``: ``(train, held_out)``; the ``gap`` slices beside each held-out
    slice (the 2.5D neighbours' reach) are used for neither, as with ``--val-slices``' blocks."""
    held = np.asarray(parse_slice_ranges(text, volume.slice_count, option=f"'held_out_slices' of case {volume.name!r} (along {volume.axis_name})"), dtype=int)
    near = np.zeros(volume.slice_count, dtype=bool)
    for offset in range(-gap, gap + 1):
        near[np.clip(held + offset, 0, volume.slice_count - 1)] = True
    train = np.flatnonzero(~near)
    if not train.size:
        raise UserError(f"'held_out_slices' of case {volume.name!r} leaves no slice to train on (with the {gap}-slice gap beside each)")
    return train, held


def marked_slices(volume: PreparedVolume, marked: str) -> np.ndarray:
    """``--train-slices``: the volume's training slices among those marked (range text, bounded by the
    volume's slice count before anything is expanded: grammar/slice_ranges)."""
    marked = parse_slice_ranges(marked, volume.slice_count, option=f"--train-slices (case {volume.name!r}, along {volume.axis_name})")
    chosen = np.intersect1d(volume.train_slices, np.asarray(marked, dtype=int))
    if not chosen.size:
        raise UserError(f"--train-slices: every marked slice of case {volume.name!r} is held out for validation; mark others or change --val-slices")
    return chosen

"""The in-plane spacing a run trains at, and each volume brought to it once, slab by slab.

A 2.5D network learns structures at one size in pixels, and ``predict`` resamples every slice to the
spacing the checkpoint records (:mod:`~UNetSegmentationLib.inference.resolution`). Training therefore
chooses one target in-plane spacing (``--spacing``: by default the median in-plane spacing of the
training images; ``native`` keeps every voxel grid as given; a fine-tuning run takes its base model's),
and resamples every volume's slices to it when the cases are prepared, with the same functions
``predict`` uses: raw intensities bilinearly *before* the intensity
mapping, exactly as ``predict`` does, and the ground truth as one-hot channels, bilinearly, then the
largest. Slabs of :data:`SLAB_SLICES` slices are resampled at a time, so the extra memory is the
resampled volume itself (float32) and one slab.

The checkpoint records the target as ``training_spacing`` (row, column) and, as ``slice_distance``, the
median slice spacing of the training images (a fine-tuning run: its base's): the distance in mm at which
every volume's 2.5D neighbour channels are taken (``PreparedVolume.context_step``, interpolated between
slices where a volume's slice spacing differs), as ``predict`` takes them.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from UNetSegmentationLib.inference.resolution import model_grid_size, resample_images, resample_labels
from UNetSegmentationLib.training.train_options import NATIVE_SPACING
from UNetSegmentationLib.training.volumes import PreparedVolume

#: slices resampled at a time (a 512² slab of 16 slices is 16 MiB in float32)
SLAB_SLICES = 16
NATIVE = NATIVE_SPACING  # ``--spacing native``, parsed by training/train_options.parse_spacing
#: what ``--spacing`` may be: None (the median of the training images), ``native``, or (row, column) mm
SpacingChoice = Union[None, str, Sequence[float]]


def median_in_plane(volumes: Sequence[PreparedVolume]) -> Tuple[float, float]:
    """The median (row, column) spacing in mm of ``volumes``' slices."""
    return float(np.median([v.spacing[1] for v in volumes])), float(np.median([v.spacing[2] for v in volumes]))


def median_slice_spacing(volumes: Sequence[PreparedVolume]) -> float:
    """The median spacing in mm between consecutive slices of ``volumes``."""
    return float(np.median([v.spacing[0] for v in volumes]))


def target_spacing(choice: SpacingChoice, training: Sequence[PreparedVolume], base: Optional[Sequence[float]] = None) -> Optional[Tuple[float, float]]:
    """The (row, column) mm every volume is resampled to, or None (``native``: each volume as given).

    ``base``: the in-plane spacing of the checkpoint a fine-tuning run starts from; it wins, since the
    network's filters are tuned to structures of that size in pixels.
    """
    if base is not None:
        return float(base[0]), float(base[1])
    if choice == NATIVE:
        return None
    if choice is None:
        return median_in_plane(training)
    return float(choice[0]), float(choice[1])


def recorded_spacing(target: Optional[Tuple[float, float]], training: Sequence[PreparedVolume]) -> List[float]:
    """``training_spacing`` for the checkpoint: the target, or (native) the median of the images as they were."""
    return list(target) if target is not None else list(median_in_plane(training))


def resample_volume(volume: PreparedVolume, target: Optional[Tuple[float, float]], channel_count: int,
                    slab_slices: int = SLAB_SLICES, images: Callable[[np.ndarray, Tuple[int, int]], np.ndarray] = resample_images) -> PreparedVolume:
    """``volume`` with its slices and targets resampled in-plane to ``target`` mm (itself when its
    spacing already is the target, within :data:`~UNetSegmentationLib.geometry.spacing_match.SAME_SPACING`).

    The resampled image is float32 in the image's raw units (the intensity mapping is applied per batch
    later, as ``predict`` applies it after resampling); targets stay uint8 channel indices
    (``channel_count`` = classes + 1). ``slab_slices`` slices are resampled at a time, by ``images``."""
    if target is None:
        return volume
    slices, rows, columns = volume.slices.shape
    size = model_grid_size((rows, columns), volume.spacing[1:], target)
    if size == (rows, columns):
        return volume
    image = np.empty((slices,) + size, dtype=np.float32)
    targets = np.empty((slices,) + size, dtype=np.uint8)
    for start in range(0, slices, slab_slices):
        stop = min(start + slab_slices, slices)
        slab = np.asarray(volume.slices[start:stop], dtype=np.float32)[:, None]
        image[start:stop] = images(slab, size)[:, 0]
        targets[start:stop] = resample_labels(np.asarray(volume.targets[start:stop]), size, channel_count)
    volume.source_spacing, volume.source_shape = volume.spacing, (rows, columns)
    volume.slices, volume.targets = image, targets
    volume.spacing = (volume.spacing[0], rows * volume.spacing[1] / size[0], columns * volume.spacing[2] / size[1])
    return volume

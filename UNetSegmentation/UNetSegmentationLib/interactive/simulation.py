"""Simulated users: where the next click goes, and what a wrong previous mask looks like.

Interactive networks are trained and measured by simulation (Xu et al., "Deep Interactive Object
Selection", CVPR 2016; Sofiiuk et al., RITM, ICIP 2022; Diaz-Pinto et al., DeepEdit, MICCAI 2022):
the next click goes at the centre of the largest error region — the point farthest from its border
(a distance transform) — positive where the object was missed, negative where too much was taken.
The same rule drives the training (training/interactive_*.py) and the NoC benchmark, so the network
learns from the clicks it will be measured with.

Previous masks in training are, besides the network's own predictions, corrupted versions of the
truth (:func:`corrupt_mask`: eroded, dilated, shifted, with holes), which is what an automatic result
or an earlier correction looks like when it is wrong. Pure numpy and scipy.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy import ndimage


def _centre_of_largest(region_mask: np.ndarray, rng: np.random.Generator) -> Tuple[int, int, int]:
    """``(area, row, column)`` of the largest connected region's deepest point (ties broken by ``rng``)."""
    labels, count = ndimage.label(region_mask)
    if count == 0:
        return 0, -1, -1
    areas = np.bincount(labels.ravel())[1:]
    largest = np.flatnonzero(areas == areas.max())
    region = labels == (int(rng.choice(largest)) + 1)
    # padded with background so the slice's edge counts as the region's border
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    deepest = np.argwhere(depth == depth.max())
    row, column = deepest[int(rng.integers(len(deepest)))]
    return int(areas.max()), int(row), int(column)


def next_click(prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> Optional[Tuple[int, int, bool]]:
    """``(row, column, positive)`` of the next simulated click on a slice, or None where the slice has no error.

    The click goes at the deepest point (largest distance to the border) of the largest connected
    error region; positive where that region is a false negative (object missed), negative where it
    is a false positive.
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape or prediction.ndim != 2:
        raise ValueError(f"prediction and truth must be two images of one shape, got {prediction.shape} and {truth.shape}")
    missed_area, missed_row, missed_column = _centre_of_largest(truth & ~prediction, rng)
    extra_area, extra_row, extra_column = _centre_of_largest(prediction & ~truth, rng)
    if missed_area == 0 and extra_area == 0:
        return None
    if missed_area >= extra_area:
        return missed_row, missed_column, True
    return extra_row, extra_column, False


def _disk(radius: int) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    return grid[:, None] ** 2 + grid[None, :] ** 2 <= radius ** 2


def corrupt_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A wrong version of ``mask`` (bool HxW): one or two of erosion, dilation, a shift and holes,
    each scaled to the object's size (its equivalent radius), as wrong automatic results are."""
    mask = np.asarray(mask, dtype=bool)
    area = int(mask.sum())
    radius = max(1.0, float(np.sqrt(area / np.pi)))  # the equivalent disk's radius, in pixels
    result = mask.copy()
    kinds = rng.choice(4, size=int(rng.integers(1, 3)), replace=False)
    for kind in kinds:
        size = max(1, int(round(radius * rng.uniform(0.1, 0.4))))
        if kind == 0 and area:
            eroded = ndimage.binary_erosion(result, _disk(size))
            result = eroded if eroded.any() else result
        elif kind == 1:
            result = ndimage.binary_dilation(result, _disk(size))
        elif kind == 2:
            shift = (int(rng.integers(-size, size + 1)), int(rng.integers(-size, size + 1)))
            result = ndimage.shift(result.astype(np.uint8), shift, order=0, mode="constant", cval=0).astype(bool)
        elif area:
            for _ in range(int(rng.integers(1, 4))):
                inside = np.argwhere(result)
                if not len(inside):
                    break
                row, column = inside[int(rng.integers(len(inside)))]
                hole = max(1, int(round(radius * rng.uniform(0.1, 0.35))))
                r0, c0 = max(0, row - hole), max(0, column - hole)
                disk = _disk(hole)[r0 - (row - hole):, c0 - (column - hole):]
                window = result[r0:row + hole + 1, c0:column + hole + 1]
                window &= ~disk[: window.shape[0], : window.shape[1]]
    return result

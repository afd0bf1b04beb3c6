"""The simulated user (interactive/simulation.py), on the real lungs of the slicerio chest CT's
segmentation: the next click goes at the deepest point of the largest error region, positive where
the object was missed, negative where too much was taken; corrupted previous masks are plausible
wrong results (eroded, dilated, shifted, holed) of about the object's size."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from UNetSegmentationLib.interactive.simulation import corrupt_mask, next_click


@pytest.fixture(scope="module")
def right_lung(chest_segmentation_path) -> np.ndarray:
    """The right lung on the slice where it is largest (a real, irregular object)."""
    import slicerio

    segmentation = slicerio.read_segmentation(str(chest_segmentation_path))
    lung = segmentation["voxels"] == 5
    best = int(np.argmax(lung.sum(axis=(0, 1))))
    return lung[:, :, best]


def test_no_error_no_click(right_lung):
    assert next_click(right_lung, right_lung, np.random.default_rng(0)) is None


def test_from_nothing_the_first_click_is_positive_at_the_objects_deepest_point(right_lung):
    row, column, positive = next_click(np.zeros_like(right_lung), right_lung, np.random.default_rng(0))
    depth = ndimage.distance_transform_edt(right_lung)
    assert positive and right_lung[row, column]
    assert depth[row, column] == depth.max()


def test_too_much_taken_gives_a_negative_click_inside_the_largest_extra_region(right_lung):
    extra = np.zeros_like(right_lung)
    extra[:20, :20] = True  # a large false positive far from the lung
    extra[-3:, -3:] = True  # a small one
    prediction = (right_lung | extra)
    row, column, positive = next_click(prediction, right_lung, np.random.default_rng(0))
    assert not positive and row < 20 and column < 20 and not right_lung[row, column]
    assert (row, column) != (0, 0)  # the slice's edge counts as the region's border: the centre, not a corner


def test_the_larger_of_missed_and_extra_decides_the_sign(right_lung):
    eroded = ndimage.binary_erosion(right_lung, iterations=3)
    small_extra = np.zeros_like(right_lung)
    small_extra[0:2, 0:2] = True
    _, _, positive = next_click(eroded | small_extra, right_lung, np.random.default_rng(0))
    assert positive


def test_corrupted_masks_differ_from_the_truth_but_stay_near_it(right_lung):
    rng = np.random.default_rng(1)
    dices = []
    for _ in range(40):
        corrupted = corrupt_mask(right_lung, rng)
        assert corrupted.shape == right_lung.shape and corrupted.dtype == bool
        dices.append(2 * (corrupted & right_lung).sum() / (corrupted.sum() + right_lung.sum()))
    assert min(dices) > 0.3 and np.mean(dices) < 0.97 and max(dices) < 1.0


def test_corrupting_an_empty_mask_keeps_it_empty_or_small():
    empty = np.zeros((32, 32), dtype=bool)
    assert not corrupt_mask(empty, np.random.default_rng(0)).any()

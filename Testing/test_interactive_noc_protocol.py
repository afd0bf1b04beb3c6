"""The interactive benchmark's simulated user (``bench/noc_protocol.py``) and its CPU baseline, Slicer's
"Grow from seeds" (``bench/grow_from_seeds.py``, ``vtkImageGrowCutSegment`` from slicer-core), issue 26.

Specified on a small real volume: the slicerio CT's lumbar spine resampled to 1.5 mm and cropped to
73×73×30 voxels (``support.write_lumbar_crop``), its lumbar vertebral column the object. No network,
no training: the methods under test are stand-ins with a known behaviour, or Grow from seeds itself.
``bench/interactive_noc.py`` runs the same protocol with the interactive network's session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from mrml_support import import_slicer_core  # noqa: E402
from noc_protocol import CAP, dice, error_slice, next_click_3d, simulate  # noqa: E402
from support import write_lumbar_crop  # noqa: E402

LUMBAR = 4


@pytest.fixture(scope="module")
def lumbar(tmp_path_factory):
    """(intensity int16 [slice, row, column], spacing mm in that order, the lumbar column's mask)."""
    image_path, label_path = write_lumbar_crop(tmp_path_factory.mktemp("lumbar"))
    image = sitk.ReadImage(str(image_path))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))) == LUMBAR
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing())), truth


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# -- where the clicks go ---------------------------------------------------------------------------------


def test_from_nothing_the_first_click_is_positive_at_the_deepest_point_of_the_object_on_its_largest_slice(lumbar):
    _, _, truth = lumbar
    index, row, column, positive = next_click_3d(np.zeros_like(truth), truth, rng())
    areas = truth.sum(axis=(1, 2))
    assert positive
    assert index == int(np.flatnonzero(areas == areas.max())[0])  # the largest slice; on a tie the first
    labels, _ = ndimage.label(truth[index])
    largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    depth = ndimage.distance_transform_edt(np.pad(largest, 1))[1:-1, 1:-1]
    assert largest[row, column] and depth[row, column] == depth.max()


def test_the_next_click_goes_to_the_slice_with_the_most_wrong_voxels_and_is_negative_on_taken_background(lumbar):
    _, _, truth = lumbar
    prediction = truth.copy()
    prediction[12, 2:14, 2:14] = True  # a 12x12 false positive, away from the column
    prediction[20] = False  # and the whole object missed on another slice ...
    assert truth[20].sum() > 144 and error_slice(prediction, truth) == 20  # ... which has more wrong voxels
    assert next_click_3d(prediction, truth, rng())[3] is True
    prediction[20] = truth[20]
    index, row, column, positive = next_click_3d(prediction, truth, rng())
    assert (index, positive) == (12, False) and 7 <= row <= 8 and 7 <= column <= 8


def test_a_perfect_mask_asks_for_no_click(lumbar):
    _, _, truth = lumbar
    assert error_slice(truth, truth) is None and next_click_3d(truth, truth, rng()) is None


# -- counting --------------------------------------------------------------------------------------------


class SliceOracle:
    """A stand-in method that gets the clicked slice exactly right and leaves the others."""

    def __init__(self, truth: np.ndarray, initial: np.ndarray) -> None:
        self.truth, self.mask = truth, initial.copy()

    def click(self, click):
        self.mask[click[0]] = self.truth[click[0]]
        return self.mask.copy()


class Deaf:
    """A stand-in method that ignores every click."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    def click(self, click):
        return self.mask


def test_noc_is_the_number_of_clicks_after_which_the_3d_dice_first_reaches_the_target(lumbar):
    _, _, truth = lumbar
    empty = np.zeros_like(truth)
    trace = simulate(lambda: (SliceOracle(truth, empty), empty), truth, cap=30)  # one slice of 30 per click
    assert trace.dice[0] == 0.0 and len(trace.dice) == len(trace.clicks) + 1 == len(trace.latency_ms) + 1
    assert all(a < b for a, b in zip(trace.dice, trace.dice[1:]))  # each click fixed one more slice
    assert trace.dice[-1] >= 0.90 > trace.dice[-2]  # the run stops at the highest target
    for target in (0.85, 0.90):
        count = trace.noc(target, cap=30)
        assert trace.dice[count] >= target and (count == 0 or trace.dice[count - 1] < target)
    assert [c[0] for c in trace.clicks[:4]] == [0, 1, 2, 3]  # the four largest slices (equal areas), in order


def test_a_mask_already_good_enough_needs_no_click_and_one_never_good_enough_counts_as_a_failure_at_the_cap(lumbar):
    _, _, truth = lumbar
    good = truth.copy()
    good[0] = False  # one slice of 30 missing: Dice above 0.90
    trace = simulate(lambda: (Deaf(good), good), truth)
    assert trace.clicks == [] and trace.noc(0.90) == 0 and dice(good, truth) > 0.9
    empty = np.zeros_like(truth)
    trace = simulate(lambda: (Deaf(empty), empty), truth)
    assert len(trace.clicks) == CAP and trace.noc(0.85) is None and trace.noc(0.85, cap=CAP) is None


# -- Grow from seeds -------------------------------------------------------------------------------------


@pytest.fixture
def GrowFromSeeds():
    """The adapter class; skipped without slicer-core, whose ``vtkImageGrowCutSegment`` it drives (a failure
    with UNETSEG_REQUIRE_MRML=1)."""
    import_slicer_core()
    from grow_from_seeds import GrowFromSeeds

    return GrowFromSeeds


def test_grow_from_seeds_grows_the_object_from_a_positive_clicks_seed_disk_and_keeps_the_border_background(lumbar, GrowFromSeeds):
    from grow_from_seeds import disk

    intensity, spacing, truth = lumbar
    grow = GrowFromSeeds(intensity, spacing, radius_mm=5.0)
    click = next_click_3d(np.zeros_like(truth), truth, rng())
    mask = grow.click(click)
    seed = disk(truth.shape[1:], click[1], click[2], 5.0, spacing[1:])
    assert mask.shape == truth.shape and mask.dtype == bool
    assert mask[click[0]][seed].all() and seed.sum() == 37  # a 5 mm disk at 1.5 mm: 37 pixels
    assert mask.sum() > 20 * seed.sum()  # it grew, across slices too
    assert mask[-1].sum() > seed.sum()  # into the last slice too, which the filter alone leaves out
    assert not mask[:, [0, -1], :].any() and not mask[:, :, [0, -1]].any()  # the background seed: every slice's border
    assert dice(mask, truth) > 0.5


def test_grow_from_seeds_a_negative_click_over_an_earlier_positive_seed_relabels_it(lumbar, GrowFromSeeds):
    intensity, spacing, truth = lumbar
    grow = GrowFromSeeds(intensity, spacing, radius_mm=5.0)
    click = next_click_3d(np.zeros_like(truth), truth, rng())
    assert grow.click(click)[click[0], click[1], click[2]]
    second = grow.click((3, 36, 36, True))
    assert second[3, 36, 36]
    mask = grow.click((click[0], click[1], click[2], False))  # the same place, now background: the filter is reset
    assert not mask[click[0], click[1], click[2]]
    assert mask[3, 36, 36]


def test_grow_from_seeds_from_the_automatic_result_seeds_its_core_and_a_shell_around_it_and_grows_the_band(lumbar, GrowFromSeeds):
    intensity, spacing, truth = lumbar
    automatic = ndimage.binary_dilation(truth, iterations=2)  # a too large automatic result
    trace = simulate(lambda: (GrowFromSeeds(intensity, spacing, 5.0, automatic), automatic), truth, cap=3)
    assert trace.dice[0] == pytest.approx(dice(automatic, truth))
    assert len(trace.clicks) == 3 and not any(c[3] for c in trace.clicks)  # too large: negative clicks
    grow = GrowFromSeeds(intensity, spacing, 5.0, automatic)
    plane = np.zeros((1, 3, 3), dtype=bool)
    plane[0] = ndimage.generate_binary_structure(2, 1)
    near = ndimage.binary_dilation(automatic, plane, iterations=2)
    shell = ndimage.binary_dilation(near, plane) & ~near
    assert (grow.seeds[ndimage.binary_erosion(automatic, plane, iterations=2)] == 1).all() and (grow.seeds[shell] == 2).all()
    band = near & ~ndimage.binary_erosion(automatic, plane, iterations=2)
    assert not grow.seeds[:, 1:-1, 1:-1][band[:, 1:-1, 1:-1]].any()  # the band (inside the border's seed): the filter decides
    mask = grow.click(trace.clicks[0])
    others = np.arange(len(mask)) != trace.clicks[0][0]  # the slices other than the clicked one keep their seeds
    assert not mask[shell].any() and mask[others][grow.seeds[others] == 1].all()


def test_grow_from_seeds_from_an_automatic_result_that_missed_the_object_grows_a_positive_click_outside_it(lumbar, GrowFromSeeds):
    intensity, spacing, truth = lumbar
    automatic = np.zeros_like(truth)
    automatic[:, 2:12, 2:12] = True  # somewhere else entirely
    trace = simulate(lambda: (GrowFromSeeds(intensity, spacing, 5.0, automatic), automatic), truth, cap=6)
    assert trace.clicks[0][3] and max(trace.dice) > 0.5  # the object grows from the positive clicks


def test_the_protocol_with_grow_from_seeds_reaches_dice_085_on_the_lumbar_column(lumbar, GrowFromSeeds):
    intensity, spacing, truth = lumbar
    empty = np.zeros_like(truth)
    trace = simulate(lambda: (GrowFromSeeds(intensity, spacing, 5.0), empty), truth)
    assert trace.clicks[0][3] and trace.noc(0.85) is not None and trace.noc(0.85) <= 5
    assert all(ms > 0 for ms in trace.latency_ms)

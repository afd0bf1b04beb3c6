"""Defaults fitted to small volumes (issue 22, defect 2; training/adapt.py): the crop no larger than the
slices, fewer or smaller held-out blocks where the volume is short, a warning that says so, never a failure."""

from __future__ import annotations

import numpy as np
import pytest

from UNetSegmentationLib.training.adapt import MIN_CROP, MIN_TRAINING_SHARE, fit_crop, fit_hold_out
from UNetSegmentationLib.training.volumes import held_out_blocks


class Slices:
    """What fit_crop reads of a prepared volume: its slices' shape and its training slices."""

    def __init__(self, count, rows, columns):
        self.slices = np.zeros((count, rows, columns), dtype=np.int16)
        self.train_slices = np.arange(count)


def test_a_default_crop_shrinks_to_the_slices_and_says_so():
    crop, note = fit_crop((128, 128), False, [Slices(30, 36, 36)], multiple=16)
    assert crop == (32, 32) and "larger than the training slices (36x36" in note and "32x32" in note  # within the slice: no padding
    assert fit_crop((128, 128), False, [Slices(30, 12, 20)], multiple=16)[0] == (MIN_CROP, MIN_CROP)  # never below MIN_CROP
    assert fit_crop((96, 96), False, [Slices(30, 200, 180)], multiple=16) == ((96, 96), None)  # large slices: nothing to adapt
    assert fit_crop((128, 128), True, [Slices(30, 36, 36)], multiple=16) == ((128, 128), None)  # --crop given: kept


def test_the_requested_blocks_stay_where_the_volume_is_long_enough():
    train, val, note = fit_hold_out(100, 0.2, 3, 1)
    expected = held_out_blocks(100, 0.2, 3, 1)
    assert note is None and np.array_equal(train, expected[0]) and np.array_equal(val, expected[1])


def test_the_lumbar_crop_holds_out_one_block_at_its_end():
    """30 slices at 1.5 mm, a 10 mm model: a gap of 7; 3 blocks of 2 with their gaps left nothing."""
    with pytest.raises(Exception, match="leaves no slice to train on"):
        held_out_blocks(30, 0.2, 3, 7)
    train, val, note = fit_hold_out(30, 0.2, 3, 7, "lumbar")
    assert list(val) == list(range(24, 30)) and list(train) == list(range(0, 17))
    assert "case 'lumbar'" in note and "one block of 6 slice(s) at the volume's end" in note
    assert train.size >= MIN_TRAINING_SHARE * 30 and not set(range(17, 24)) & set(train)  # the gap: no neighbour of a held-out slice


@pytest.mark.parametrize("count, gap", [(3, 7), (12, 7), (30, 7), (40, 2), (8, 0), (1, 1)])
def test_any_volume_trains_on_at_least_half_of_its_slices_and_never_next_to_a_held_out_one(count, gap):
    train, val, note = fit_hold_out(count, 0.2, 3, gap)
    assert train.size >= MIN_TRAINING_SHARE * count and not set(train) & set(val)
    assert all(abs(int(t) - int(v)) > gap for t in train for v in val)
    if not val.size:
        assert "no slices held out" in note

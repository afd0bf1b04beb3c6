"""The run's defaults fitted to the data they are given (issue 22, defect 2): a small volume adapts the
crop and the held-out blocks, and says so in a ``warning`` event, instead of stopping.

The slicerio CT's lumbar spine cropped to 73×73×30 voxels at 1.5 mm (36×36 pixels at the bundled
model's 3.05 mm, 30 slices) stopped twice with the fine-tuning defaults: the crop of 128 was refused as
larger than every slice, and ``--val-slices 0.2`` in 3 blocks, each with a 7-slice gap for the 2.5D
neighbours' reach (10 mm / 1.5 mm), left no slice to train on.

The rules of thumb, measured by ``bench/small_volume_finetune.py`` (BENCHMARKS.md, "Fine-tuning a
small volume"):

- **crop**: a default crop larger than the training slices shrinks to the largest slice, rounded down
  to the network's multiple (no larger than the slices: no padding), but to no less than
  :data:`MIN_CROP` pixels. On the lumbar crop (fine-tuning defaults, hold-out 0.2, one seed, a busy
  2-core machine) the held-out lumbar Dice went 0.000 → 0.823 with crops of 48 (36 rounded up: a
  third padding), → 0.889 with 32 and → 0.890 with 16, in 594, 68 and 36 s: a crop within the slice
  is at least as good and far cheaper. 32 is the floor because the bundled UNet++ pools 4 times:
  below 32 its deepest level sees 1×1 pixel, and slices of 16-31 pixels are padded to 32;
- **held-out blocks**: every block costs its slices plus a gap on each side. Blocks are dropped one by
  one while the slices left to train on would be fewer than :data:`MIN_TRAINING_SHARE` of the volume;
  one block left goes to the volume's end (a gap on one side only) and shrinks if it must; a volume
  too short even for one held-out slice trains on all of its slices, without validation.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from UNetSegmentationLib.training.volumes import PreparedVolume, held_out_blocks

#: the smallest side a fitted default crop gets, in pixels (bench/small_volume_finetune.py)
MIN_CROP = 32
#: held-out blocks may take at most the other half of a volume's slices (with their gaps)
MIN_TRAINING_SHARE = 0.5

Crop = Tuple[int, int]


def fit_crop(crop: Sequence[int], given: bool, volumes: Sequence[PreparedVolume], multiple: int) -> Tuple[Crop, Optional[str]]:
    """The crop to train with, and what was adapted (None: nothing). A crop the user gave is kept
    (:func:`~.dataset.check_crop` refuses one far too large); the default shrinks to the slices."""
    crop = (int(crop[0]), int(crop[1]))
    trained = [v for v in volumes if v.train_slices.size] or list(volumes)
    if given or not trained:
        return crop, None
    rows = max(int(v.slices.shape[1]) for v in trained)
    columns = max(int(v.slices.shape[2]) for v in trained)
    fitted = tuple(min(c, max(MIN_CROP, multiple, side // multiple * multiple)) for c, side in zip(crop, (rows, columns)))
    if fitted == crop:
        return crop, None
    return fitted, (f"the default crop {crop[0]}x{crop[1]} is larger than the training slices ({rows}x{columns} pixels at the run's spacing): "
                    f"training on crops of {fitted[0]}x{fitted[1]} instead (--crop sets it)")


def fit_hold_out(slice_count: int, fraction: float, blocks: int, gap: int, case: str = "") -> Tuple[np.ndarray, np.ndarray, Optional[str]]:
    """``(train, held_out, note)``: :func:`~.volumes.held_out_blocks` as asked where it leaves at least
    :data:`MIN_TRAINING_SHARE` of the slices to train on, else fewer blocks, then one block at the end,
    smaller if it must, else no hold-out; ``note`` says what was adapted (None: nothing)."""
    minimum = int(math.ceil(MIN_TRAINING_SHARE * slice_count))
    held = max(1, int(round(fraction * slice_count)))
    asked = f"holding out {held} of {slice_count} slices in {blocks} block(s) with a gap of {gap} (the neighbours' reach)"
    where = f"case {case!r}: " if case else ""
    for count in range(max(1, blocks), 0, -1):
        train, val = _spread_blocks(slice_count, fraction, count, gap)
        if train.size >= minimum:
            if count == blocks:
                return train, val, None
            return train, val, f"{where}{asked} would leave too few slices to train on: {count} block(s) instead"
    for size in range(held, 0, -1):  # one block at the end: a gap on one side only
        if slice_count - size - gap >= minimum:
            val = np.arange(slice_count - size, slice_count)
            train = np.arange(slice_count - size - gap)
            return train, val, f"{where}{asked} would leave too few slices to train on: one block of {size} slice(s) at the volume's end instead"
    return np.arange(slice_count), np.zeros(0, dtype=int), (f"{where}{asked} would leave too few slices to train on: no slices held out "
                                                            "(trained on all of them; the model card has no validation Dice)")


def _spread_blocks(slice_count: int, fraction: float, blocks: int, gap: int) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`~.volumes.held_out_blocks`, with "no slice left" as an empty training set instead of an error."""
    from UNetSegmentationLib.errors import UserError

    try:
        return held_out_blocks(slice_count, fraction, blocks, gap)
    except UserError:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)

"""Clinical CT speed (issue 25): where ``unetseg predict``'s time and memory go on a clinical chest CT,
before and after, and against what a MONAI user would write and against the limit.

Inputs: the slicerio chest CT (the bundled model's own data, 128² × 34 at 3.05 × 3.05 × 10 mm)
resampled to a clinical grid: 512 × 512 at 0.76 mm in-plane with 300 slices of 1.13 mm (or 600 of
0.57 mm), intensities linearly (``Testing/clinical_volumes.py``'s grid rule, the same extent), its
ground truth onto the same grid. Built once into ``--cache`` (default: a folder in the temp directory).

Tables:
1. ``stages``: ``unetseg predict --progress json`` of ``--old`` (a git revision, checked out into a
   worktree) and of the working tree, alternating in fresh processes ``--rounds`` times per size
   (machine noise falls on both alike); medians of the wall time, the done event's stage timings and
   peak RSS (``ru_maxrss`` of the child), labels compared voxel for voxel and as Dice against the truth;
2. ``compare``: in one process, interleaved: the network alone on the model-grid slices (plus reading
   and writing: the limit) and MONAI's ``Spacing`` to the model's spacing, ``SliceInferer`` of the same
   network, ``Spacing`` back.

    python bench/clinical_speed.py --old 7c54b3f [--rounds 3] [--sizes 300,600] [--tables stages,compare]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))
sys.path.insert(0, str(REPO / "UNetSegmentation"))
MODEL = REPO / "UNetSegmentation/Resources/Models/chest-ct-unetplusplus.safetensors"
STAGES = ("load_model", "read", "body", "preprocess", "network", "postprocess", "resample", "write")


def fixture(slices: int, cache: Path) -> tuple:
    """``(ct, truth)`` files of the slicerio CT on a 512 × 512 × ``slices`` grid (0.76 mm in-plane), built once."""
    import slicerio
    from clinical_volumes import resampled_grid, resampled_labels, truth_label_map
    from UNetSegmentationLib.io.segmentations import write_labels
    from UNetSegmentationLib.model.header import read_metadata

    ct_file, truth_file = cache / f"ct-512x512x{slices}.nrrd", cache / f"ct-512x512x{slices}-truth.seg.nrrd"
    if ct_file.exists() and truth_file.exists():
        return ct_file, truth_file
    cache.mkdir(parents=True, exist_ok=True)
    source, segmentation = Path(slicerio.get_testdata_file("CTChest4.nrrd")), Path(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
    image = sitk.ReadImage(str(source))
    grid = resampled_grid(image, (0.25, 0.25, image.GetSize()[2] / slices))
    ct = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, image.GetPixelID())
    truth = resampled_labels(truth_label_map(source, segmentation, MODEL), grid)
    sitk.WriteImage(ct, str(ct_file), True)
    write_labels(sitk.GetArrayFromImage(truth), ct, truth_file, read_metadata(MODEL).classes)
    return ct_file, truth_file


if __name__ == "__main__" and sys.argv[1:2] == ["--fixture"]:
    for n in sys.argv[2:]:
        print(fixture(int(n), Path(tempfile.gettempdir()) / "unetseg-clinical-speed"))

"""The slicerio chest CT as clinical scans would give it: resampled to 0.76 mm in-plane (512 × 512, a
typical clinical CT matrix) or to 2.5 mm slices, with its ground truth resampled onto the same grids.

The CT (128 × 128 × 34 at 3.05 × 3.05 × 10 mm) is the bundled model's own training data, so the Dice on
its original grid is the reference a resampled version must reach. Intensities are resampled
linearly; the ground truth label by label: each label's indicator resampled linearly and the largest
taken (smooth boundaries instead of blocky nearest-neighbour copies, and thin structures such as the
ribs keep their width; ITK's label-Gaussian interpolator would smooth them away, even on the original
grid). Both grids cover the original's physical extent exactly (pixel centres as in
``align_corners=False``); the original version is the CT and its truth as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.io.segmentations import write_labels
from UNetSegmentationLib.model.header import read_metadata

#: the versions of the CT: name → (factor on the spacing of axes i, j, k)
VERSIONS = {
    "original": (1.0, 1.0, 1.0),
    "0.76mm-in-plane": (0.25, 0.25, 1.0),
    "2.5mm-slices": (1.0, 1.0, 0.25),
}


def resampled_grid(image: sitk.Image, factors: Sequence[float]) -> sitk.Image:
    """An empty image covering ``image``'s extent with its spacing multiplied by ``factors``."""
    spacing = np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    new_spacing = spacing * np.asarray(factors, dtype=float)
    new_size = np.round(size * spacing / new_spacing).astype(int)
    new_spacing = size * spacing / new_size  # exactly the same extent
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((new_spacing - spacing) / 2)
    grid = sitk.Image([int(s) for s in new_size], sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in new_spacing])
    grid.SetOrigin([float(o) for o in origin])
    grid.SetDirection(image.GetDirection())
    return grid


def truth_label_map(ct_path: Path, segmentation_path: Path, checkpoint: Path) -> sitk.Image:
    """The ground truth as a label map of the checkpoint's class values on the CT's grid."""
    from UNetSegmentationLib.cli.evaluate import labelled_volumes
    from UNetSegmentationLib.training.cases import Case

    classes = read_metadata(checkpoint).classes
    volume = labelled_volumes([Case("chest", Path(ct_path), Path(segmentation_path))], classes, "background")[0]
    values = np.array([0] + [c.value for c in classes], dtype=np.uint8)[volume.truth]
    label = sitk.GetImageFromArray(values)
    label.CopyInformation(sitk.ReadImage(str(ct_path)))
    return label


def resampled_labels(labels: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """``labels`` on ``grid``: every label's indicator resampled linearly, the largest taken (background 0)."""
    values = np.unique(sitk.GetArrayViewFromImage(labels))
    indicators = [sitk.Resample(sitk.Cast(labels == int(value), sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32) for value in values]
    chosen = values[np.argmax(np.stack([sitk.GetArrayViewFromImage(i) for i in indicators]), axis=0)].astype(np.uint8)
    result = sitk.GetImageFromArray(chosen)
    result.CopyInformation(grid)
    return result


def write_version(ct_path: Path, segmentation_path: Path, checkpoint: Path, name: str, folder: Path) -> Tuple[Path, Path]:
    """``(ct, truth)`` files of the version ``name`` of :data:`VERSIONS` in ``folder`` (truth: a
    ``.seg.nrrd`` named by the checkpoint's classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(ct_path))
    truth = truth_label_map(ct_path, segmentation_path, checkpoint)
    grid = resampled_grid(image, VERSIONS[name])
    ct = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, image.GetPixelID())
    truth = resampled_labels(truth, grid)
    ct_file, truth_file = folder / f"chest-{name}.nrrd", folder / f"chest-{name}-truth.seg.nrrd"
    sitk.WriteImage(ct, str(ct_file), True)
    write_labels(sitk.GetArrayFromImage(truth), ct, truth_file, read_metadata(checkpoint).classes)
    return ct_file, truth_file

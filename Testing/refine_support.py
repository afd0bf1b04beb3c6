"""What the refinement tests share: a stub interactive network whose answer is known (so a session's
bookkeeping is tested exactly), a tiny real interactive checkpoint (untrained: the real class, the
real shapes), and the slicerio chest CT's left lung as an object to refine."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np

from UNetSegmentationLib.interactive.guidance import GuidanceSpec
from UNetSegmentationLib.model.metadata import ModelMetadata, Normalization, make_classes

#: the bundled model's grid: the slicerio CT is on it (3.05 mm in-plane, 10 mm slices)
CHEST_SPACING = [3.04687595367432, 3.04687595367432]


def interactive_metadata(spacing=CHEST_SPACING, slice_distance: float = 10.0, features=(4, 8, 16)) -> ModelMetadata:
    """The metadata of a one-class interactive UNet++ at the chest CT's spacing (context 1: 3 + 3 channels)."""
    kwargs = {"in_channels": 6, "out_channels": 1, "features": list(features), "deep_supervision": True}
    return ModelMetadata("unetplusplus", kwargs, 1, Normalization("ct", (-1000.0, 1000.0)), make_classes(["object"]),
                         training_spacing=list(spacing), slice_distance=slice_distance, guidance=GuidanceSpec().to_dict())


class StubModel:
    """An interactive network whose answer is known: the previous mask, plus the positive clicks' disks,
    less the negative ones', kept only on air (CT below -500 HU: the lungs and outside the body), so an
    object propagated from a lung slice ends where the lung ends. Records every call's input shapes."""

    def __init__(self, metadata: ModelMetadata = None) -> None:
        self.metadata = metadata or interactive_metadata()
        self.spec = GuidanceSpec.from_dict(self.metadata.guidance)
        self.calls: List[Tuple[tuple, tuple]] = []

    def predict(self, image_channels: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        self.calls.append((image_channels.shape, guidance.shape))
        centre = image_channels[:, image_channels.shape[1] // 2]
        air = centre < 0.25  # normalised ct:-1000,1000 → -500 HU
        return (np.clip(guidance[:, 0] + guidance[:, 1] - guidance[:, 2], 0.0, 1.0) * air).astype(np.float32)


def write_tiny_interactive_checkpoint(path: Path) -> Path:
    """An untrained interactive UNet++ (features 4, 8, 16) at the chest CT's spacing."""
    from UNetSegmentationLib.model.checkpoint import create_checkpoint

    create_checkpoint(path, interactive_metadata())
    return path


def left_lung(chest_segmentation_path: Path, chest_ct_path: Path) -> np.ndarray:
    """The chest CT's left lung as a ``[k, j, i]`` mask (the object refined in the tests)."""
    import SimpleITK as sitk

    from UNetSegmentationLib.io.labels import read_label

    labels = read_label(chest_segmentation_path, sitk.ReadImage(str(chest_ct_path)))
    (value,) = [s.value for s in labels.segments if s.name == "left lung"]
    return labels.array == value

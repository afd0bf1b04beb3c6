"""Small synthetic training cases for the training, metrics and export tests (no fixtures here:
``conftest.py`` belongs to the engine's tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from conftest import make_volume


def write_tiny_case(folder: Path, size=(40, 36, 12)) -> Path:
    """``case.nrrd`` (CT-like, anisotropic) + ``case_label.nrrd`` (1 'body' above -500 HU, 2 'bone'
    above 400 HU) + ``datalist.json`` listing them for training; returns ``folder``."""
    folder = Path(folder)
    image = make_volume(size=size)
    array = sitk.GetArrayFromImage(image)
    labels = np.zeros(array.shape, dtype=np.uint8)
    labels[array > -500] = 1
    labels[array > 400] = 2
    label = sitk.GetImageFromArray(labels)
    label.CopyInformation(image)
    sitk.WriteImage(image, str(folder / "case.nrrd"))
    sitk.WriteImage(label, str(folder / "case_label.nrrd"))
    (folder / "datalist.json").write_text(json.dumps({"training": [{"image": "case.nrrd", "label": "case_label.nrrd"}]}))
    return folder

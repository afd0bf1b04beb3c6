"""Post-processing of label maps: keep the largest connected component of each label.

A 2.5D network sometimes marks small islands far from the organ (a bit of bowel labelled
"liver"). For organs that are one connected piece, keeping each label's largest 3D component
removes them. A pure function on [k, j, i] arrays (SimpleITK's order); ``unetseg predict
--largest-component`` applies it in the engine child before the result is written.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def keep_largest_component(labels_array_kji: np.ndarray, label_values: Iterable[int], fully_connected: bool = False) -> np.ndarray:
    """A copy of ``labels_array_kji`` where each of ``label_values`` keeps only its largest connected component.

    Voxels of the removed components become 0 (background); labels not in ``label_values`` are left
    as they are. Connectivity is 6-neighbourhood (faces) unless ``fully_connected`` (26). Ties between
    equally large components keep the one SimpleITK numbers first (deterministic).
    """
    import SimpleITK as sitk

    labels = np.asarray(labels_array_kji)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3D [k, j, i] array, got shape {labels.shape}")
    result = labels.copy()
    for value in sorted({int(v) for v in label_values}):
        if value == 0:
            continue
        mask = labels == value
        if not mask.any():
            continue
        components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), fully_connected)
        ranked = sitk.RelabelComponent(components, sortByObjectSize=True)  # 1 = largest
        largest = sitk.GetArrayViewFromImage(ranked) == 1
        result[mask & ~largest] = 0
    return result

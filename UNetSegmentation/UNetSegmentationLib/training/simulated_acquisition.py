"""Two augmentations MONAI lacks, both simulating how a scan was acquired rather than what it shows.

* :class:`RandThickSlice`: a thicker reconstructed slice averages the anatomy above and below it. In a
  2.5D crop ``(2c+1, H, W)`` that is a mix of the centre channel with its neighbours: the centre becomes
  ``(1 - w) * centre + w * mean(neighbours)`` with ``w`` drawn from ``[0, thickness]``. (MONAI's
  ``RandSimulateLowResolution`` covers in-plane resolution; nothing there mixes 2.5D channels.)
* :class:`RandFieldOfViewCut`: a scan whose field of view ends inside the body (a chest CT that stops at
  the liver dome, an arm outside the reconstruction circle). One side of the crop, a band up to
  ``depth`` of its size, is set to the background value (0: air after CT normalisation) and its labels
  to background — beyond the field of view there is nothing to segment.

Both are ``RandomizableTransform`` so a ``Compose`` seeds them with the rest (training/sampling.py
re-seeds every epoch).
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping

import numpy as np
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils.type_conversion import convert_to_numpy


class RandThickSlice(RandomizableTransform, MapTransform):
    """Mix the centre channel of ``image`` (``(2c+1, H, W)``) with the mean of its neighbours."""

    def __init__(self, keys: Any, prob: float, thickness: float) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.thickness = float(thickness)
        self._weight = 0.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._weight = float(self.R.uniform(0.0, self.thickness))

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        out = dict(data)
        self.randomize()
        if not self._do_transform:
            return out
        for key in self.key_iterator(out):
            image = convert_to_numpy(out[key], dtype=np.float32)  # a MetaTensor after MONAI's own transforms
            channels = image.shape[0]
            if channels < 3:  # no neighbours to mix in (context 0)
                continue
            centre = channels // 2
            mixed = image.copy()
            neighbours = np.delete(image, centre, axis=0).mean(axis=0)
            mixed[centre] = (1.0 - self._weight) * image[centre] + self._weight * neighbours
            out[key] = mixed
        return out


class RandFieldOfViewCut(RandomizableTransform, MapTransform):
    """Cut one side of a crop off: image to ``fill``, label to background, a band up to ``depth`` deep."""

    def __init__(self, image_key: str, label_key: str, prob: float, depth: float = 0.3, fill: float = 0.0) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, (image_key, label_key))
        self.image_key, self.label_key = image_key, label_key
        self.depth, self.fill = float(depth), float(fill)
        self._side, self._share = 0, 0.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._side = int(self.R.randint(4))  # MONAI's R is a numpy RandomState
        self._share = float(self.R.uniform(0.05, self.depth))

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        out = dict(data)
        self.randomize()
        if not self._do_transform:
            return out
        image = convert_to_numpy(out[self.image_key], dtype=np.float32).copy()  # a MetaTensor after MONAI's own transforms
        label = convert_to_numpy(out[self.label_key]).copy()
        axis = 1 + self._side // 2  # rows or columns of (C, H, W)
        width = max(1, int(round(image.shape[axis] * self._share)))
        band = [slice(None)] * 3
        band[axis] = slice(0, width) if self._side % 2 == 0 else slice(image.shape[axis] - width, None)
        image[tuple(band)] = self.fill
        label[tuple(band)] = 0
        out[self.image_key], out[self.label_key] = image, label
        return out

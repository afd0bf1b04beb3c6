"""The guidance of one training batch of an interactive network, simulated (``unetseg train --interactive``).

Each sample of a batch of 2.5D crops (:class:`~.sampling.SliceSampler`, augmented as for automatic
training) gets an object and guidance for it, as a user would give it (Xu et al., CVPR 2016; Sofiiuk
et al., RITM, ICIP 2022; Diaz-Pinto et al., DeepEdit, MICCAI 2022):

- the object: one labelled class present in the crop (a case's unknown classes are never drawn), or for
  a share :attr:`GuidanceSimulation.pseudo_objects` of a class-agnostic network's samples an object no one
  labelled, the intensity-homogeneous region around a random point (:mod:`.pseudo_objects`), so that the
  network learns what makes an object in any scan, not only the dozen structures the data names;
- a share :attr:`GuidanceSimulation.no_guidance` of the samples gets no guidance at all;
- the others start from nothing or from a corrupted truth (eroded, dilated, shifted, holed:
  :func:`~UNetSegmentationLib.interactive.simulation.corrupt_mask`), which is what a wrong automatic
  result looks like, and get clicks where a user would put them — each at the centre of the largest
  error region (:func:`~UNetSegmentationLib.interactive.simulation.next_click`), the region it hits
  counted as corrected before the next one;
- on a share of the batches the network's own prediction is then fed back as the previous mask for
  one or two more iterations, each adding the click its error calls for (RITM's iterative training:
  the network learns to correct its own mistakes, not only synthetic ones);
- a share of the clicks lies on a neighbouring slice, drawn at its faded weight
  (:meth:`~UNetSegmentationLib.interactive.guidance.GuidanceSpec.weight`), as propagated clicks are.

Two kinds of network (``--interactive``): ``object`` — class-agnostic, one sigmoid output, the object
under the clicks is the target (no guidance: the empty mask); ``joint`` — DeepEdit's single network
for both roles: the automatic model's classes as output, the guidance for one class of them, the full
label map as target (no guidance: the automatic task). The guidance maps are drawn with the one click
encoding of :func:`~UNetSegmentationLib.interactive.guidance.guidance_maps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from UNetSegmentationLib.interactive.guidance import GUIDANCE_CHANNELS, Click, GuidanceSpec, guidance_maps
from UNetSegmentationLib.interactive.simulation import corrupt_mask, next_click
from UNetSegmentationLib.training.pseudo_objects import pseudo_object

#: the share of guided samples that start from a corrupted truth (the rest from nothing)
FROM_CORRUPTED = 0.5
#: the share of batches whose prediction is fed back, and the most iterations then
FEEDBACK_SHARE, FEEDBACK_ITERATIONS = 0.5, 2
#: static clicks on a sample before any feedback: from nothing at least one
STATIC_CLICKS = (0, 3)
#: the share of clicks attributed to a neighbouring slice (drawn at their faded weight)
NEIGHBOUR_CLICKS = 0.2

#: the network's probability of each sample's object, ``(B, H, W)``, for a guided batch ``(B, 2c+4, H, W)``
Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class GuidanceSimulation:
    """How a batch's guidance is simulated: the kind of network, the click encoding and the model grid."""

    mode: str
    spec: GuidanceSpec
    spacing_mm: Tuple[float, float]
    slice_distance_mm: float
    no_guidance: float
    pseudo_objects: float = 0.0  # the share of an ``object`` network's samples whose object is a pseudo-object

    def guide(self, images: np.ndarray, targets: np.ndarray, merged: np.ndarray, rng: np.random.Generator,
              predict: Optional[Predict] = None) -> Tuple[np.ndarray, np.ndarray]:
        """``(inputs (B, 2c+4, H, W) float32, targets (B, H, W) int64)`` of a batch of ``images`` ``(B, 2c+1, H, W)``,
        channel-index ``targets`` and each sample's ``merged`` mask (background + its unknown channels);
        ``predict`` (None: no feedback) gives the network's probability of each sample's object."""
        batch = len(images)
        objects = [self._object(targets[i], merged[i], rng) for i in range(batch)]
        truths = [np.zeros(targets.shape[1:], bool) if c is None else targets[i] == c for i, c in enumerate(objects)]
        if self.mode == "object" and self.pseudo_objects > 0:
            centre = images.shape[1] // 2  # the slice itself among its 2.5D neighbours
            for i in range(batch):
                if rng.random() < self.pseudo_objects:
                    region = pseudo_object(images[i, centre], rng, self.spacing_mm)
                    if region is not None:  # none found: the labelled object stays
                        truths[i], objects[i] = region, 0  # 0: an object of no class (a class-agnostic network's feedback ignores it)
        guided = [c is not None and rng.random() >= self.no_guidance for c in objects]
        previous = np.zeros(targets.shape, dtype=np.float32)
        clicks: List[List[Click]] = [[] for _ in range(batch)]
        for i in range(batch):
            if guided[i]:
                previous[i], clicks[i] = self._static(truths[i], rng)
        inputs = self._inputs(images, previous, clicks)
        if predict is not None and any(guided) and rng.random() < FEEDBACK_SHARE:
            for _ in range(int(rng.integers(1, FEEDBACK_ITERATIONS + 1))):
                probabilities = predict(inputs, np.array([-1 if c is None else c for c in objects]))
                for i in np.flatnonzero(guided):
                    previous[i] = probabilities[i]
                    self._add_click(clicks[i], probabilities[i] > 0.5, truths[i], rng)
                inputs = self._inputs(images, previous, clicks)
        if self.mode == "object":
            targets = np.stack([truth & g for truth, g in zip(truths, guided)]).astype(np.int64)
        return inputs, targets

    @staticmethod
    def _object(target: np.ndarray, merged: np.ndarray, rng: np.random.Generator) -> Optional[int]:
        """A labelled class present in the crop, drawn uniformly (None: none is)."""
        present = [int(c) for c in np.unique(target) if c > 0 and not merged[int(c)]]
        return None if not present else present[int(rng.integers(len(present)))]

    def _static(self, truth: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, List[Click]]:
        """The previous mask (nothing, or a corrupted truth) and the clicks a user would give on it first,
        each error region it hits counted as corrected before the next click."""
        corrupted = rng.random() < FROM_CORRUPTED
        previous = corrupt_mask(truth, rng) if corrupted else np.zeros_like(truth)
        count = int(rng.integers(STATIC_CLICKS[0] if corrupted else 1, STATIC_CLICKS[1] + 1))
        clicks: List[Click] = []
        corrected = previous.copy()
        for _ in range(count):
            click = self._add_click(clicks, corrected, truth, rng)
            if click is None:
                break
            errors, _ = ndimage.label(corrected != truth)
            corrected = np.where(errors == errors[click[0], click[1]], truth, corrected)
        return previous.astype(np.float32), clicks

    def _add_click(self, clicks: List[Click], prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> Optional[Tuple[int, int, bool]]:
        """The next click on ``prediction``, appended to ``clicks`` (on a neighbouring slice for a share of them)."""
        click = next_click(prediction, truth, rng)
        if click is not None:
            offset = 0.0
            if rng.random() < NEIGHBOUR_CLICKS:  # within the fade: a click propagated from a slice nearby
                offset = float(rng.uniform(0.0, 0.8 * self.spec.fade_mm)) / self.slice_distance_mm * (1 if rng.random() < 0.5 else -1)
            clicks.append(Click((offset, float(click[0]), float(click[1])), click[2]))
        return click

    def _inputs(self, images: np.ndarray, previous: np.ndarray, clicks: List[List[Click]]) -> np.ndarray:
        shape = images.shape[2:]
        guidance = np.zeros((len(images), GUIDANCE_CHANNELS) + shape, dtype=np.float32)
        guidance[:, 0] = previous
        for i, sample in enumerate(clicks):
            if sample:
                guidance[i, 1:] = guidance_maps(sample, 0.0, shape, self.spacing_mm, self.slice_distance_mm, self.spec)
        return np.concatenate([images.astype(np.float32), guidance], axis=1)

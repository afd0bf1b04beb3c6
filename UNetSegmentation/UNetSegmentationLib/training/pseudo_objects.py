"""Objects no one labelled: the intensity-homogeneous region around a random point of a training crop.

A class-agnostic interactive network should segment whatever the user points at, but a handful of
labelled volumes name a dozen structures, and the network learns those shapes rather than "the object under
the click": on a patient whose liver it never saw, clicks on the liver gave a blob the size of the click
(issue 26, BENCHMARKS.md). Training also on regions that are objects by their image alone — a connected
area of similar intensity, bounded by edges — teaches what makes an object in any scan, the cue Slicer's
Grow from seeds and region growing use. It is the self-supervised object proposal of interactive
segmentation's pre-training (e.g. SAM's automatically generated masks; superpixel pre-training of click
models), here drawn per crop at no labelling cost. Measured leaving one patient out (BENCHMARKS.md, *Longer
training and pseudo-objects*), they taught the liver (0.07 → 0.66 Dice after 5 clicks on the held-out abdomen)
and cost the small structures more (the networks leaked into tissue of like intensity), so ``--pseudo-objects``
is off by default: an option to measure with, not the shipped recipe.

The region (:func:`pseudo_object`): the crop's centre slice smoothed (Gaussian, 1 pixel), a seed drawn
among its flat pixels inside the body (gradient magnitude in the lowest third, intensity in :data:`SEED_RANGE`), the pixels within a tolerance of the seed's
smoothed value (drawn per object: :data:`TOLERANCE`, in normalised units), the connected part holding the
seed, opened by :data:`OPENING` pixels (thin bridges to neighbours of like intensity cut off) and its holes filled. Regions smaller than
:data:`MIN_AREA_MM2`, larger than :data:`MAX_SHARE` of the crop (a whole slice of fat) or along much of
its border (:data:`BORDER_SHARE`: the background) are drawn again, up to :data:`TRIES` times.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy import ndimage

#: the tolerance around the seed's value, drawn uniformly per object, in normalised intensity (CT: the
#: -1000…1000 HU window maps to [0, 1], so 0.005-0.02 is 10-40 HU: one organ's texture, not its neighbours')
TOLERANCE = (0.005, 0.02)
#: pixels the region is opened by: bridges this thin between two regions of like intensity (an organ touching a
#: muscle) are cut, so that one object is one structure
OPENING = 2
#: the smallest object, mm² (a 1 cm² structure: smaller ones are noise, not anatomy)
MIN_AREA_MM2 = 100.0
#: the largest object, as a share of the crop's pixels
MAX_SHARE = 0.5
#: regions drawn before giving up on a crop (the caller then takes a labelled object, or none)
TRIES = 4
#: seeds lie among the flattest pixels: gradient magnitude below this quantile of the crop's
FLAT_QUANTILE = 0.33
#: seeds lie inside the body, normalised intensity within this range (CT: -940…600 HU, lung to enhanced vessels
#: and bone): not in the air around the body (-1000 HU), a region as large as the scan that no one points at
SEED_RANGE = (0.03, 0.8)
#: a region touching more than this share of the crop's border is the background around the body, not an object
BORDER_SHARE = 0.25


def pseudo_object(image: np.ndarray, rng: np.random.Generator, spacing_mm: Tuple[float, float]) -> Optional[np.ndarray]:
    """An ``(H, W)`` bool object of the normalised ``image`` slice ``(H, W)`` (see the module docstring), or None
    where no region of an acceptable size was found."""
    image = np.asarray(image, dtype=np.float32)
    smoothed = ndimage.gaussian_filter(image, 1.0)
    gradient = ndimage.gaussian_gradient_magnitude(image, 1.0)
    flat = np.flatnonzero((gradient <= np.quantile(gradient, FLAT_QUANTILE)) & (smoothed >= SEED_RANGE[0]) & (smoothed <= SEED_RANGE[1]))
    if not flat.size:
        return None
    min_pixels = MIN_AREA_MM2 / float(spacing_mm[0] * spacing_mm[1])
    max_pixels = MAX_SHARE * image.size
    for _ in range(TRIES):
        seed = np.unravel_index(int(flat[int(rng.integers(flat.size))]), image.shape)
        tolerance = float(rng.uniform(*TOLERANCE))
        similar = np.abs(smoothed - smoothed[seed]) <= tolerance
        components, _ = ndimage.label(similar)
        region = components == components[seed]
        opened = ndimage.binary_opening(region, iterations=OPENING)
        if opened[seed]:
            region = opened
            components, _ = ndimage.label(region)
            region = components == components[seed]
        region = ndimage.binary_fill_holes(region)
        border = np.concatenate([region[0], region[-1], region[1:-1, 0], region[1:-1, -1]])
        if min_pixels <= np.count_nonzero(region) <= max_pixels and border.mean() <= BORDER_SHARE:
            return region
    return None

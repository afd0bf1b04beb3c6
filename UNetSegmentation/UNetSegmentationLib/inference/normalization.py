"""Intensity normalisation as a checkpoint prescribes it, applied batch by batch.

``ct``: clip to the window [lo, hi] (HU) and scale to [0, 1] (no volume statistics needed).
``mr``: clip to the volume's [p_lo, p_hi] percentiles, then z-score with the clipped volume's mean
and standard deviation. Statistics are computed once per volume; the volume is never held in
float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from UNetSegmentationLib.model.metadata import Normalization


@dataclass(frozen=True)
class IntensityMapping:
    """``(clip(x, low, high) - offset) / scale`` — the per-volume form of every normalisation."""

    low: float
    high: float
    offset: float
    scale: float

    def __call__(self, values: np.ndarray) -> np.ndarray:
        # float inputs beyond float32's range (e.g. 1e300) become ±inf in the cast, which the clip then bounds: no warning
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.asarray(values, dtype=np.float32)
        if out is values:
            out = out.copy()
        np.clip(out, self.low, self.high, out=out)
        out -= np.float32(self.offset)
        out *= np.float32(1.0 / self.scale)
        return out


def fit_normalization(normalization: Normalization, volume: np.ndarray, chunk: int = 32) -> IntensityMapping:
    """The mapping for this volume (``volume`` in any layout; only read)."""
    if normalization.kind == "ct":
        low, high = normalization.window
        return IntensityMapping(low, high, low, high - low)
    low, high = (float(v) for v in np.percentile(volume, normalization.percentiles))
    count, total, total_sq = 0, 0.0, 0.0
    for start in range(0, volume.shape[0], chunk):  # clipped mean/std, slab by slab, in float64
        slab = np.clip(np.asarray(volume[start:start + chunk], dtype=np.float64), low, high)
        count += slab.size
        total += slab.sum()
        total_sq += np.square(slab).sum()
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    return IntensityMapping(low, high, mean, std if std > 1e-8 else 1.0)

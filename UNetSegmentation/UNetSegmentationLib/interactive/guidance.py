"""Clicks and scribbles as guidance channels of the interactive network.

A click is a point on the model grid of a session (continuous voxel index (slice, row, column):
slices along the slice axis, rows and columns at the model's in-plane spacing) that is either inside
the object (positive) or outside it (negative). The network sees the clicks of the slice it segments
as two images, one per sign, drawn as small disks or Gaussians of a fixed radius in millimetres at the
model's spacing, as DeepEdit (Diaz-Pinto et al., MICCAI 2022) and RITM (Sofiiuk et al., ICIP 2022)
encode them: a disk's size in mm, not pixels, so the same click means the same on every scan.

A click made on another slice still guides this one, fading with the distance across slices (a
linear fade reaching 0 at ``fade_mm``): a click is a statement about the object near where it was
made, and the 2.5D network has no other way to hear of it. Overlapping clicks of one sign combine by
their maximum. A scribble is a dense row of clicks along a polyline (:func:`scribble_clicks`).

The encoding is a property of the trained network, so it is recorded in the interactive checkpoint's
metadata (:class:`GuidanceSpec`) and read back from there; training and use draw the same maps with
this one function (:func:`guidance_maps`). Pure numpy: no torch at import.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.metadata import INTERACTIVE_GUIDANCE_CHANNELS

#: the guidance channels after the 2c+1 image channels: previous mask/probability, positive, negative clicks
GUIDANCE_CHANNELS = INTERACTIVE_GUIDANCE_CHANNELS
ENCODINGS = ("disk", "gaussian")


@dataclass(frozen=True)
class Click:
    """A positive (inside the object) or negative click at a continuous model-grid index (slice, row, column)."""

    position: Tuple[float, float, float]
    positive: bool


@dataclass(frozen=True)
class GuidanceSpec:
    """How clicks become guidance images; stored in the interactive checkpoint's metadata.

    ``click_radius_mm``: the disk's radius (a Gaussian's sigma) in mm in-plane; ``fade_mm``: the
    distance across slices at which a click's weight has faded to 0 (linearly); ``encoding``:
    ``disk`` (1 inside the radius) or ``gaussian`` (exp(-r²/2σ²), cut at 3σ).
    """

    click_radius_mm: float = 5.0
    fade_mm: float = 10.0
    encoding: str = "disk"

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise UserError(f"guidance encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        for name in ("click_radius_mm", "fade_mm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1000:
                raise UserError(f"guidance {name} must be a positive number of mm (at most 1000), got {value!r}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any], source: str = "checkpoint") -> "GuidanceSpec":
        """The spec from its stored dict; a :class:`UserError` naming ``source`` where it is not one."""
        if not isinstance(data, Mapping):
            raise UserError(f"{source}: the guidance spec must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"click_radius_mm", "fade_mm", "encoding"})
        if unknown:
            raise UserError(f"{source}: unknown guidance field(s) {', '.join(map(str, unknown))}")
        try:
            return GuidanceSpec(**dict(data))
        except UserError as error:
            raise UserError(f"{source}: {error}") from None

    def weight(self, distance_mm: float) -> float:
        """A click's weight on a slice ``distance_mm`` away from it: 1 on its own slice, 0 from ``fade_mm`` on."""
        return max(0.0, 1.0 - abs(float(distance_mm)) / self.fade_mm)


def guidance_maps(clicks: Iterable[Click], slice_position: float, shape: Tuple[int, int], spacing_mm: Tuple[float, float],
                  slice_distance_mm: float, spec: GuidanceSpec) -> np.ndarray:
    """The ``(2, H, W)`` float32 positive and negative click images of the slice at ``slice_position``.

    ``spacing_mm``: the (row, column) pixel spacing of the model grid; ``slice_distance_mm``: mm per unit
    of the slice index. Each click is drawn at its weight on this slice (:meth:`GuidanceSpec.weight`).
    """
    rows, columns = int(shape[0]), int(shape[1])
    maps = np.zeros((2, rows, columns), dtype=np.float32)
    sr, sc = float(spacing_mm[0]), float(spacing_mm[1])
    reach = spec.click_radius_mm * (3.0 if spec.encoding == "gaussian" else 1.0)
    for click in clicks:
        weight = spec.weight((float(click.position[0]) - float(slice_position)) * float(slice_distance_mm))
        if weight <= 0:
            continue
        row, column = float(click.position[1]), float(click.position[2])
        r0, r1 = max(0, int(math.floor(row - reach / sr))), min(rows, int(math.ceil(row + reach / sr)) + 1)
        c0, c1 = max(0, int(math.floor(column - reach / sc))), min(columns, int(math.ceil(column + reach / sc)) + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        dr = (np.arange(r0, r1, dtype=np.float32) - row) * sr
        dc = (np.arange(c0, c1, dtype=np.float32) - column) * sc
        squared = dr[:, None] ** 2 + dc[None, :] ** 2  # mm²
        if spec.encoding == "disk":
            values = np.where(squared <= spec.click_radius_mm ** 2, weight, 0.0)
        else:
            values = np.where(squared <= reach ** 2, weight * np.exp(-squared / (2.0 * spec.click_radius_mm ** 2)), 0.0)
        target = maps[0 if click.positive else 1, r0:r1, c0:c1]
        np.maximum(target, values.astype(np.float32), out=target)
    return maps


def scribble_clicks(points: Sequence[Sequence[float]], positive: bool, step: float = 1.0) -> List[Click]:
    """A scribble along the polyline through ``points`` (model-grid indices (slice, row, column)) as
    clicks ``step`` index units apart (its corners included): drawn with disks of the click radius, a
    row of clicks this dense is a stroke of that width."""
    path = [tuple(float(v) for v in point) for point in points]
    if not path:
        return []
    if any(len(point) != 3 or not all(math.isfinite(v) for v in point) for point in path):
        raise UserError("a scribble's points must be three finite numbers each (slice, row, column)")
    if not step > 0:
        raise UserError(f"a scribble's step must be positive, got {step}")
    clicks = [Click(path[0], positive)]
    for start, end in zip(path, path[1:]):
        a, b = np.asarray(start), np.asarray(end)
        count = int(math.ceil(float(np.linalg.norm(b - a)) / step))
        for t in range(1, count + 1):
            point = a + (b - a) * (t / count)
            clicks.append(Click((float(point[0]), float(point[1]), float(point[2])), positive))
    return clicks

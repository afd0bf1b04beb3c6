"""One output class as a label map, a segmentation and a checkpoint all know it: its label value, name,
colour and terminology, and the colours given to classes created without one.

It lives in ``io/`` because the label readers (:mod:`.labels`) and the writers (:mod:`.segmentations`,
:mod:`.dicom_seg`) need it, and ``io/`` stays below ``model/``; :mod:`~UNetSegmentationLib.model.metadata`
re-exports it as the checkpoint's class record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

# Distinct, colour-blind-friendlier defaults for classes created without colours (0..1 RGB).
DEFAULT_COLORS: Tuple[Tuple[float, float, float], ...] = (
    (0.90, 0.10, 0.10), (0.10, 0.60, 0.90), (0.20, 0.75, 0.25), (0.95, 0.75, 0.10),
    (0.60, 0.30, 0.80), (0.95, 0.50, 0.10), (0.10, 0.80, 0.75), (0.90, 0.40, 0.70),
    (0.55, 0.55, 0.20), (0.40, 0.25, 0.15), (0.50, 0.50, 0.95), (0.70, 0.90, 0.40),
)


@dataclass(frozen=True)
class ClassInfo:
    """One output class: its label value in the output label map, its name, colour and terminology."""

    value: int
    name: str
    color: Tuple[float, float, float]
    terminology: Optional[Dict[str, Any]] = None

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"value": self.value, "name": self.name, "color": list(self.color)}
        if self.terminology:
            data["terminology"] = self.terminology
        return data

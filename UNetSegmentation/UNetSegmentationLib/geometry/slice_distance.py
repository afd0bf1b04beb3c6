"""How a scan's slice spacing meets the model's slice distance: the one rule for the 2.5D neighbour step
and for the thin-slice path.

A 2.5D network learned its neighbour channels at one distance in millimetres (the checkpoint's
``slice_distance``). On a scan whose slices lie ``s`` mm apart, those neighbours lie
``distance / s`` slices away (fractional steps are interpolated). Where that step is more than one
slice, the scan's slices are thinner than the model's: the network runs at the model's distance and the
slices between are interpolated (``inference/model_slices.py``). Prediction, training (each volume's
``context_step``) and the panel's spacing text all ask these functions.
"""

from __future__ import annotations

from typing import Optional

from UNetSegmentationLib.geometry.spacing_match import SAME_SPACING


def neighbour_step(model_distance: Optional[float], slice_spacing: float, context: int = 1) -> float:
    """Slices between a slice and its 2.5D neighbours: ``model_distance / slice_spacing``; 1.0 (the next
    slice) where the model records no distance, has no neighbour channels (``context`` 0), or the
    spacing is not a positive number (nothing better to go by)."""
    if not model_distance or context == 0 or not slice_spacing or float(slice_spacing) <= 0:
        return 1.0
    return max(float(model_distance) / float(slice_spacing), 0.0)


def is_thin_step(step: float) -> bool:
    """Whether a neighbour ``step`` means thinner slices than the model's: more than one slice, beyond
    the :data:`~.spacing_match.SAME_SPACING` tolerance (a 0.5 % difference is the same spacing)."""
    return step > 1.0 + SAME_SPACING


def thinner_slices(model_distance: Optional[float], slice_spacing: float, context: int = 1) -> bool:
    """Whether a scan with slices ``slice_spacing`` mm apart takes the thin-slice path for a model whose
    neighbours lie ``model_distance`` mm apart (``context`` channels each side)."""
    return is_thin_step(neighbour_step(model_distance, slice_spacing, context))

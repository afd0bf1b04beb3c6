"""Prune-depth selection for deep-supervised networks (UNet++) and the speed measurement behind it
(the chosen depth's sub-network is written by :mod:`~UNetSegmentationLib.model.subnetwork`).

The UNet++ paper (Zhou et al., IEEE TMI 2020, Sec. III-C and Fig. 7) trains the full network with
deep supervision, then picks, on validation data, the shallowest sub-network UNet++ L1…L4 whose
accuracy is close enough to the best, because a shallower one is much faster. Here "close enough"
is a Dice tolerance (default 0.01).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from UNetSegmentationLib.backends.torch_predictor import SlicePredictor
from UNetSegmentationLib.inference.slicing import padding_for
from UNetSegmentationLib.model.depth import depth_from_tag


def select_depth(dice_by_depth: Mapping[int, float], tolerance: float = 0.01) -> Optional[int]:
    """The shallowest depth whose Dice is within ``tolerance`` of the best (``None`` without finite values)."""
    finite = {int(d): float(v) for d, v in dice_by_depth.items() if v is not None and np.isfinite(v)}
    if not finite:
        return None
    best = max(finite.values())
    return min(d for d, v in finite.items() if v >= best - tolerance)


def depth_metrics_of(validation: Optional[Mapping[str, Any]], ms_per_slice: Optional[Mapping[int, float]], tolerance: float) -> Tuple[Dict[int, dict], Optional[int]]:
    """``(metadata.depth_metrics, metadata.recommended_depth)`` of a prunable network from the best
    validation record (its ``by_depth`` entries ``L<d>``) and the measured ms/slice of each depth."""
    depth_metrics: Dict[int, dict] = {}
    if not validation:
        return depth_metrics, None
    for depth_name, entry in validation["by_depth"].items():
        if entry["dice"] is None:
            continue
        depth = depth_from_tag(depth_name)
        if not isinstance(depth, int):
            continue
        metrics = {"dice": entry["dice"]}
        if ms_per_slice and depth in ms_per_slice:
            metrics["ms_per_slice"] = round(ms_per_slice[depth], 4)
        depth_metrics[depth] = metrics
    return depth_metrics, select_depth({d: m["dice"] for d, m in depth_metrics.items()}, tolerance)


def measure_ms_per_slice(
    model: torch.nn.Module,
    metadata,
    depths: Sequence,
    device: torch.device,
    shape: Tuple[int, int],
    batch_size: int = 4,
    repeats: int = 5,
) -> Dict[object, float]:
    """Network milliseconds per slice for each depth (``None``: the default forward), through the
    engine's :class:`~UNetSegmentationLib.backends.torch_predictor.SlicePredictor` on ``shape`` slices padded as
    ``predict`` pads them. The minimum over ``repeats`` runs, after a warm-up, is reported: on a
    shared machine the minimum is the least disturbed measurement.
    """
    results = {}
    for depth in depths:
        predictor = SlicePredictor(model, metadata, device, depth)
        pad = padding_for(shape, predictor.required_multiple)
        batch = np.zeros((batch_size, metadata.in_channels, shape[0] + pad[0], shape[1] + pad[1]), dtype=np.float32)
        predictor(batch)  # warm-up (allocations, cudnn autotuning)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predictor(batch)
            times.append(time.perf_counter() - start)
        results[depth] = 1000.0 * min(times) / batch_size
    return results



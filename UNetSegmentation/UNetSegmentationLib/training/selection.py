"""Prune-depth selection for deep-supervised networks (UNet++), speed measurement, and export of a
depth-L sub-network as a checkpoint of its own.

The UNet++ paper (Zhou et al., IEEE TMI 2020, Sec. III-C and Fig. 7) trains the full network with
deep supervision, then picks, on validation data, the shallowest sub-network UNet++ L1…L4 whose
accuracy is close enough to the best, because a shallower one is much faster. Here "close enough"
is a Dice tolerance (default 0.01).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from UNetSegmentationLib.backends.torch_predictor import SlicePredictor
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.slicing import padding_for
from UNetSegmentationLib.io.outputs import check_output_path
from UNetSegmentationLib.model.checkpoint import _is_buffer, load_checkpoint, save_checkpoint
from UNetSegmentationLib.networks.registry import build_network, get_architecture, prune_depths_of


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
        depth = int(depth_name[1:])
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


def sub_network_kwargs(metadata, depth: int) -> dict:
    """Constructor arguments of the depth-``depth`` sub-network: a UNet++ with ``features[:depth + 1]``."""
    architecture = get_architecture(metadata.architecture)
    depths = prune_depths_of(architecture, metadata.kwargs)
    if not depths:
        raise UserError(f"architecture {metadata.architecture!r} cannot be pruned: export --depth applies only to prunable networks such as UNet++")
    if depth not in depths:
        raise UserError(f"--depth {depth}: this {architecture.title} has depths {', '.join(map(str, depths))}")
    kwargs = dict(metadata.kwargs)
    features = list(kwargs.get("features", architecture.default_kwargs.get("features", ())))
    kwargs["features"] = features[: depth + 1]
    return kwargs


def export_depth(checkpoint_path, depth: int, output, overwrite: bool = False) -> Tuple[Path, int, int]:
    """Write the depth-``depth`` sub-network of a prunable checkpoint as a checkpoint of its own.

    The sub-network's parameter names are exactly those of the depth-L nodes of the full network
    (see :mod:`~UNetSegmentationLib.networks.unetplusplus`), so the weights are copied by name; its
    default output is head L, so ``predict`` on the export equals ``predict --depth L`` on the
    original. Depth metrics up to L are kept; the recommended depth becomes L.

    Returns ``(path, full_parameters, exported_parameters)``.
    """
    output = check_output_path(Path(output), overwrite, what="checkpoint", extensions=(".safetensors",))
    checkpoint = load_checkpoint(checkpoint_path)
    if output.exists() and output.resolve() == Path(checkpoint_path).resolve():
        raise UserError("the export would overwrite its source checkpoint; choose another output name")
    metadata = checkpoint.metadata
    kwargs = sub_network_kwargs(metadata, depth)
    network = build_network(metadata.architecture, kwargs)
    expected = network.state_dict()
    missing = [k for k in expected if k not in checkpoint.state_dict]
    wrong = [k for k in expected if k in checkpoint.state_dict and tuple(checkpoint.state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        example = (missing or wrong)[0]
        raise UserError(f"{checkpoint_path}: the weights do not hold a depth-{depth} sub-network ({len(missing)} missing, {len(wrong)} of another shape, e.g. {example})")
    state = {k: checkpoint.state_dict[k] for k in expected}
    training = dict(metadata.training)
    training["exported"] = {"from": Path(checkpoint_path).name, "depth": depth, "features_of_source": list(metadata.kwargs.get("features", []))}
    exported = dataclasses.replace(
        metadata,
        kwargs=kwargs,
        depth_metrics={d: dict(m) for d, m in metadata.depth_metrics.items() if d <= depth},
        recommended_depth=depth,
        training=training,
    )
    save_checkpoint(output, state, exported, overwrite=overwrite)
    count = lambda sd: sum(t.numel() for k, t in sd.items() if t.is_floating_point() and not _is_buffer(k))  # noqa: E731
    return output, count(checkpoint.state_dict), count(state)


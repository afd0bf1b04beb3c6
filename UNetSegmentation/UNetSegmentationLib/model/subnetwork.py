"""A UNet++ depth-L sub-network written as a checkpoint of its own (``unetseg export --depth L``).

The sub-network's parameter names are exactly those of the depth-L nodes of the full network (see
:mod:`~UNetSegmentationLib.networks.unetplusplus`), so its weights are copied by name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Tuple

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.outputs import check_output_path
from UNetSegmentationLib.model.checkpoint import _is_buffer, load_checkpoint, save_checkpoint
from UNetSegmentationLib.networks.registry import build_network, get_architecture, prune_depths_of


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
    output = check_output_path(Path(output), overwrite, what="checkpoint", extensions=(".safetensors",), protected=[Path(checkpoint_path)])
    checkpoint = load_checkpoint(checkpoint_path)
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

"""Which sub-network runs: the depth policy of prunable networks (UNet++), decided here only.

A depth is an int L (the sub-network whose nodes have i + j ≤ L, with head L), :data:`ACCURATE` (the
mean of every head's probabilities), or None (the network as a whole: architectures that cannot be
pruned). :func:`depth_tag` is the one name of each in files and tables (``L2``, ``accurate``, ``full``).
"""

from __future__ import annotations

from typing import Optional, Union

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.networks.registry import get_architecture, prune_depths_of


ACCURATE = "accurate"


Depth = Union[int, str, None]


def parse_depth(text: Optional[str]) -> Depth:
    if text is None or text == ACCURATE:
        return text
    if str(text).upper().startswith("L"):
        text = str(text)[1:]
    if not str(text).isdigit():
        raise UserError(f"--depth must be 1..4 (or L1..L4) or 'accurate'; got {text!r}")
    return int(text)


def resolve_depth(metadata: ModelMetadata, requested: Depth) -> Depth:
    """The depth to run: validated against what this network supports."""
    architecture = get_architecture(metadata.architecture)
    depths = prune_depths_of(architecture, metadata.kwargs)
    if not depths:
        if requested is not None:
            raise UserError(f"architecture {metadata.architecture!r} cannot be pruned: --depth applies only to prunable networks such as UNet++")
        return None
    if requested is None:
        recommended = metadata.recommended_depth
        return recommended if recommended in depths else max(depths)
    if requested != ACCURATE and requested not in depths:
        raise UserError(f"--depth {requested}: this {architecture.title} can run at depth {', '.join(map(str, depths))} or 'accurate'")
    return requested


def depth_tag(depth) -> str:
    return "accurate" if depth == "accurate" else (f"L{depth}" if isinstance(depth, int) else "full")

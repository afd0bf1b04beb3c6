"""Which sub-network runs: the depth policy of prunable networks (UNet++), and the one place that names depths.

A depth is one of

- an int L ≥ 1: the sub-network whose nodes have i + j ≤ L, with head L (UNet++ pruning, Zhou et al.,
  IEEE TMI 2020);
- :data:`ACCURATE`: the mean of every head's probabilities (the paper's "accurate" mode);
- None: the network as a whole (the resolved depth of an architecture that cannot be pruned). As a
  *request* (``--depth`` not given), None means "the checkpoint's recommended depth";
  :func:`resolve_depth` turns it into the depth that runs.

Names: :func:`depth_tag` is the one name of each depth in file names, tables, reports and stored
metadata (``L2``, ``accurate``, ``full``) and :func:`depth_from_tag` its inverse; :func:`parse_depth`
reads the ``--depth`` option. The ONNX cache names its exports with :func:`depth_tag` (the bundled
model ships ``….L3.<key>.onnx``), so these tags must never change.
"""

from __future__ import annotations

from numbers import Integral
from typing import Literal, Optional, Union

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.networks.registry import get_architecture, prune_depths_of

ACCURATE = "accurate"

#: the tag of depth None (the whole network of an architecture that cannot be pruned)
WHOLE_NETWORK_TAG = "full"
#: tags earlier versions wrote for depth None (training's ``validation.by_depth`` and evaluation
#: reports said ``default``); :func:`depth_from_tag` still reads them
LEGACY_WHOLE_NETWORK_TAGS = ("default",)
#: prefix of the tag of an int depth: ``L2``
LEVEL_PREFIX = "L"

Depth = Union[int, Literal["accurate"], None]


def _is_level(depth: object) -> bool:
    # numpy integers count (they are Integral); bool is an int subclass but never a depth
    return isinstance(depth, Integral) and not isinstance(depth, bool) and int(depth) >= 1


def depth_tag(depth: Depth) -> str:
    """The name of ``depth`` in files, tables and metadata: ``L2``, ``accurate`` or ``full`` (None)."""
    if depth is None:
        return WHOLE_NETWORK_TAG
    if depth == ACCURATE:
        return ACCURATE
    if _is_level(depth):
        return f"{LEVEL_PREFIX}{int(depth)}"
    raise ValueError(f"not a depth: {depth!r} (an int ≥ 1, {ACCURATE!r} or None)")


def depth_from_tag(tag: str) -> Depth:
    """The depth a :func:`depth_tag` names (``L2`` → 2, ``accurate``, ``full`` → None); also reads ``default``."""
    if tag == ACCURATE:
        return ACCURATE
    if tag == WHOLE_NETWORK_TAG or tag in LEGACY_WHOLE_NETWORK_TAGS:
        return None
    level = tag[len(LEVEL_PREFIX):] if tag.startswith(LEVEL_PREFIX) else ""
    if level.isascii() and level.isdigit() and int(level) >= 1:
        return int(level)
    raise ValueError(f"not a depth tag: {tag!r} (L1, L2, …, {ACCURATE!r} or {WHOLE_NETWORK_TAG!r})")


def parse_depth(text: Optional[str]) -> Depth:
    """The ``--depth`` option: ``2``, ``L2`` (or ``l2``) or ``accurate``; None when not given."""
    if text is None or text == ACCURATE:
        return text
    if str(text).upper().startswith(LEVEL_PREFIX):
        text = str(text)[1:]
    if not str(text).isdigit():
        raise UserError(f"--depth must be 1..4 (or L1..L4) or '{ACCURATE}'; got {text!r}")
    return int(text)


def resolve_depth(metadata: ModelMetadata, requested: Depth) -> Depth:
    """The depth to run: validated against what this network supports.

    None requested: the checkpoint's recommended depth if the network has it, else its deepest; None
    for a network that cannot be pruned (any other request is then a :class:`UserError`).
    """
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
        raise UserError(f"--depth {requested}: this {architecture.title} can run at depth {', '.join(map(str, depths))} or '{ACCURATE}'")
    return requested

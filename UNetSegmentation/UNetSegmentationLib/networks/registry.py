"""The architecture registry: names → constructors and what each architecture supports.

Importing this module is cheap (no torch): the Slicer panel fills its architecture list from it at
start-up. :func:`build_network` imports the architecture's module only when a network is built.

Every registered network follows :mod:`UNetSegmentationLib.networks.contract` (so the engine, training
and the panel need no per-architecture code); its ``features`` presets live in
:mod:`UNetSegmentationLib.networks.presets`.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.networks.contract import SegmentationNetwork
from UNetSegmentationLib.networks.presets import Features, paper_features, presets_of


@dataclass(frozen=True)
class Architecture:
    """One registered architecture.

    Attributes:
        name: registry name, stored in checkpoints.
        module, class_name: where the ``nn.Module`` lives (imported lazily).
        title: human-readable name for menus.
        paper: the paper it follows.
        summary: one line on what it is good for.
        default_kwargs: constructor defaults that ``unetseg create`` stores explicitly.
        deep_supervision: has several supervised heads.
        prune_depths: depths it can be pruned to at inference (empty: not prunable).
        classification_head: has a slice-level "structure present" head.
    """

    name: str
    module: str
    class_name: str
    title: str
    paper: str
    summary: str
    default_kwargs: Mapping[str, Any] = field(default_factory=dict)
    deep_supervision: bool = False
    prune_depths: Tuple[int, ...] = ()
    classification_head: bool = False

    @property
    def prunable(self) -> bool:
        """Whether its networks satisfy :class:`~.contract.PrunableNetwork`."""
        return bool(self.prune_depths)

    @property
    def feature_presets(self) -> Mapping[str, Features]:
        """Named ``features`` tuples (``paper``, ``wide``, ``small``), from :data:`~.presets.FEATURE_PRESETS`."""
        return presets_of(self.name)

    def network_class(self) -> type:
        """The ``nn.Module`` class (imports its module, and with it torch)."""
        return getattr(importlib.import_module(self.module), self.class_name)

    def supports(self) -> Dict[str, Any]:
        """What the CLI and the panel may offer for this architecture."""
        return {
            "deep_supervision": self.deep_supervision,
            "prune_depths": list(self.prune_depths),
            "accurate_mode": self.prunable,
            "classification_head": self.classification_head,
            "feature_presets": {k: list(v) for k, v in self.feature_presets.items()},
        }


ARCHITECTURES: Dict[str, Architecture] = {}


def register(architecture: Architecture) -> Architecture:
    """Add ``architecture`` to :data:`ARCHITECTURES` (names are unique)."""
    if architecture.name in ARCHITECTURES:
        raise ValueError(f"architecture {architecture.name!r} registered twice")
    ARCHITECTURES[architecture.name] = architecture
    return architecture


register(
    Architecture(
        name="unet",
        module="UNetSegmentationLib.networks.unet",
        class_name="UNet",
        title="U-Net",
        paper="Ronneberger et al., MICCAI 2015 (configuration of Zhou et al., IEEE TMI 2020)",
        summary="The baseline encoder-decoder: robust, simple, a good first choice for large structures.",
        default_kwargs={"features": list(paper_features("unet")), "norm": "batch", "act": "relu", "dropout": 0.0},
    )
)
register(
    Architecture(
        name="unetplusplus",
        module="UNetSegmentationLib.networks.unetplusplus",
        class_name="UNetPlusPlus",
        title="UNet++",
        paper="Zhou et al., DLMIA 2018 and IEEE TMI 2020",
        summary="Nested dense skips with deep supervision; prune to L1-L3 at inference to trade accuracy for speed.",
        default_kwargs={
            "features": list(paper_features("unetplusplus")),
            "norm": "batch",
            "act": "relu",
            "dropout": 0.0,
            "deep_supervision": True,
        },
        deep_supervision=True,
        prune_depths=(1, 2, 3, 4),
    )
)
register(
    Architecture(
        name="unet3plus",
        module="UNetSegmentationLib.networks.unet3plus",
        class_name="UNet3Plus",
        title="UNet 3+",
        paper="Huang et al., ICASSP 2020",
        summary="Full-scale skips and deep supervision; its classification-guided module blanks slices without the structure (fewer false positives).",
        default_kwargs={
            "features": list(paper_features("unet3plus")),
            "cat_channels": None,
            "norm": "batch",
            "act": "relu",
            "dropout": 0.0,
            "deep_supervision": True,
            "build_cgm": True,
            "cgm_dropout": 0.5,
        },
        deep_supervision=True,
        classification_head=True,
    )
)
register(
    Architecture(
        name="unetv2",
        module="UNetSegmentationLib.networks.unetv2",
        class_name="UNetV2",
        title="U-Net v2",
        paper="Peng et al., arXiv:2311.17791, 2023",
        summary="Semantics-and-detail-infusion skips (attention + multi-scale product) on a U-Net encoder: light, with sharp boundaries.",
        default_kwargs={
            "features": list(paper_features("unetv2")),
            "skip_channels": 32,
            "norm": "batch",
            "act": "relu",
            "dropout": 0.0,
            "deep_supervision": True,
        },
        deep_supervision=True,
    )
)
register(
    Architecture(
        name="fcn8s",
        module="UNetSegmentationLib.networks.fcn8s",
        class_name="FCN8s",
        title="FCN-8s",
        paper="Long et al., CVPR 2015",
        summary="The classic fully convolutional baseline (VGG-16-like encoder, stride-8 fusion): coarse boundaries, a reference point.",
        default_kwargs={
            "features": list(paper_features("fcn8s")),
            "convs_per_stage": [2, 2, 3, 3, 3],
            "fc_features": None,
            "fc_kernel": 7,
            "norm": "batch",
            "act": "relu",
            "dropout": 0.5,
        },
    )
)
register(
    Architecture(
        name="deeplabv3plus",
        module="UNetSegmentationLib.networks.deeplabv3plus",
        class_name="DeepLabV3Plus",
        title="DeepLabv3+",
        paper="Chen et al., ECCV 2018",
        summary="Atrous spatial pyramid pooling for multi-scale context plus a light decoder: structures of very different sizes.",
        default_kwargs={
            "features": list(paper_features("deeplabv3plus")),
            "blocks": 2,
            "aspp_channels": 256,
            "aspp_rates": [6, 12, 18],
            "low_level_channels": 48,
            "decoder_channels": 256,
            "norm": "batch",
            "act": "relu",
            "dropout": 0.1,
        },
    )
)


def get_architecture(name: str) -> Architecture:
    """The registered architecture ``name``; a :class:`UserError` naming the known ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UserError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None


def resolve_features(architecture: Architecture, features: str) -> List[int]:
    """``--features`` value → list of ints: a preset name or comma-separated integers."""
    if features in architecture.feature_presets:
        return list(architecture.feature_presets[features])
    try:
        values = [int(v) for v in features.split(",")]
    except ValueError:
        presets = ", ".join(architecture.feature_presets) or "none"
        raise UserError(
            f"--features must be comma-separated integers or a preset of {architecture.name} ({presets}); got {features!r}"
        ) from None
    if len(values) < 2 or any(v <= 0 for v in values):
        raise UserError(f"--features needs at least two positive channel counts; got {features!r}")
    return values


def prune_depths_of(architecture: Architecture, kwargs: Mapping[str, Any]) -> Tuple[int, ...]:
    """Depths of a concrete network: a UNet++ with 3 levels can be pruned to 1..2 only."""
    if not architecture.prunable:
        return ()
    features = kwargs.get("features", architecture.default_kwargs.get("features", ()))
    return tuple(range(1, len(features))) if features else architecture.prune_depths


def build_network(name: str, kwargs: Mapping[str, Any]) -> SegmentationNetwork:
    """Construct the network ``name`` from JSON kwargs (including in/out channels), with clear errors.

    The result satisfies :class:`~.contract.SegmentationNetwork` (and :class:`~.contract.PrunableNetwork`
    when the architecture is prunable).
    """
    architecture = get_architecture(name)
    cls = architecture.network_class()
    parameters = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in kwargs if k not in parameters)
    if unknown:
        raise UserError(f"architecture {name!r} does not take argument(s) {', '.join(unknown)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, AssertionError, ZeroDivisionError, OverflowError, RuntimeError) as error:
        # kwargs come from a file: a bad value is the file's problem, named as such (not a traceback)
        raise UserError(f"cannot build architecture {name!r} with {dict(kwargs)}: {type(error).__name__}: {error}"[:600]) from None

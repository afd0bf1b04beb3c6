"""Named ``features`` presets: the one table of channel widths per architecture.

``features`` are channels per resolution level, finest first (the first entry is the full-resolution
level). Every preset is named after where it comes from:

- ``paper``: the configuration of the architecture's paper (the constructor's and the registry's default);
- ``wide``: the UNet++ paper's "wide U-Net" (Zhou et al., IEEE TMI 2020, Table II), which has about as
  many parameters as UNet++ (9.13M vs 9.04M) so the two can be compared at equal size;
- ``small``: a quarter of the paper's widths (a sixteenth of the parameters), for quick experiments.

Checkpoints store their own ``features`` (the bundled chest-CT UNet++ has 8..128): a preset is only
where a new network starts. Pure Python (no torch): the registry and the panel read it at start-up.
"""

from __future__ import annotations

from typing import Mapping, Tuple

Features = Tuple[int, ...]

#: U-Net and UNet++ as the UNet++ paper configures them (Zhou et al., IEEE TMI 2020, Table II).
UNET_PAPER: Features = (32, 64, 128, 256, 512)
#: "wide U-Net" of the same paper: about the parameter count of UNet++ with :data:`UNET_PAPER`.
UNET_WIDE: Features = (35, 70, 140, 280, 560)

#: architecture name → preset name → features. The first preset of each is its paper configuration.
FEATURE_PRESETS: Mapping[str, Mapping[str, Features]] = {
    "unet": {"paper": UNET_PAPER, "wide": UNET_WIDE},
    "unetplusplus": {"paper": UNET_PAPER, "wide": UNET_WIDE},
    # Huang et al., ICASSP 2020: a VGG-16-like encoder with 64..1024 filters
    "unet3plus": {"paper": (64, 128, 256, 512, 1024), "small": (16, 32, 64, 128, 256)},
    # Peng et al., arXiv:2311.17791: the paper's encoders are pretrained; here a U-Net encoder of UNET_PAPER
    "unetv2": {"paper": UNET_PAPER, "small": (16, 32, 64, 128, 256)},
    # Long et al., CVPR 2015: the five VGG-16 stages
    "fcn8s": {"paper": (64, 128, 256, 512, 512), "small": (16, 32, 64, 128, 128)},
    # Chen et al., ECCV 2018, with a from-scratch ResNet-18-wide encoder (stem + four stages)
    "deeplabv3plus": {"paper": (64, 64, 128, 256, 512), "small": (16, 16, 32, 64, 128)},
}


def presets_of(architecture: str) -> Mapping[str, Features]:
    """The named presets of ``architecture`` (empty when it has none)."""
    return FEATURE_PRESETS.get(architecture, {})


def paper_features(architecture: str) -> Features:
    """The ``paper`` preset of ``architecture``: its constructor's default ``features``."""
    return FEATURE_PRESETS[architecture]["paper"]

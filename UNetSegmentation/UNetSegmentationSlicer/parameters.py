"""The panel's settings mapped onto the engine's options: the one place where a parameter-node name
(``batchSize``, ``sliceAxis``...) becomes a :class:`SegmentationOptions` field.

The parameter node's defaults for engine settings are read from :data:`DEFAULTS` here, so the panel,
the CLI and the runner cannot disagree. Slicer-free (no ``slicer`` import): tested with pytest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol, Union

from UNetSegmentationLib.inference.options import AXIS_CHOICES, DEFAULTS, SPACING_CHOICES as ENGINE_SPACING_CHOICES, SegmentationOptions, axis_name
from UNetSegmentationLib.panel.checkpoints import CheckpointInfo
from UNetSegmentationLib.panel.devices import DEVICE_VALUES
from UNetSegmentationLib.panel.run import RunOptions

#: values of the parameter node's ``device`` and ``sliceAxis`` combo boxes
DEVICE_CHOICES = list(DEVICE_VALUES)
SLICE_AXIS_CHOICES = list(AXIS_CHOICES)
#: values of the ``spacing`` combo box: segment at the model's spacing, or on the volume's own grid
SPACING_CHOICES = list(ENGINE_SPACING_CHOICES)
#: the largest batch the panel's spin box allows
MAX_BATCH_SIZE = 256
#: the parameter node's defaults of engine settings (written once, in SegmentationOptions)
DEFAULT_DEVICE = DEFAULTS.device
DEFAULT_BATCH_SIZE = DEFAULTS.batch_size
DEFAULT_SLICE_AXIS = axis_name(DEFAULTS.axis)
DEFAULT_LARGEST_COMPONENT = DEFAULTS.largest_component
DEFAULT_SPACING = DEFAULTS.spacing
DEFAULT_CROP_TO_BODY = DEFAULTS.crop
#: the panel's "" depth: the checkpoint's recommended depth (``--depth`` not given)
RECOMMENDED_DEPTH = ""


class PanelParameters(Protocol):
    """What :func:`run_options_from_parameters` reads: the module's parameter node, or any object with its names."""

    depth: str
    device: str
    batchSize: int
    sliceAxis: str
    largestComponent: bool
    confidenceMap: bool
    spacing: str
    cropToBody: bool
    architecture: str
    classNames: str


def run_options(
    checkpoint: Union[str, Path],
    depth: Optional[str] = RECOMMENDED_DEPTH,
    device: str = DEFAULT_DEVICE,
    batchSize: int = DEFAULT_BATCH_SIZE,
    sliceAxis: str = DEFAULT_SLICE_AXIS,
    largestComponent: bool = DEFAULT_LARGEST_COMPONENT,
    confidenceMap: bool = False,
    architecture: Optional[str] = "",
    classNames: Optional[str] = "",
    spacing: str = DEFAULT_SPACING,
    cropToBody: bool = DEFAULT_CROP_TO_BODY,
) -> RunOptions:
    """The run that the panel's settings ask for; keyword names are the parameter node's.

    Raises :class:`~UNetSegmentationLib.errors.UserError` for a value the engine would refuse.
    """
    segmentation = SegmentationOptions(
        depth=str(depth) if depth not in (None, RECOMMENDED_DEPTH) else None,
        device=device or DEFAULT_DEVICE,
        batch_size=int(batchSize),
        axis=sliceAxis or None,
        largest_component=bool(largestComponent),
        spacing=spacing or DEFAULT_SPACING,
        crop=bool(cropToBody),
    )
    return RunOptions(
        checkpoint=Path(checkpoint),
        segmentation=segmentation,
        confidence_map=bool(confidenceMap),
        architecture=architecture or None,
        classes=classNames or None,
    )


def run_options_from_parameters(parameters: PanelParameters, info: CheckpointInfo) -> RunOptions:
    """The run for the panel's parameter node and the chosen checkpoint: the depth only when the
    network can be pruned, the architecture and names only for a plain PyTorch file."""
    plain = info.needs_model_options
    return run_options(
        info.path,
        depth=parameters.depth if info.depth_choices() else RECOMMENDED_DEPTH,
        device=parameters.device,
        batchSize=parameters.batchSize,
        sliceAxis=parameters.sliceAxis,
        largestComponent=parameters.largestComponent,
        confidenceMap=parameters.confidenceMap,
        architecture=parameters.architecture if plain else None,
        classNames=parameters.classNames if plain else None,
        spacing=parameters.spacing,
        cropToBody=parameters.cropToBody,
    )

"""Everything a run does to the MRML scene: the input volume out to a file, the engine's result in.

The result is the ``.seg.nrrd`` the engine wrote: its segments already carry the checkpoint's names,
colours and terminology (``SegmentN_Tags``), and its geometry is the input's. Here it becomes a
segmentation node named after the volume (or replacing the node the user chose), placed under the
volume's transform, with the optional confidence map as a foreground layer.

Uses ``slicer`` (``slicer.util`` and ``slicer.mrmlScene``) and MRML calls only; no Qt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import slicer

from UNetSegmentationLib.panel.checkpoints import output_segmentation_name, segment_id

#: colour table of the confidence map (present in every Slicer; left at the default when missing)
CONFIDENCE_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
CONFIDENCE_OPACITY = 0.4


def replacement_question(output_node) -> Optional[str]:
    """What to ask before the result replaces ``output_node``; None when there is nothing to lose."""
    if output_node is None or output_node.GetSegmentation().GetNumberOfSegments() == 0:
        return None
    return (
        "The segmentation '%s' already has %d segment(s). Replace it with the new result?\n\n"
        "(Choose 'Create new segmentation' as output to keep it.)" % (output_node.GetName(), output_node.GetSegmentation().GetNumberOfSegments())
    )


def export_volume(volume_node, path: Path) -> Path:
    """Write ``volume_node`` to ``path`` (its storage node untouched); RuntimeError when no file appears."""
    if volume_node is None:
        raise ValueError("no input volume")
    slicer.util.exportNode(volume_node, str(path))
    if not Path(path).is_file():
        raise RuntimeError("the volume '%s' could not be written to a temporary file (%s)" % (volume_node.GetName(), path))
    return Path(path)


def import_segmentation(path: Path, volume_node, output_node=None, metadata=None, show_3d: bool = False):
    """Load the engine's ``.seg.nrrd`` as a segmentation node on ``volume_node``'s geometry.

    ``output_node`` None: a new node named after the volume; else that node is replaced by the result
    and its name kept. Returns the new segmentation node.
    """
    scene = slicer.mrmlScene
    if volume_node is None or not scene.IsNodePresent(volume_node):
        raise RuntimeError("the input volume was removed from the scene during the segmentation")
    segmentation_node = slicer.util.loadSegmentation(str(path))
    if segmentation_node is None:  # Slicer 5.10+ raises instead; older versions returned None
        raise RuntimeError("Slicer could not read the segmentation file the engine wrote (%s)" % Path(path).name)
    forget_temporary_file(segmentation_node)

    if output_node is not None and scene.IsNodePresent(output_node):
        name = output_node.GetName()
        scene.RemoveNode(output_node)
    else:
        name = scene.GenerateUniqueName(output_segmentation_name(volume_node.GetName()))
    segmentation_node.SetName(name)
    if metadata is not None:
        name_and_colour_segments(segmentation_node.GetSegmentation(), metadata.classes)

    # the transform first: the reference geometry is recorded through the node's transform
    segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    if show_3d:
        segmentation_node.CreateClosedSurfaceRepresentation()
    return segmentation_node


def name_and_colour_segments(segmentation, classes) -> None:
    """Set each class's name and colour again from the checkpoint, whatever the reader did with the header."""
    for info in classes:
        segment = segmentation.GetSegment(segment_id(info.value))
        if segment is None:
            segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(info.name))
        if segment is None:
            continue
        segment.SetName(info.name)
        segment.SetColor(*info.color)


def import_confidence_map(path: Optional[Path], volume_node, name: str) -> Optional[Any]:
    """Load the confidence map (values 0..1) as a hidden volume under the input's transform, or None without one."""
    if path is None or not Path(path).is_file():
        return None
    confidence_node = slicer.util.loadVolume(str(path), {"name": name + " confidence", "show": False})
    forget_temporary_file(confidence_node)
    confidence_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    display_node = confidence_node.GetDisplayNode()
    if display_node is not None:
        if slicer.mrmlScene.GetNodeByID(CONFIDENCE_COLOR_NODE_ID) is not None:
            display_node.SetAndObserveColorNodeID(CONFIDENCE_COLOR_NODE_ID)
        display_node.AutoWindowLevelOff()
        display_node.SetWindowLevelMinMax(0.0, 1.0)
    return confidence_node


def show_result(volume_node, confidence_node=None) -> None:
    """The input as background of the slice views, the confidence map (if any) over it."""
    if confidence_node is not None:
        slicer.util.setSliceViewerLayers(background=volume_node, foreground=confidence_node, foregroundOpacity=CONFIDENCE_OPACITY)
    else:
        slicer.util.setSliceViewerLayers(background=volume_node)


def import_result(run, volume_node, output_node=None, metadata=None, show_3d: bool = False):
    """The run's segmentation (and confidence map) into the scene and the slice views; returns the segmentation node."""
    segmentation_node = import_segmentation(run.output_path, volume_node, output_node, metadata, show_3d)
    confidence_node = import_confidence_map(run.confidence_path, volume_node, segmentation_node.GetName())
    show_result(volume_node, confidence_node)
    return segmentation_node


def forget_temporary_file(node) -> None:
    """The file ``node`` was read from is deleted with the run: drop its storage node so 'Save' writes the node anew."""
    storage_node = node.GetStorageNode() if node is not None else None
    if storage_node is not None:
        slicer.mrmlScene.RemoveNode(storage_node)

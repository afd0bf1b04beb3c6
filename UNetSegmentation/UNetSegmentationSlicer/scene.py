"""Everything a run does to the MRML scene: the input volume out to a file, the engine's result in.

The result is the ``.seg.nrrd`` the engine wrote: its segments already carry the checkpoint's names,
colours, label values and terminology (``SegmentN_Tags``), and its geometry is the input's. Here it
becomes a segmentation node named after the volume (or the node the user chose, kept and refilled),
under the volume's transform, beside the volume in the subject hierarchy, with the optional
confidence map as a foreground layer.

Files are written and read with MRML storage nodes, the classes Slicer's own readers and writers use,
and nothing here needs Qt or ``slicer.app``: the same code runs on the MRML of the ``slicer-core``
package in the test suite (``Testing/test_mrml_*.py``) as inside Slicer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import slicer

from UNetSegmentationLib.panel.checkpoints import output_segmentation_name, segment_id

#: the confidence map's overlay shows where the model is UNSURE, so that the eye goes where review is
#: needed: voxels at CONFIDENT or above are transparent (92 % of the slicerio CT's voxels are >= 0.99,
#: which tinted the whole slice before), the others painted from red (UNSURE_FLOOR and below: the
#: model hesitates between classes) to yellow (just below CONFIDENT)
CONFIDENT = 0.99
UNSURE_FLOOR = 0.5
UNSURE_COLOURS_NAME = "UNetSegmentation unsure"
UNSURE_COLOURS_TAG = "UNetSegmentation.UnsureColours"
CONFIDENCE_OPACITY = 0.6
#: node attribute marking a confidence map made by this module, so that a later run can take it off the views
CONFIDENCE_ATTRIBUTE = "UNetSegmentation.ConfidenceMap"
#: the reference from a segmentation to its confidence map: a later run into the same segmentation refills that map
CONFIDENCE_REFERENCE = "UNetSegmentation.confidence"


def replacement_question(output_node) -> Optional[str]:
    """What to ask before the result replaces ``output_node``'s segments; None when there is nothing to lose."""
    if output_node is None or output_node.GetSegmentation().GetNumberOfSegments() == 0:
        return None
    return (
        "The segmentation '%s' already has %d segment(s). Replace them with the new result?\n\n"
        "(Choose 'Create new segmentation' as output to keep them.)" % (output_node.GetName(), output_node.GetSegmentation().GetNumberOfSegments())
    )


def export_volume(volume_node, path: Path) -> Path:
    """Write ``volume_node`` (its voxels and IJK-to-RAS geometry, without its parent transform) to
    ``path``, through a storage node of its own: the node's storage is left untouched."""
    if volume_node is None:
        raise ValueError("no input volume")
    storage = volume_node.CreateDefaultStorageNode()
    storage.SetFileName(str(path))
    storage.UseCompressionOff()  # a temporary file, read once by the engine: speed over size
    if not storage.WriteData(volume_node) or not Path(path).is_file():
        raise RuntimeError("the volume '%s' could not be written to a temporary file (%s)" % (volume_node.GetName(), path))
    return Path(path)


def export_and_start(run, volume_node, on_state_change=None) -> None:
    """A segmentation run's start: the volume written to the run's input file, then the engine child
    started (``on_state_change`` is called after each state change, so the panel can show it)."""
    if volume_node is None:
        raise ValueError("no input volume")
    input_path = run.begin_exporting()
    if on_state_change is not None:
        on_state_change()
    export_volume(volume_node, input_path)
    run.start_segmenting()
    if on_state_change is not None:
        on_state_change()


def load_volume(path: Path, name: str):
    """A new scalar volume node (with its display node) holding the volume file ``path``; RuntimeError when it cannot be read."""
    scene = slicer.mrmlScene
    volume_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(volume_node):
        scene.RemoveNode(volume_node)
        raise RuntimeError("Slicer could not read the volume file %s" % Path(path).name)
    volume_node.CreateDefaultDisplayNodes()
    return volume_node


def read_segmentation(path: Path, segmentation_node) -> None:
    """Fill ``segmentation_node`` (already in the scene) with the segments of the ``.seg.nrrd`` ``path``,
    replacing the ones it had; RuntimeError when the file cannot be read."""
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(segmentation_node):
        raise RuntimeError("Slicer could not read the segmentation file the engine wrote (%s)" % Path(path).name)
    segmentation_node.CreateDefaultDisplayNodes()


def import_segmentation(path: Path, volume_node, output_node=None, metadata=None, show_3d: bool = False):
    """Load the engine's ``.seg.nrrd`` as a segmentation on ``volume_node``'s geometry; returns its node.

    ``output_node`` None: a new node named after the volume. Else that node keeps its identity (name,
    ID, references) and gets the result's segments instead of its own.
    """
    scene = slicer.mrmlScene
    if volume_node is None or not scene.IsNodePresent(volume_node):
        raise RuntimeError("the input volume was removed from the scene during the segmentation")
    if output_node is not None and scene.IsNodePresent(output_node):
        segmentation_node = output_node
        read_segmentation(path, segmentation_node)
    else:
        name = scene.GenerateUniqueName(output_segmentation_name(volume_node.GetName()))
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        try:
            read_segmentation(path, segmentation_node)
        except RuntimeError:
            scene.RemoveNode(segmentation_node)
            raise
    if metadata is not None:
        name_and_colour_segments(segmentation_node.GetSegmentation(), metadata.classes)
    place_on_volume(segmentation_node, volume_node)
    if show_3d:
        show_in_3d(segmentation_node)
    return segmentation_node


def place_on_volume(segmentation_node, volume_node) -> None:
    """Under the volume's transform, on the volume's geometry, with the volume as Segment Editor's
    source volume, beside the volume in the subject hierarchy.

    The transform comes first: ``SetReferenceImageGeometryParameterFromVolumeNode`` records the volume's
    geometry as seen from the segmentation's transform, so the other order shifts it by the transform.
    """
    segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation_node.SetNodeReferenceID(segmentation_node.GetReferenceImageGeometryReferenceRole(), volume_node.GetID())
    place_beside(segmentation_node, volume_node)


def place_beside(node, volume_node) -> None:
    """Put ``node`` under the volume's parent in the subject hierarchy (its study, for a volume loaded from DICOM)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    volume_item = hierarchy.GetItemByDataNode(volume_node) if hierarchy is not None else 0
    if not volume_item:
        return
    parent_item = hierarchy.GetItemParent(volume_item)
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent_item)
    else:  # Slicer's subject hierarchy plugins add an item for every new node; bare MRML does not
        hierarchy.CreateItem(parent_item, node)


def show_in_3d(segmentation_node) -> None:
    """Surfaces for the 3D views, with segments that enclose others translucent.

    Slicer measures the enclosure (``CalculateAutoOpacitiesForSegments``: a topological hierarchy of the
    segments' surfaces, by bounding box) and lowers the opacity of each enclosing level, so that a
    body-wide segment such as the bundled model's "tissue" no longer hides the organs inside it.
    """
    segmentation_node.CreateClosedSurfaceRepresentation()
    display_node = segmentation_node.GetDisplayNode()
    if display_node is None:
        return
    display_node.SetPreferredDisplayRepresentationName3D(slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName())
    display_node.CalculateAutoOpacitiesForSegments()


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


def import_confidence_map(path: Optional[Path], volume_node, segmentation_node) -> Optional[Any]:
    """Load the confidence map (values 0..1) as a volume under the input's transform, or None without
    one. A segmentation gets one map: a later run into it refills the map it already has (one node,
    one file in a saved scene), else a new node named after it is made."""
    if path is None or not Path(path).is_file():
        return None
    confidence_node = segmentation_node.GetNodeReference(CONFIDENCE_REFERENCE)
    if confidence_node is not None and slicer.mrmlScene.IsNodePresent(confidence_node):
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(confidence_node):
            raise RuntimeError("Slicer could not read the confidence map the engine wrote (%s)" % Path(path).name)
        if confidence_node.GetDisplayNode() is None:
            confidence_node.CreateDefaultDisplayNodes()
    else:
        confidence_node = load_volume(path, segmentation_node.GetName() + " confidence")
        segmentation_node.SetNodeReferenceID(CONFIDENCE_REFERENCE, confidence_node.GetID())
    confidence_node.SetAttribute(CONFIDENCE_ATTRIBUTE, "1")
    confidence_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    place_beside(confidence_node, volume_node)
    show_unsure(confidence_node)
    return confidence_node


def unsure_colours():
    """The colour table of the overlay (one per scene, saved with it): red where the model is least sure, to yellow."""
    scene = slicer.mrmlScene
    table = scene.GetSingletonNode(UNSURE_COLOURS_TAG, "vtkMRMLColorTableNode")
    if table is not None:
        return table
    table = slicer.vtkMRMLColorTableNode()
    table.SetName(UNSURE_COLOURS_NAME)
    table.SetSingletonTag(UNSURE_COLOURS_TAG)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    for index in range(256):
        table.SetColor(index, "", 1.0, index / 255.0, 0.0, 1.0)
    return scene.AddNode(table)


def show_unsure(confidence_node) -> None:
    """Display the map so that confident voxels (>= CONFIDENT) are transparent and unsure ones bright."""
    display_node = confidence_node.GetDisplayNode()
    if display_node is None:
        return
    display_node.SetAndObserveColorNodeID(unsure_colours().GetID())
    display_node.AutoWindowLevelOff()
    display_node.SetWindowLevelMinMax(UNSURE_FLOOR, CONFIDENT)
    display_node.AutoThresholdOff()
    display_node.SetLowerThreshold(-1.0)  # below any confidence
    display_node.SetUpperThreshold(CONFIDENT)  # a float32 0.99 is 0.99000001: above, so transparent
    display_node.SetApplyThreshold(1)


def show_result(volume_node, confidence_node=None) -> None:
    """The input as background of the slice views and the confidence map (if any) over it; without
    one, a confidence map of an earlier run is taken off the views (another foreground stays)."""
    if confidence_node is not None:
        slicer.util.setSliceViewerLayers(background=volume_node, foreground=confidence_node, foregroundOpacity=CONFIDENCE_OPACITY)
        return
    slicer.util.setSliceViewerLayers(background=volume_node)
    scene = slicer.mrmlScene
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite_node = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        foreground = scene.GetNodeByID(composite_node.GetForegroundVolumeID() or "")
        if foreground is not None and foreground.GetAttribute(CONFIDENCE_ATTRIBUTE):
            composite_node.SetForegroundVolumeID(None)


def import_result(run, volume_node, output_node=None, metadata=None, show_3d: bool = False):
    """The run's segmentation (and confidence map) into the scene and the slice views; returns the segmentation node."""
    segmentation_node = import_segmentation(run.output_path, volume_node, output_node, metadata, show_3d)
    confidence_node = import_confidence_map(run.confidence_path, volume_node, segmentation_node)
    show_result(volume_node, confidence_node)
    return segmentation_node

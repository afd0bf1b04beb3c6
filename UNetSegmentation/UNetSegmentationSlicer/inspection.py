"""What a segmentation in the scene holds, measured with Slicer's own classes: for the self-test
(``selftest``) and the test suite on real MRML (``Testing/test_mrml_*.py``), never for a run.

- :func:`array_from_matrix`, :func:`matrix_from_array`: ``vtkMatrix4x4`` to and from 4x4 arrays;
- :func:`ijk_to_ras`: a volume's 4x4 IJK-to-RAS matrix;
- :func:`reference_geometry`: the IJK-to-RAS matrix and extent a segmentation records as its reference;
- :func:`labelmap_geometries`: each segment's binary labelmap IJK-to-RAS matrix;
- :func:`labels_on_volume`: the segments exported back to a label map on a volume's grid ([k, j, i]),
  each voxel holding its segment's label value;
- :func:`opacities_3d`: each segment's opacity in the 3D views, by name.

numpy is imported inside the functions: this module is imported only when a test runs.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import slicer
import vtk

#: a numpy array (numpy itself is imported inside the functions, so importing this module stays light)
Array = Any


def array_from_matrix(matrix) -> Array:
    """A ``vtkMatrix4x4`` as a 4x4 numpy array."""
    import numpy as np

    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def matrix_from_array(array) -> "vtk.vtkMatrix4x4":
    """A 4x4 array (or nested sequence) as a ``vtkMatrix4x4``."""
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row][column]))
    return matrix


def ijk_to_ras(volume_node) -> Array:
    """The volume's IJK-to-RAS matrix (4x4; its parent transform not applied)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return array_from_matrix(matrix)


def reference_geometry(segmentation_node) -> Tuple[Array, Tuple[int, ...]]:
    """``(ijk_to_ras 4x4, extent (i0, i1, j0, j1, k0, k1))`` of the segmentation's reference image geometry."""
    segmentation = segmentation_node.GetSegmentation()
    serialized = segmentation.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    geometry = slicer.vtkOrientedImageData()
    if not serialized or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(serialized, geometry, False):
        raise ValueError("the segmentation '%s' has no reference image geometry" % segmentation_node.GetName())
    matrix = vtk.vtkMatrix4x4()
    geometry.GetImageToWorldMatrix(matrix)
    return array_from_matrix(matrix), tuple(geometry.GetExtent())


def segment_ids(segmentation_node) -> List[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(index) for index in range(segmentation.GetNumberOfSegments())]


def labelmap_geometries(segmentation_node) -> Dict[str, Array]:
    """Each segment's binary labelmap IJK-to-RAS matrix (4x4), by segment ID."""
    segmentation = segmentation_node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    geometries = {}
    for identifier in segment_ids(segmentation_node):
        labelmap = segmentation.GetSegment(identifier).GetRepresentation(name)
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        geometries[identifier] = array_from_matrix(matrix)
    return geometries


def labels_on_volume(segmentation_node, volume_node) -> Array:
    """The segments exported to a label map on ``volume_node``'s grid by Slicer's segmentations logic
    (through both nodes' transforms), as a [k, j, i] array of the segments' label values (0 outside)."""
    import numpy as np

    segmentation = segmentation_node.GetSegmentation()
    identifiers = segment_ids(segmentation_node)
    ids = vtk.vtkStringArray()
    for identifier in identifiers:
        ids.InsertNextValue(identifier)
    scene = slicer.mrmlScene
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap_node, volume_node):
            raise RuntimeError("the segments could not be exported to a label map")
        exported = np.asarray(slicer.util.arrayFromVolume(labelmap_node)).copy()
    finally:
        scene.RemoveNode(labelmap_node)
    # the export numbers the segments 1, 2, ... in the order given: map those to the segments' own label values
    values = np.array([0] + [segmentation.GetSegment(identifier).GetLabelValue() for identifier in identifiers])
    return values[exported]


def opacities_3d(segmentation_node) -> Dict[str, float]:
    """Each segment's opacity in the 3D views, by segment name."""
    display_node = segmentation_node.GetDisplayNode()
    segmentation = segmentation_node.GetSegmentation()
    return {segmentation.GetSegment(identifier).GetName(): display_node.GetSegmentOpacity3D(identifier) for identifier in segment_ids(segmentation_node)}

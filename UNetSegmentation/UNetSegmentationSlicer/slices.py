"""Where a volume's slices lie in the scene: its spacing as the engine slices it (in-plane and between
slices, for the panel's spacing text) and the RAS point at the centre of one slice (where the slice
views go when the user chooses an entry of "Review these slices first").

The slice axis is chosen by the engine's own numpy-free rule (``UNetSegmentationLib/geometry/slice_axes.py``:
the image axis closest to superior-inferior, unless the run asked for another), from the volume node's
IJK-to-RAS directions. Plain MRML calls: tested on the ``slicer-core`` scene.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import slicer
import vtk

from UNetSegmentationLib.geometry.slice_axes import slice_axes as geometry_slice_axes


def ijk_directions(volume_node) -> List[List[float]]:
    """``[axis][ras]``: the RAS direction of image axis i, j and k."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(matrix)
    return [[matrix.GetElement(row, axis) for row in range(3)] for axis in range(3)]


def slice_axes(volume_node, slice_axis: Optional[int] = None) -> Tuple[int, int, int]:
    """``(slice axis, row axis, column axis)`` as the engine slices the volume: the engine's own rule
    (:func:`UNetSegmentationLib.geometry.slice_axes.slice_axes`) on the node's IJK-to-RAS directions."""
    return geometry_slice_axes(ijk_directions(volume_node), slice_axis)


def slice_spacing(volume_node, slice_axis: Optional[int] = None) -> Tuple[float, float, float]:
    """``(row, column, between slices)`` spacing in mm as the engine slices the volume."""
    spacing = volume_node.GetSpacing()
    axis, rows, columns = slice_axes(volume_node, slice_axis)
    return float(spacing[rows]), float(spacing[columns]), float(spacing[axis])


def slice_count(volume_node, slice_axis: Optional[int] = None) -> Optional[int]:
    """The volume's slices along the axis the engine slices it along (None without voxels): what the
    fine-tuning's slice box is checked against."""
    image = volume_node.GetImageData()
    if image is None:
        return None
    return int(image.GetDimensions()[slice_axes(volume_node, slice_axis)[0]])


def slice_centre_ras(volume_node, axis: int, index: int) -> Tuple[float, float, float]:
    """The world RAS point at the centre of slice ``index`` along image axis ``axis`` (0 = i, 1 = j, 2 = k),
    through the volume's parent transforms."""
    dimensions = volume_node.GetImageData().GetDimensions()
    if not 0 <= index < dimensions[axis]:
        raise ValueError("slice %d is outside the volume '%s' (%d slices along %s)" % (index, volume_node.GetName(), dimensions[axis], "ijk"[axis]))
    ijk = [(size - 1) / 2.0 for size in dimensions]
    ijk[axis] = float(index)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    ras = matrix.MultiplyPoint(ijk + [1.0])[:3]
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        to_world = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, to_world)
        ras = to_world.TransformPoint(ras)
    return tuple(float(value) for value in ras)

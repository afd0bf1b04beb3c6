"""The result's geometry on real MRML (slicer-core), with and without a parent linear transform.

The segmentation follows the input volume's parent transform, and its reference image geometry and
every segment's labelmap lie exactly on the volume's IJK-to-RAS grid, for the slicerio chest CT and an
oblique, anisotropic volume. The confidence map is a volume on the same grid under the same transform.

The transform order matters: ``SetReferenceImageGeometryParameterFromVolumeNode`` records the volume's
grid as seen from the segmentation's own transform. The module used to call it before putting the
segmentation under the volume's transform; that recorded the grid moved by the transform (here 29 mm,
25 mm of it along R). ``test_the_old_order_records_a_reference_geometry_shifted_by_the_transform`` runs
that order on real MRML and shows the check below catching it.
"""

from __future__ import annotations

import numpy as np
import pytest

import mrml_support
from mrml_support import PARENT_TRANSFORM, VOLUMES, segment

pytestmark = pytest.mark.mrml
mrml = mrml_support.mrml

CASES = [pytest.param(name, transformed, id=f"{name}{' under a transform' if transformed else ''}") for name in VOLUMES for transformed in (False, True)]
#: mm (and unitless in the direction x spacing part)
TOLERANCE = 1e-4


def reference_offset_mm(segmentation_node, volume_node, inspection) -> float:
    """How far the segmentation's reference geometry is from the volume's IJK-to-RAS (largest entry difference)."""
    reference, _ = inspection.reference_geometry(segmentation_node)
    return float(np.abs(reference - inspection.ijk_to_ras(volume_node)).max())


@pytest.mark.parametrize("name, transformed", CASES)
def test_reference_and_labelmap_geometry_are_the_volumes_ijk_to_ras(mrml, name, transformed):
    inspection = mrml.layer("inspection")
    volume = VOLUMES[name](mrml, transformed)
    node = segment(mrml, volume).node

    assert node.GetTransformNodeID() == volume.GetTransformNodeID()
    assert (node.GetTransformNodeID() is not None) == transformed
    expected = inspection.ijk_to_ras(volume)
    reference, extent = inspection.reference_geometry(node)
    np.testing.assert_allclose(reference, expected, atol=TOLERANCE)
    dimensions = volume.GetImageData().GetDimensions()
    assert extent == (0, dimensions[0] - 1, 0, dimensions[1] - 1, 0, dimensions[2] - 1)
    geometries = inspection.labelmap_geometries(node)
    assert len(geometries) == node.GetSegmentation().GetNumberOfSegments() == 7
    for identifier, geometry in geometries.items():
        np.testing.assert_allclose(geometry, expected, atol=TOLERANCE, err_msg=identifier)


@pytest.mark.parametrize("name", list(VOLUMES))
def test_the_old_order_records_a_reference_geometry_shifted_by_the_transform(mrml, name):
    """Reference geometry first, transform second (the old ``importResult``): on a transformed volume the
    recorded grid is the volume's grid moved by the transform, which the check above rejects; with the
    transform first (``scene.place_on_volume``) the same nodes give the volume's own grid."""
    inspection, scene = mrml.layer("inspection"), mrml.layer("scene")
    volume = VOLUMES[name](mrml, transformed=True)
    node = segment(mrml, volume).node
    old_order = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "old order")
    old_order.GetSegmentation().DeepCopy(node.GetSegmentation())  # the same segments, placed the old way

    old_order.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    old_order.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    shifted, _ = inspection.reference_geometry(old_order)
    np.testing.assert_allclose(shifted, PARENT_TRANSFORM @ inspection.ijk_to_ras(volume), atol=TOLERANCE)
    assert reference_offset_mm(old_order, volume, inspection) >= 25.0

    scene.place_on_volume(old_order, volume)
    assert reference_offset_mm(old_order, volume, inspection) < TOLERANCE


@pytest.mark.parametrize("transformed", [False, True], ids=["plain", "under a transform"])
def test_the_confidence_map_is_a_volume_on_the_inputs_grid_under_its_transform(mrml, transformed):
    inspection = mrml.layer("inspection")
    volume = mrml_support.oblique_volume(mrml, transformed)
    result = segment(mrml, volume, confidence_map=True)
    confidence = mrml.scene.GetFirstNodeByName(f"{result.node.GetName()} confidence")
    assert confidence is not None and confidence.IsA("vtkMRMLScalarVolumeNode")
    np.testing.assert_allclose(inspection.ijk_to_ras(confidence), inspection.ijk_to_ras(volume), atol=TOLERANCE)
    assert confidence.GetTransformNodeID() == volume.GetTransformNodeID()
    values = mrml.slicer.util.arrayFromVolume(confidence)
    assert values.shape == mrml.slicer.util.arrayFromVolume(volume).shape
    np.testing.assert_array_equal(values, result.confidence)
    assert 0.0 < values.min() and values.max() <= 1.0
    display = confidence.GetDisplayNode()  # unsure voxels painted (0.5 red .. 0.99 yellow), confident ones transparent
    scene_layer = mrml.layer("scene")
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (scene_layer.UNSURE_FLOOR, scene_layer.CONFIDENT)

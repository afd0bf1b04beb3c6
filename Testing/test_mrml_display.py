"""How the result is displayed in 3D on real MRML (slicer-core): segments that enclose others are translucent.

The bundled model's "tissue" segment is the whole body around the organs; opaque, it would hide every
other segment in the 3D view. With "Show 3D" the module has Slicer measure which segments enclose
others (``CalculateAutoOpacitiesForSegments``) and lower their opacity. The test measures enclosure on
its own (the voxel bounding boxes of the engine's labels) and checks Slicer's opacities against it.
"""

from __future__ import annotations

import numpy as np
import pytest

import mrml_support
from mrml_support import segment

pytestmark = pytest.mark.mrml
mrml = mrml_support.mrml


#: pieces of a segment smaller than this (voxels) are left out of its box: Slicer measures enclosure on
#: the smoothed closed surfaces, in which a speck of a few voxels does not survive
SPECK_VOXELS = 10


def enclosing_segments(labels: np.ndarray, names: dict) -> set:
    """Names of the segments whose voxel bounding box (specks left out) contains another segment's."""
    import SimpleITK as sitk

    boxes = {}
    for value, name in names.items():
        pieces = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray((labels == value).astype(np.uint8))))
        sizes = np.bincount(pieces.ravel())
        voxels = np.argwhere(np.isin(pieces, np.flatnonzero(sizes >= SPECK_VOXELS)) & (pieces > 0))
        if len(voxels):
            boxes[name] = (voxels.min(axis=0), voxels.max(axis=0))
    return {a for a, (low_a, high_a) in boxes.items()
            if any(b != a and np.all(low_a <= low_b) and np.all(high_a >= high_b) for b, (low_b, high_b) in boxes.items())}


def test_with_3d_shown_the_segments_that_enclose_others_are_translucent_and_the_rest_opaque(mrml):
    volume = mrml_support.chest_ct(mrml)
    result = segment(mrml, volume, show_3d=True)
    segmentation = result.node.GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetLabelValue(): segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    enclosing = enclosing_segments(result.engine_labels, names)
    opacities = mrml.layer("inspection").opacities_3d(result.node)

    assert "tissue" in enclosing and "left lung" not in enclosing
    assert {name for name, opacity in opacities.items() if opacity < 1.0} == enclosing
    assert min(opacities, key=opacities.get) == "tissue", "the segment around all others is the most translucent"
    assert opacities["tissue"] <= 0.5
    closed_surface = mrml.slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    assert segmentation.ContainsRepresentation(closed_surface)


def test_without_3d_no_surfaces_are_made_and_every_segment_stays_opaque(mrml):
    node = segment(mrml, mrml_support.chest_ct(mrml), show_3d=False).node
    closed_surface = mrml.slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    assert not node.GetSegmentation().ContainsRepresentation(closed_surface)
    assert set(mrml.layer("inspection").opacities_3d(node).values()) == {1.0}

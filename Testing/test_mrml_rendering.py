"""Segmentations as 3D Slicer's own renderer draws them (slicer-core's displayable managers, offscreen).

A slice view paints each segment's colour inside that segment and nowhere else (pixels mapped to voxels
through the slice node's XY-to-RAS matrix), and in a 3D view of the bundled model's result on the
chest CT the lungs show through the body-wide "tissue" segment, which hides them when opaque; the
confidence overlay paints only where the model is unsure. The views
are those of ``Resources/Tools/render_slicer_views.py``, which draws the README's pictures.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import mrml_support
from mrml_support import REPO, segment

pytestmark = pytest.mark.mrml
mrml = mrml_support.mrml

RED, BLUE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)


#: renders one offscreen frame the way the views do; run in a child, since a machine without OpenGL may crash VTK
RENDER_PROBE = """
import os
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
import vtk
window = vtk.vtkRenderWindow()
window.SetOffScreenRendering(1)
window.SetSize(8, 8)
window.AddRenderer(vtk.vtkRenderer())
window.Render()
print(window.GetClassName())
"""


@pytest.fixture(scope="module")
def offscreen_rendering():
    """The name of VTK's offscreen render window here; the tests are skipped (failed with
    UNETSEG_REQUIRE_MRML=1) where VTK cannot render offscreen (no EGL/OpenGL)."""
    result = subprocess.run([sys.executable, "-c", RENDER_PROBE], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        message = f"VTK cannot render offscreen here (exit {result.returncode}): {result.stderr.strip()[-300:]}"
        if os.environ.get(mrml_support.REQUIRE_MRML_VARIABLE) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return result.stdout.strip()


@pytest.fixture
def views(mrml, offscreen_rendering, monkeypatch):
    """``Resources/Tools/render_slicer_views.py`` as a module (it needs slicer-core, which ``mrml`` checked)."""
    spec = importlib.util.spec_from_file_location("render_slicer_views", REPO / "Resources" / "Tools" / "render_slicer_views.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def two_boxes(mrml):
    """A uniform 40x40x6 volume (1 mm voxels) and a segmentation of two boxes, red (label 1) and blue (label 2)."""
    volume = mrml.volume_from_array(np.zeros((6, 40, 40), dtype=np.int16), np.eye(4), "uniform")
    labels = np.zeros((6, 40, 40), dtype=np.uint8)
    labels[:, 5:20, 6:18] = 1
    labels[:, 24:36, 20:34] = 2
    labelmap = mrml.slicer.util.addVolumeFromArray(labels, ijkToRAS=np.eye(4), name="labels", nodeClassName="vtkMRMLLabelMapVolumeNode")
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "boxes")
    segmentation.CreateDefaultDisplayNodes()
    assert mrml.slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    for index, colour in enumerate((RED, BLUE)):
        segmentation.GetSegmentation().GetNthSegment(index).SetColor(*colour)
    mrml.scene.RemoveNode(labelmap)
    return volume, segmentation, labels


def labels_under_pixels(view, volume, labels: np.ndarray, inspection) -> np.ndarray:
    """The label of the voxel under each pixel of ``view`` ([row, column], top row first; -1 outside the volume)."""
    width, height = view.window.GetSize()
    x, y = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xy = np.stack([x.ravel(), y.ravel(), np.zeros(x.size), np.ones(x.size)])
    ras_to_ijk = np.linalg.inv(inspection.ijk_to_ras(volume))
    ijk = np.rint((ras_to_ijk @ view.xy_to_ras() @ xy)[:3]).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(labels.shape[::-1])[:, None]), axis=0)
    under = np.full(x.size, -1)
    under[inside] = labels[ijk[2, inside], ijk[1, inside], ijk[0, inside]]
    return under.reshape(height, width)[::-1]


def interior(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """``mask`` without the pixels within ``margin`` of its edge (outlines and resampling live there)."""
    padded = np.pad(mask, margin, constant_values=False)
    kept = np.ones_like(mask)
    for row in range(2 * margin + 1):
        for column in range(2 * margin + 1):
            kept &= padded[row:row + mask.shape[0], column:column + mask.shape[1]]
    return kept


def test_a_slice_view_paints_each_segments_colour_inside_it_and_nowhere_else(mrml, views):
    volume, segmentation, labels = two_boxes(mrml)
    view = views.slice_view(mrml.scene, mrml.application_logic, "Red", "Axial", (96, 96), volume)
    pixels = view.render().astype(float) / 255.0
    under = labels_under_pixels(view, volume, labels, mrml.layer("inspection"))

    red, blue, background = interior(under == 1), interior(under == 2), interior(under == 0)
    assert red.sum() > 300 and blue.sum() > 300 and background.sum() > 1000, "enough pixels of each kind to judge"
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert np.all(r[red] > g[red] + 0.2) and np.all(r[red] > b[red] + 0.2), "red inside the red segment"
    assert np.all(b[blue] > r[blue] + 0.2) and np.all(b[blue] > g[blue] + 0.2), "blue inside the blue segment"
    grey = np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max(axis=2)
    assert grey[background].max() < 0.02, "no segment colour outside the segments"


def lung_coloured_pixels(pixels: np.ndarray) -> int:
    """Pixels with the left lung's magenta hue (red well over green, blue over green), seen through the
    translucent tissue or not; the tissue (green over red), the ribs (blue under green) and the view's
    background (red equal to green) have none."""
    r, g, b = (pixels[..., channel].astype(float) / 255.0 for channel in range(3))
    return int(((r > g + 0.12) & (b > g)).sum())


def test_in_3d_the_lungs_show_through_the_translucent_tissue_which_hides_them_when_opaque(mrml, views):
    volume = mrml_support.chest_ct(mrml)
    node = segment(mrml, volume, show_3d=True).node
    view = views.threed_view(mrml.scene, mrml.application_logic, (160, 160))
    view.look_from_front(views.segmentation_bounds(node))
    seen = lung_coloured_pixels(view.render())
    assert seen > 0.02 * 160 * 160, "the left lung is visible through the tissue"

    display = node.GetDisplayNode()
    for index in range(node.GetSegmentation().GetNumberOfSegments()):
        display.SetSegmentOpacity3D(node.GetSegmentation().GetNthSegmentID(index), 1.0)  # every segment opaque
    hidden = lung_coloured_pixels(view.render())
    assert hidden < 0.05 * seen, "an opaque tissue segment hides the lungs (so the check above can fail)"


def test_the_confidence_overlay_tints_only_where_the_model_is_unsure(mrml, views):
    """Drawn by the slice view as Slicer draws it: the map over a uniform grey input; voxels at 0.99 or
    above leave the input as it is, unsure ones are painted (red at 0.5 and below)."""
    scene_layer = mrml.layer("scene")
    volume = mrml.volume_from_array(np.full((6, 40, 40), 40, dtype=np.int16), np.eye(4), "uniform")
    confidence = np.full((6, 40, 40), 0.995, dtype=np.float32)  # most of a scan: sure
    confidence[:, 5:20, 6:18] = 1.0
    confidence[:, 24:36, 20:34] = 0.45  # the model hesitates here
    regions = np.zeros(confidence.shape, dtype=np.int16)
    regions[:, 24:36, 20:34] = 1
    map_node = mrml.volume_from_array(confidence, np.eye(4), "uniform segmentation confidence")
    map_node.CreateDefaultDisplayNodes()
    scene_layer.show_unsure(map_node)
    view = views.slice_view(mrml.scene, mrml.application_logic, "Red", "Axial", (96, 96), volume)
    input_alone = view.render().astype(float) / 255.0
    view.logic.GetSliceCompositeNode().SetForegroundVolumeID(map_node.GetID())
    view.logic.GetSliceCompositeNode().SetForegroundOpacity(scene_layer.CONFIDENCE_OPACITY)
    pixels = view.render().astype(float) / 255.0
    under = labels_under_pixels(view, volume, regions, mrml.layer("inspection"))

    unsure, sure = interior(under == 1), interior(under == 0)
    assert unsure.sum() > 300 and sure.sum() > 1000, "enough pixels of each kind to judge"
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert np.all(r[unsure] > g[unsure] + 0.3) and np.all(r[unsure] > b[unsure] + 0.3), "unsure voxels are painted red"
    assert np.abs(pixels - input_alone).max(axis=2)[sure].max() < 0.02, "confident voxels are not tinted: the input shows as it is"

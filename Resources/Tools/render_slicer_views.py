"""Pictures of the module's result drawn by 3D Slicer's own renderer, for the README.

The bundled model segments the chest CT shipped in slicerio through the module's own steps
(``UNetSegmentationSlicer.scene.export_volume``, ``unetseg predict`` in a child process,
``scene.import_result`` with 3D on), in a real MRML scene of the ``slicer-core`` package. Slicer's
displayable managers then draw it offscreen (VTK's EGL render window; no display needed): an axial and
a coronal slice view (the slice logic's layer compositing, ``vtkMRMLSegmentationsDisplayableManager2D``)
and a 3D view from the front (``vtkMRMLSegmentationsDisplayableManager3D`` with the view and camera
managers). What Slicer's Qt views add around the render (corner text, the slice controller bar) is absent.

    python3 Resources/Tools/render_slicer_views.py [--output-dir Resources/Screenshots] [--size 400]

The view helpers (:func:`slice_view`, :func:`threed_view`, :func:`capture`) are also used by
``Testing/test_mrml_rendering.py``. Needs the ``test`` extra (slicer-core, slicerio, matplotlib).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Tuple

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen without an X server

import numpy as np  # noqa: E402 - after the render window choice
import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SLICE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D",)
THREED_MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager", "vtkMRMLSegmentationsDisplayableManager3D")


def offscreen_window(size: Tuple[int, int]) -> Tuple[Any, Any]:
    """An offscreen render window of ``size`` (width, height) with one renderer and an interactor
    (the displayable managers observe it)."""
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(0)
    window.SetSize(*size)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    return window, renderer


def displayable_managers(factory_class, managers: Sequence[str], application_logic, renderer, view_node):
    """A displayable manager group of ``managers`` drawing ``view_node`` into ``renderer``."""
    factory = factory_class.GetInstance()
    factory.SetMRMLApplicationLogic(application_logic)
    for name in managers:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)
    group.SetMRMLDisplayableNode(view_node)
    return group


def capture(window) -> np.ndarray:
    """The window's pixels as a [row, column, RGB] uint8 array, top row first."""
    window.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(window)
    grabber.ReadFrontBufferOff()
    grabber.Update()
    image = grabber.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])


@dataclass
class SliceView:
    """A slice view: Slicer's slice logic composes the volume layers into an image (drawn by an image
    actor, as CTK's light-box manager does in Slicer), the displayable managers draw the rest."""

    logic: Any
    window: Any
    renderer: Any
    managers: Any
    image_actor: Any

    @property
    def node(self):
        return self.logic.GetSliceNode()

    def render(self) -> np.ndarray:
        return capture(self.window)

    def xy_to_ras(self) -> np.ndarray:
        """The 4x4 matrix from the view's pixel coordinates (x right, y up, from the bottom-left) to RAS."""
        matrix = self.node.GetXYToRAS()
        return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def slice_view(scene, application_logic, name: str, orientation: str, size: Tuple[int, int], background_volume) -> SliceView:
    """A slice view named ``name`` ("Red"...) in ``orientation`` ("Axial", "Coronal", "Sagittal"),
    showing ``background_volume`` fitted to the view, centred."""
    window, renderer = offscreen_window(size)
    renderer.GetActiveCamera().ParallelProjectionOn()
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(application_logic)
    logic.SetMRMLScene(scene)
    application_logic.GetSliceLogics().AddItem(logic)
    slice_node = logic.AddSliceNode(name)
    slice_node.SetOrientation(orientation)
    logic.GetSliceCompositeNode().SetBackgroundVolumeID(background_volume.GetID())
    logic.ResizeSliceNode(*size)
    logic.FitSliceToBackground()
    mapper = vtk.vtkImageMapper()
    mapper.SetColorWindow(255)  # the slice logic's output is already RGBA 0..255 (window/level applied)
    mapper.SetColorLevel(127.5)
    mapper.SetInputConnection(logic.GetImageDataConnection())
    actor = vtk.vtkActor2D()
    actor.SetMapper(mapper)
    actor.GetProperty().SetDisplayLocationToBackground()
    renderer.AddViewProp(actor)
    managers = displayable_managers(slicer.vtkMRMLSliceViewDisplayableManagerFactory, SLICE_MANAGERS, application_logic, renderer, slice_node)
    return SliceView(logic, window, renderer, managers, actor)


@dataclass
class ThreeDView:
    window: Any
    renderer: Any
    logic: Any
    managers: Any

    @property
    def node(self):
        return self.logic.GetViewNode()

    def look_from_front(self, bounds: Sequence[float], zoom: float = 1.0) -> None:
        """Camera in front of the patient (anterior), head up, fitted to the RAS ``bounds``."""
        centre = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
        camera = self.managers.GetDisplayableManagerByClassName("vtkMRMLCameraDisplayableManager").GetCameraNode()
        camera.SetFocalPoint(*centre)
        camera.SetPosition(centre[0], centre[1] + 1000.0, centre[2])
        camera.SetViewUp(0.0, 0.0, 1.0)
        self.renderer.ResetCamera(*bounds)
        self.renderer.GetActiveCamera().Zoom(zoom)

    def render(self) -> np.ndarray:
        return capture(self.window)


def threed_view(scene, application_logic, size: Tuple[int, int]) -> ThreeDView:
    """A 3D view (view node "1", Slicer's background colours) without the bounding box and axis labels."""
    window, renderer = offscreen_window(size)
    logic = slicer.vtkMRMLViewLogic()
    logic.SetMRMLApplicationLogic(application_logic)
    logic.SetMRMLScene(scene)
    application_logic.GetViewLogics().AddItem(logic)
    view_node = logic.AddViewNode("1")
    view_node.SetBoxVisible(False)
    view_node.SetAxisLabelsVisible(False)
    managers = displayable_managers(slicer.vtkMRMLThreeDViewDisplayableManagerFactory, THREED_MANAGERS, application_logic, renderer, view_node)
    return ThreeDView(window, renderer, logic, managers)


def segmentation_bounds(segmentation_node) -> list:
    bounds = [0.0] * 6
    segmentation_node.GetRASBounds(bounds)
    return bounds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "Resources" / "Screenshots")
    parser.add_argument("--size", type=int, default=400, help="width and height of each view in pixels")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(REPO / "Testing"), str(REPO / "UNetSegmentation")]
    import tempfile

    import matplotlib.image

    import mrml_support  # the scene with Slicer's logics, and the module's steps on it (as in the tests)

    with tempfile.TemporaryDirectory() as folder:
        mrml = mrml_support.build_mrml(slicer, Path(folder) / "home")
        volume = mrml_support.chest_ct(mrml)
        segmentation = mrml_support.segment(mrml, volume, show_3d=True, temp_root=Path(folder)).node
        views = {
            "UNetSegmentationSlicerAxial.png": slice_view(mrml.scene, mrml.application_logic, "Red", "Axial", (args.size, args.size), volume),
            "UNetSegmentationSlicerCoronal.png": slice_view(mrml.scene, mrml.application_logic, "Green", "Coronal", (args.size, args.size), volume),
        }
        threed = threed_view(mrml.scene, mrml.application_logic, (args.size, args.size))
        threed.look_from_front(segmentation_bounds(segmentation), zoom=1.1)
        views["UNetSegmentationSlicer3D.png"] = threed
        args.output_dir.mkdir(parents=True, exist_ok=True)
        for name, view in views.items():
            matplotlib.image.imsave(args.output_dir / name, view.render())
            print(args.output_dir / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

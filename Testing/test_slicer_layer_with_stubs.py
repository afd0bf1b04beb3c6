"""UNetSegmentation.py driven end to end with stand-ins for Slicer, Qt and VTK.

3D Slicer cannot be installed here. These stand-ins implement only what
../shared/slicer-reference.md says about the calls the module makes (exportNode writes the volume
to a file, loadSegmentation reads a .seg.nrrd into a segmentation node, ...), so the module's own
Python — the widget's setup and button/timer handlers, the logic's blocking ``process`` — runs for
real against the real engine child. This finds typos, wrong arguments and wrong state handling;
it cannot show that Slicer behaves as the reference says (the self-test inside Slicer does that).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import time
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "UNetSegmentation"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "UNetSegmentation.ui"


# --- stand-ins ------------------------------------------------------------------------------------------


class Signal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def emit(self, *args):
        for slot in self.slots:
            slot(*args)


class FakeWidget:
    """Any widget: properties are plain attributes, signals connect by name, other calls do nothing."""

    def __init__(self, name="", class_name="QWidget"):
        self.name, self.class_name = name, class_name
        self.text, self.enabled, self.visible, self.toolTip = "", True, True, ""
        self.checked, self.value, self.maximum = False, 0, 100
        self.connections = {}

    def connect(self, signal, slot):
        self.connections.setdefault(signal, []).append(slot)

    def click(self):
        for slot in self.connections.get("clicked(bool)", []):
            slot()

    def blockSignals(self, block):
        return False

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


class FakeComboBox(FakeWidget):
    def __init__(self, name=""):
        super().__init__(name, "QComboBox")
        self.items, self.currentIndex, self.disabled_items = [], -1, set()

    def addItem(self, text, data=None):
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.currentIndex = 0

    def clear(self):
        self.items, self.currentIndex = [], -1

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def itemData(self, index):
        return self.items[index][1] if 0 <= index < len(self.items) else None

    def model(self):
        combo = self

        class Item:
            def __init__(self, index):
                self.index = index

            def setEnabled(self, enabled):
                if not enabled:
                    combo.disabled_items.add(self.index)

        return types.SimpleNamespace(item=Item)


class FakeLog(FakeWidget):
    def __init__(self, name=""):
        super().__init__(name, "QPlainTextEdit")
        self.lines = []

    def appendPlainText(self, line):
        self.lines.append(line)

    def clear(self):
        self.lines = []


def fake_ui():
    widgets = {}
    for element in ElementTree.parse(UI_FILE).getroot().iter("widget"):
        name, class_name = element.get("name"), element.get("class")
        widget = FakeComboBox(name) if class_name in ("QComboBox",) else FakeLog(name) if class_name == "QPlainTextEdit" else FakeWidget(name, class_name)
        widgets[name] = widget
    return types.SimpleNamespace(**widgets)


class FakeSegment:
    def __init__(self, name, color):
        self.name, self.color = name, tuple(color)

    def SetName(self, name):
        self.name = name

    def GetName(self):
        return self.name

    def SetColor(self, r, g, b):
        self.color = (r, g, b)

    def GetColor(self):
        return self.color


class FakeSegmentation:
    def __init__(self, segments):
        self.segments = segments  # id -> FakeSegment, in order

    def GetSegment(self, segment_id):
        return self.segments.get(segment_id)

    def GetSegmentIdBySegmentName(self, name):
        return next((i for i, s in self.segments.items() if s.name == name), "")

    def GetNumberOfSegments(self):
        return len(self.segments)

    def GetNthSegmentID(self, index):
        return list(self.segments)[index]


class FakeNode:
    def __init__(self, name, scene, path=None):
        self.name, self.scene, self.path = name, scene, path
        self.transform_id = None
        self.storage = object()
        self.reference_volume = self.reference_transform = None
        self.closed_surface = False
        self.display = types.SimpleNamespace(color=None, window=None, SetAndObserveColorNodeID=self._color, AutoWindowLevelOff=lambda: None, SetWindowLevelMinMax=self._window)
        scene.nodes.append(self)

    def _color(self, node_id):
        self.display.color = node_id

    def _window(self, low, high):
        self.display.window = (low, high)

    def GetName(self):
        return self.name

    def SetName(self, name):
        self.name = name

    def GetTransformNodeID(self):
        return self.transform_id

    def SetAndObserveTransformNodeID(self, node_id):
        self.transform_id = node_id

    def GetStorageNode(self):
        return self.storage

    def GetDisplayNode(self):
        return self.display


class FakeSegmentationNode(FakeNode):
    def __init__(self, name, scene, segments, path=None):
        super().__init__(name, scene, path)
        self.segmentation = FakeSegmentation(segments)

    def GetSegmentation(self):
        return self.segmentation

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume):
        # real Slicer records the geometry through the node's transform at this moment
        self.reference_volume, self.reference_transform = volume, self.transform_id

    def CreateClosedSurfaceRepresentation(self):
        self.closed_surface = True


class FakeScene:
    StartCloseEvent, EndCloseEvent = "StartCloseEvent", "EndCloseEvent"

    def __init__(self):
        self.nodes, self.removed = [], []

    def IsNodePresent(self, node):
        return node in self.nodes

    def RemoveNode(self, node):
        if node in self.nodes:
            self.nodes.remove(node)
        self.removed.append(node)

    def GenerateUniqueName(self, name):
        names = {n.name for n in self.nodes if isinstance(n, FakeNode)}
        if name not in names:
            return name
        return next(f"{name}_{i}" for i in range(1, 1000) if f"{name}_{i}" not in names)

    def GetFirstNodeByClass(self, class_name):
        return next((n for n in self.nodes if getattr(n, "class_name", "") == class_name), None)

    def GetNodeByID(self, node_id):
        return None


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
        return record


@pytest.fixture
def slicer_env(tmp_path, monkeypatch):
    """Install the stand-ins as the modules ``qt``, ``vtk``, ``slicer``... and import UNetSegmentation."""
    scene = FakeScene()
    calls = Recorder()
    temp = tmp_path / "slicer-temp"
    temp.mkdir()
    exported_volumes = {}

    def exportNode(node, filename, properties={}, world=False):  # noqa: B006 - the reference's signature
        shutil.copyfile(exported_volumes[node.name], filename)
        calls("exportNode")(node, filename)
        return True

    def loadSegmentation(filename, properties={}, returnNode=False):  # noqa: B006
        import slicerio

        segmentation = slicerio.read_segmentation(str(filename))
        segments = {s["id"]: FakeSegment(s["name"], s["color"]) for s in segmentation["segments"]}
        node = FakeSegmentationNode(Path(filename).name, scene, segments, path=filename)
        node.voxels = np.asarray(segmentation["voxels"]).copy()
        return node

    def loadVolume(filename, properties={}, returnNode=False):  # noqa: B006
        node = FakeNode(properties.get("name", Path(filename).name), scene, path=filename)
        node.voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(filename)))
        return node

    util = types.ModuleType("slicer.util")
    util.exportNode = exportNode
    util.loadSegmentation = loadSegmentation
    util.loadVolume = loadVolume
    util.setSliceViewerLayers = calls("setSliceViewerLayers")
    util.pip_install = calls("pip_install")
    util.errorDisplay = calls("errorDisplay")
    util.confirmOkCancelDisplay = lambda text, **kwargs: True
    util.loadUI = lambda path: FakeWidget("root")
    util.childWidgetVariables = lambda widget: fake_ui()
    util.tempDirectory = lambda key="__SlicerTemp__", **kwargs: str(tmp_path / key)

    class VTKObservationMixin:
        def __init__(self):
            self.observers = []

        def addObserver(self, obj, event, method):
            self.observers.append((obj, event, method))
            if event == "ModifiedEvent" and hasattr(obj, "modified"):  # a parameter node
                obj.modified.connect(method)

        def removeObserver(self, obj, event, method):
            self.observers = [o for o in self.observers if o != (obj, event, method)]
            if event == "ModifiedEvent" and hasattr(obj, "modified"):
                obj.modified.slots = [s for s in obj.modified.slots if s != method]

        def removeObservers(self):
            self.observers = []

    util.VTKObservationMixin = VTKObservationMixin

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent or types.SimpleNamespace(isEntered=True)
            self.layout = FakeWidget("layout")

        def setup(self):
            pass

        def resourcePath(self, name):
            return str(MODULE_DIR / "Resources" / name)

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):
            return scene.parameter_node

    class ScriptedLoadableModuleTest:
        pass

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest):
        setattr(scripted, cls.__name__, cls)

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.Choice = lambda choices: ("Choice", tuple(choices))
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)

    def parameterNodeWrapper(cls):
        defaults = {name: getattr(cls, name, None) for name in cls.__annotations__}

        class Wrapped:
            def __init__(self, node):
                object.__setattr__(self, "_values", dict(defaults))
                object.__setattr__(self, "modified", Signal())

            def __getattr__(self, name):
                return self._values[name]

            def __setattr__(self, name, value):
                if name not in self._values:
                    raise AttributeError(f"no parameter {name}")
                self._values[name] = value
                self.modified.emit()

            def connectGui(self, ui):
                return "tag"

            def disconnectGui(self, tag):
                pass

        Wrapped.__name__ = cls.__name__
        return Wrapped

    wrapper.parameterNodeWrapper = parameterNodeWrapper

    slicer = types.ModuleType("slicer")
    slicer.util, slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper = util, scripted, wrapper
    slicer.mrmlScene = scene
    slicer.app = types.SimpleNamespace(temporaryPath=str(temp), processEvents=lambda: None, testingEnabled=lambda: True)
    slicer.vtkMRMLScalarVolumeNode = type("vtkMRMLScalarVolumeNode", (), {})
    slicer.vtkMRMLSegmentationNode = type("vtkMRMLSegmentationNode", (), {})

    class QTimer:
        def __init__(self):
            self.timeout, self.active, self.interval = Signal(), False, 0

        def setInterval(self, ms):
            self.interval = ms

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

    settings = {}
    qt = types.ModuleType("qt")
    qt.QTimer = QTimer
    qt.QLabel = lambda text="": FakeWidget("label")
    qt.QSettings = lambda: types.SimpleNamespace(value=lambda key, default=None: settings.get(key, default), setValue=settings.__setitem__)
    vtk = types.ModuleType("vtk")
    vtk.vtkCommand = types.SimpleNamespace(ModifiedEvent="ModifiedEvent")
    vtk.vtkMatrix4x4 = object

    pytorch_utils = types.ModuleType("PyTorchUtils")
    pytorch_utils.PyTorchUtilsLogic = lambda: types.SimpleNamespace(torchInstalled=lambda: True, installTorch=calls("installTorch"))

    # PythonSlicer on the PATH, as in a Slicer installation
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "PythonSlicer"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    for name, module in {"slicer": slicer, "slicer.util": util, "slicer.ScriptedLoadableModule": scripted,
                         "slicer.parameterNodeWrapper": wrapper, "qt": qt, "vtk": vtk, "PyTorchUtils": pytorch_utils}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    forget_slicer_layer()  # its modules bind ``slicer`` at import: import them again against these stand-ins
    module = importlib.import_module("UNetSegmentation")
    scene.parameter_node = None
    env = types.SimpleNamespace(module=module, slicer=slicer, scene=scene, calls=calls, temp=temp, settings=settings, volumes=exported_volumes)

    def add_volume(name, path):
        node = FakeNode(name, scene)
        node.class_name = "vtkMRMLScalarVolumeNode"
        exported_volumes[name] = path
        return node

    env.add_volume = add_volume
    yield env
    forget_slicer_layer()


def forget_slicer_layer() -> None:
    for name in [n for n in sys.modules if n == "UNetSegmentation" or n.split(".")[0] == "UNetSegmentationSlicer"]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def every_voxel_a(tmp_path_factory):
    from conftest import create_checkpoint

    from UNetSegmentationLib.panel.selftest_support import constant_checkpoint

    folder = tmp_path_factory.mktemp("stub-ckpt")
    untrained = create_checkpoint(folder / "untrained.safetensors", classes="a,b")
    return constant_checkpoint(untrained, folder / "every-voxel-a.safetensors", label_value=1)


def oblique_volume(path: Path) -> Path:
    from test_slicer_run import write_oblique_volume

    write_oblique_volume(path)
    return path


# --- the logic, blocking --------------------------------------------------------------------------------


def test_process_imports_a_named_coloured_segmentation_on_the_input_geometry(slicer_env, every_voxel_a, tmp_path):
    from UNetSegmentationLib.model.header import read_metadata

    volume = slicer_env.add_volume("oblique", oblique_volume(tmp_path / "oblique.nrrd"))
    volume.transform_id = "vtkMRMLLinearTransformNode4"
    logic = slicer_env.module.UNetSegmentationLogic()
    node = logic.process(volume, checkpoint=every_voxel_a, batchSize=2, largestComponent=True, confidenceMap=True, show3D=True, timeoutSec=180)

    assert node.GetName() == "oblique segmentation"
    segmentation = node.GetSegmentation()
    assert [segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName() for i in range(segmentation.GetNumberOfSegments())] == ["a", "b"]
    for info in read_metadata(every_voxel_a).classes:
        assert segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(info.name)).GetColor() == info.color
    assert (node.voxels == 1).all()
    assert node.transform_id == volume.transform_id and node.closed_surface
    assert (node.reference_volume, node.reference_transform) == (volume, volume.transform_id), "the transform is set before the reference geometry"
    assert node.storage in slicer_env.scene.removed, "the storage node of the deleted temporary file must go"
    confidence = next(n for n in slicer_env.scene.nodes if n.name == "oblique segmentation confidence")
    assert confidence.voxels.shape == (10, 28, 32) and confidence.display.window == (0.0, 1.0)
    layers = [c for c in slicer_env.calls.calls if c[0] == "setSliceViewerLayers"]
    assert layers[-1][2]["background"] is volume and layers[-1][2]["foreground"] is confidence
    assert list(slicer_env.temp.iterdir()) == [], "temporary files must be removed"
    assert not [c for c in slicer_env.calls.calls if c[0] in ("pip_install", "installTorch")]


def test_process_replaces_a_chosen_output_node_and_keeps_its_name(slicer_env, every_voxel_a, tmp_path):
    volume = slicer_env.add_volume("v", oblique_volume(tmp_path / "v.nrrd"))
    old = FakeSegmentationNode("my lungs", slicer_env.scene, {})
    node = slicer_env.module.UNetSegmentationLogic().process(volume, outputSegmentation=old, checkpoint=every_voxel_a, timeoutSec=180)
    assert node.GetName() == "my lungs" and old not in slicer_env.scene.nodes and node in slicer_env.scene.nodes


def test_process_raises_with_the_engines_own_message(slicer_env, every_voxel_a, tmp_path):
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(flat))  # a 2D image
    volume = slicer_env.add_volume("flat", flat)
    with pytest.raises(RuntimeError, match=r"Segmentation failed: .*is a 2D image \(8x8\); a 3D volume is needed"):
        slicer_env.module.UNetSegmentationLogic().process(volume, checkpoint=every_voxel_a, timeoutSec=180)
    assert list(slicer_env.temp.iterdir()) == []
    assert not [n for n in slicer_env.scene.nodes if isinstance(n, FakeSegmentationNode)]


def test_missing_packages_are_installed_with_no_deps_after_asking(slicer_env):
    from UNetSegmentationLib.panel.requirements import REQUIREMENTS
    from UNetSegmentationSlicer import dependencies

    installed = {r.module for r in REQUIREMENTS} - {"monai"}
    pip_calls, asked = [], []

    def pip_install(arguments):
        pip_calls.append(arguments)
        installed.add("monai")

    def find_spec(name):
        return object() if name in installed else None

    torch_utils = slicer_env.module.dependencies.pytorch_utils_logic()  # the PyTorch extension's stand-in: torch present
    assert dependencies.ensure_dependencies(confirm=lambda text: asked.append(text) or True, torch_utils=torch_utils, pip_install=pip_install, find_spec=find_spec)
    assert "monai>=1.3" in asked[0] and pip_calls == ["--no-deps monai>=1.3"]
    installed.discard("monai")
    with pytest.raises(RuntimeError, match="declined"):
        dependencies.ensure_dependencies(confirm=lambda text: False, torch_utils=torch_utils, pip_install=pip_install, find_spec=find_spec)
    assert pip_calls == ["--no-deps monai>=1.3"]
    assert dependencies.ensure_dependencies(torch_utils=torch_utils, find_spec=lambda name: object()) is False  # nothing missing: nothing asked


def test_without_the_pytorch_extension_the_user_is_told_to_install_it(slicer_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails
    with pytest.raises(RuntimeError, match="needs the 'PyTorch' extension"):
        slicer_env.module.UNetSegmentationLogic().ensureDependencies()


# --- the widget -------------------------------------------------------------------------------------------


def drive(widget, timeout_s=180):
    deadline = time.monotonic() + timeout_s
    while widget._runTimer.active and time.monotonic() < deadline:
        widget.onRunTimer()
        time.sleep(0.05)


def test_widget_setup_fills_the_panel_and_a_click_segments(slicer_env, every_voxel_a, small_unetpp, tmp_path):
    module = slicer_env.module
    volume = slicer_env.add_volume("CT", oblique_volume(tmp_path / "ct.nrrd"))
    slicer_env.settings[module.LAST_CHECKPOINT_SETTING] = str(every_voxel_a)
    slicer_env.scene.parameter_node = object()
    widget = module.UNetSegmentationWidget()
    widget.setup()
    ui = widget.ui
    parameters = widget._parameterNode

    # defaults: the first volume, the last checkpoint used, the engine's own settings; architecture and depths from its metadata
    assert parameters.inputVolume is volume and parameters.checkpoint == every_voxel_a
    from UNetSegmentationLib.inference.options import DEFAULTS

    assert (parameters.batchSize, parameters.device, parameters.sliceAxis, parameters.largestComponent) == (DEFAULTS.batch_size, DEFAULTS.device, "auto", DEFAULTS.largest_component)
    assert ui.modelInfoLabel.text.startswith("UNet++, 2 segments: a, b")
    assert ui.architectureComboBox.itemData(ui.architectureComboBox.currentIndex) == "unetplusplus" and not ui.architectureComboBox.enabled
    assert [d for _, d in ui.depthComboBox.items] == ["1", "2", "3", "4", "accurate"] and ui.depthComboBox.visible
    assert ui.depthComboBox.itemData(ui.depthComboBox.currentIndex) == "4"
    assert [d for _, d in ui.deviceComboBox.items] == ["auto", "cpu", "cuda"]
    assert not ui.classNamesLineEdit.visible
    assert (ui.applyButton.text, ui.applyButton.enabled) == ("Segment this volume", True)

    # a missing volume disables the button and says why
    parameters.inputVolume = None
    assert not ui.applyButton.enabled and ui.applyButton.toolTip == "Select an input volume."
    parameters.inputVolume = volume

    # the user picks depth 2, then segments
    ui.depthComboBox.currentIndex = 1
    widget.onDepthChanged(1)
    assert parameters.depth == "2"
    widget.onApplyButton()
    assert widget._run.state == "segmenting" and ui.applyButton.text == "Cancel" and ui.applyButton.enabled
    assert not ui.inputsCollapsibleButton.enabled
    assert widget._run.arguments()[widget._run.arguments().index("--depth") + 1] == "2"
    drive(widget)
    assert widget._run.state == "done", widget._run.message
    assert ui.applyButton.text == "Segment this volume" and ui.progressBar.value == 100
    assert ui.statusLabel.text.startswith("Done in ") and "2 segment(s) in 'CT segmentation'" in ui.statusLabel.text
    assert any(line.startswith("Segmenting 10 slices") for line in ui.logTextEdit.lines)
    assert slicer_env.settings[module.LAST_CHECKPOINT_SETTING] == str(every_voxel_a)
    assert parameters.outputSegmentation is None, "the next run must create a new node again"

    # a second run, cancelled while segmenting: no node added, no files left
    nodes_before = list(slicer_env.scene.nodes)
    parameters.checkpoint = small_unetpp
    widget.onApplyButton()
    while widget._run.state == "segmenting" and widget._run.last_progress is None:
        widget.onRunTimer()
        time.sleep(0.02)
    widget.onApplyButton()  # the button says Cancel
    assert widget._run.state == "cancelled" and ui.statusLabel.text == "Cancelled" and ui.progressBar.value == 0
    assert not widget._runTimer.active and slicer_env.scene.nodes == nodes_before
    assert list(slicer_env.temp.iterdir()) == []
    widget.cleanup()


def test_widget_shows_the_reason_of_a_failure(slicer_env, every_voxel_a, tmp_path):
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(flat))
    volume = slicer_env.add_volume("flat", flat)
    slicer_env.scene.parameter_node = object()
    widget = slicer_env.module.UNetSegmentationWidget()
    widget.setup()
    widget._parameterNode.inputVolume = volume
    widget._parameterNode.checkpoint = every_voxel_a
    widget.onParameterNodeModified()
    widget.onApplyButton()
    drive(widget)
    assert widget._run.state == "failed"
    assert widget.ui.statusLabel.text.startswith("Failed: ") and "is a 2D image" in widget.ui.statusLabel.text
    assert widget.ui.applyButton.text == "Segment this volume" and widget.ui.applyButton.enabled


def test_plain_pytorch_checkpoints_ask_for_architecture_and_names(slicer_env, tmp_path):
    plain = tmp_path / "weights.pt"
    plain.write_bytes(b"PK\x03\x04zip")
    volume = slicer_env.add_volume("CT", tmp_path / "unused.nrrd")
    slicer_env.scene.parameter_node = object()
    widget = slicer_env.module.UNetSegmentationWidget()
    widget.setup()
    parameters = widget._parameterNode
    parameters.inputVolume = volume
    parameters.checkpoint = plain
    ui = widget.ui
    assert ui.architectureComboBox.enabled and ui.classNamesLineEdit.visible and not ui.depthComboBox.visible
    assert parameters.architecture == "unet"
    assert not ui.applyButton.enabled and ui.applyButton.toolTip.startswith("Type the segment names")
    parameters.classNames = "liver"
    assert ui.applyButton.enabled

"""Slicer's own libraries for the tests, and the few stand-ins for what they lack: the one place for both.

**Real** (the ``slicer-core`` package, ``pip install slicer-core``; the ``test`` extra installs it):
the MRML scene and its nodes, storage nodes, the application, colour, volumes, segmentations and
terminologies logics, the subject hierarchy, the displayable managers, and Slicer's ``slicer/util.py``.
:func:`mrml` builds a fresh scene with these logics for each test, the way Slicer does at start-up:
the colours logic registered under "Colors", the segmentations logic created (with the scene set)
before any segmentation work, ``slicer.mrmlScene`` set.

**Stand-ins**, for what slicer-core does not have (everything built on Qt): ``qt`` (timers, settings, a
label) and the panel's widgets (read from the ``.ui`` file), the Qt-based ``slicer.util`` dialogs and
UI loaders, ``slicer.app`` (``temporaryPath``, ``processEvents``, ``testingEnabled``),
``slicer.ScriptedLoadableModule``'s base classes, ``slicer.parameterNodeWrapper`` (fields kept in
Python over a real ``vtkMRMLScriptedModuleNode``), and the PyTorch extension's ``PyTorchUtils``.
:func:`slicer_module` installs them and imports ``UNetSegmentation.py``.

A test that needs slicer-core is skipped when it cannot be imported, and fails instead when the
environment variable ``UNETSEG_REQUIRE_MRML=1`` is set (``.ci/run`` sets it).

Test modules take the fixtures by assignment (``mrml = mrml_support.mrml``), since this is not a conftest.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import shutil
import sys
import tempfile
import types
import unittest
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "UNetSegmentation"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "UNetSegmentation.ui"
CHEST_MODEL = Path(__file__).resolve().parent / "Data" / "chest-ct-unetplusplus.safetensors"  # the chest model of rounds 1-2, kept for the tests whose expectations are about it
#: set to 1 (as .ci/run does) to make a missing slicer-core a failure instead of a skip
REQUIRE_MRML_VARIABLE = "UNETSEG_REQUIRE_MRML"

#: the parent linear transform of the "transformed" cases: 0.3 rad about S and a 29 mm shift (4x4, to parent)
PARENT_TRANSFORM = np.array([
    [np.cos(0.3), -np.sin(0.3), 0.0, 25.0],
    [np.sin(0.3), np.cos(0.3), 0.0, -12.0],
    [0.0, 0.0, 1.0, 7.5],
    [0.0, 0.0, 0.0, 1.0],
])


def import_slicer_core():
    """The ``slicer`` package of slicer-core: the test is skipped without it (failed with ``UNETSEG_REQUIRE_MRML=1``)."""
    try:
        import slicer

        slicer.vtkMRMLScene  # noqa: B018 - a package named slicer without MRML is not slicer-core
    except (ImportError, AttributeError) as error:
        message = f"Slicer's libraries (pip install slicer-core) cannot be imported: {error}"
        if os.environ.get(REQUIRE_MRML_VARIABLE) == "1":
            pytest.fail(f"{message} ({REQUIRE_MRML_VARIABLE}=1: the real-MRML tests must run)")
        pytest.skip(message)
    return slicer


def forget_slicer_layer() -> None:
    """Drop the imported Slicer side, which binds ``slicer`` at import: the next import binds the current one."""
    for name in [n for n in sys.modules if n == "UNetSegmentation" or n.split(".")[0] == "UNetSegmentationSlicer"]:
        del sys.modules[name]


# --- real MRML --------------------------------------------------------------------------------------------


@dataclass
class Mrml:
    """A scene with the logics Slicer creates at start-up, and helpers to put test data into it."""

    slicer: Any
    scene: Any
    application_logic: Any
    colors_logic: Any
    volumes_logic: Any
    segmentations_logic: Any
    terminologies_logic: Any

    def layer(self, name: str):
        """``UNetSegmentationSlicer.<name>``, imported against this (real) ``slicer``."""
        return importlib.import_module(f"UNetSegmentationSlicer.{name}")

    def read_volume(self, path: Path, name: str):
        """The volume file read the way Slicer's volume reader does (``vtkSlicerVolumesLogic.AddArchetypeVolume``)."""
        node = self.volumes_logic.AddArchetypeVolume(str(path), name, 0)
        assert node is not None, f"Slicer could not read {path}"
        return node

    def volume_from_array(self, array: np.ndarray, ijk_to_ras: np.ndarray, name: str):
        """A scalar volume node holding ``array`` ([k, j, i]) on the ``ijk_to_ras`` grid (``slicer.util.addVolumeFromArray``)."""
        return self.slicer.util.addVolumeFromArray(array, ijkToRAS=np.asarray(ijk_to_ras, dtype=float), name=name)

    def put_under_transform(self, node, matrix: np.ndarray):
        """Put ``node`` under a new linear transform whose matrix to parent is ``matrix`` (4x4); returns the transform node."""
        transform = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", f"{node.GetName()} transform")
        transform.SetMatrixTransformToParent(self.layer("inspection").matrix_from_array(matrix))
        node.SetAndObserveTransformNodeID(transform.GetID())
        return transform

    def put_in_study(self, volume_node) -> Tuple[Any, int]:
        """Put ``volume_node`` in a new patient's study of the subject hierarchy (as a DICOM load does); ``(hierarchy, study item)``."""
        hierarchy = self.slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient")
        study = hierarchy.CreateStudyItem(patient, "study")
        hierarchy.CreateItem(study, volume_node)
        return hierarchy, study

    def add_slice_views(self) -> List[Any]:
        """Red, yellow and green slice views (slice logics with their slice and composite nodes), as Slicer's layout makes."""
        logics = []
        for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
            logic = self.slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self.application_logic)
            logic.SetMRMLScene(self.scene)
            logic.AddSliceNode(name).SetOrientation(orientation)
            self.application_logic.GetSliceLogics().AddItem(logic)
            logics.append(logic)
        return logics

    def foreground_ids(self) -> List[Optional[str]]:
        """The foreground volume ID of every slice view."""
        scene = self.scene
        return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").GetForegroundVolumeID() for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


def build_mrml(slicer, home: Path) -> Mrml:
    """A new scene and the logics, in the order Slicer needs them; sets ``slicer.mrmlScene`` (callers
    restore it). ``home`` stands for Slicer's installation folder (an empty colour-file folder is made there)."""
    import vtk

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    (home / "share" / "Slicer" / "ColorFiles").mkdir(parents=True, exist_ok=True)  # slicer-core ships no colour files
    application.SetHomeDirectory(str(home))
    application.SetShareDirectory("share/Slicer")
    application.SetSliceLogics(vtk.vtkCollection())
    application.SetViewLogics(vtk.vtkCollection())

    def module_logic(cls, name: Optional[str] = None):
        logic = cls()
        logic.SetMRMLApplicationLogic(application)
        logic.SetMRMLScene(scene)
        if name:
            application.SetModuleLogic(name, logic)
        return logic

    colors = module_logic(slicer.vtkSlicerColorLogic, "Colors")  # volumes find their default colour table through it
    volumes = module_logic(slicer.vtkSlicerVolumesLogic, "Volumes")
    segmentations = module_logic(slicer.vtkSlicerSegmentationsModuleLogic, "Segmentations")  # registers the representation converters
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()  # no scene: it would look for the .term.json files slicer-core lacks
    return Mrml(slicer, scene, application, colors, volumes, segmentations, terminologies)


@pytest.fixture
def mrml(monkeypatch, tmp_path) -> Mrml:
    """A fresh real MRML scene with Slicer's logics, as ``slicer.mrmlScene``; the Slicer side imported against it."""
    slicer = import_slicer_core()
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    monkeypatch.setattr(slicer, "mrmlScene", None, raising=False)  # restored after the test
    forget_slicer_layer()
    built = build_mrml(slicer, tmp_path / "slicer-home")
    yield built
    forget_slicer_layer()
    built.scene.Clear(1)


def chest_ct(mrml: Mrml, transformed: bool = False):
    """The slicerio chest CT (128x128x34, 3.05x3.05x10 mm), read as Slicer reads it; under PARENT_TRANSFORM if asked."""
    import slicerio

    volume = mrml.read_volume(Path(slicerio.get_testdata_file("CTChest4.nrrd")), "CTChest4")
    if transformed:
        mrml.put_under_transform(volume, PARENT_TRANSFORM)
    return volume


def chest_segment_editor(mrml: Mrml, segment_id: str):
    """The chest CT, slicerio's segmentation of it placed on it, and a Segment Editor parameter set node
    on both selecting SEGMENT_ID: (volume, segmentation, editor_node)."""
    import slicerio

    volume = chest_ct(mrml)
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CT segmentation")
    mrml.layer("scene").read_segmentation(Path(slicerio.get_testdata_file("Segmentation.seg.nrrd")), segmentation)
    mrml.layer("scene").place_on_volume(segmentation, volume)
    editor_node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor_node.SetAndObserveSegmentationNode(segmentation)
    editor_node.SetAndObserveSourceVolumeNode(volume)
    editor_node.SetSelectedSegmentID(segment_id)
    return volume, segmentation, editor_node


def oblique_volume(mrml: Mrml, transformed: bool = False):
    """The self-test's oblique (rotated on three axes), anisotropic (0.8x1.1x3.5 mm) CT-like volume, 32x28x10."""
    from UNetSegmentationLib.panel.selftest_support import oblique_ijk_to_ras, sample_volume_array

    volume = mrml.volume_from_array(sample_volume_array((10, 28, 32)), oblique_ijk_to_ras(), "oblique")
    if transformed:
        mrml.put_under_transform(volume, PARENT_TRANSFORM)
    return volume


#: the test volumes by name
VOLUMES = {"chest CT": chest_ct, "oblique": oblique_volume}


# --- the module's run on real MRML, with the engine as a child process -------------------------------


_model_copies: Dict[Path, Path] = {}


def _model_copy(model: Path) -> Path:
    """``model`` with its shipped ONNX export, copied once per process into a temporary folder: an export
    the engine caches beside the checkpoint goes there, never into the repository."""
    if model not in _model_copies:
        folder = Path(tempfile.mkdtemp(prefix=f"unetseg-{model.stem}-"))
        atexit.register(shutil.rmtree, folder, True)
        for path in model.parent.iterdir():
            if path == model or (path.name.startswith(model.stem + ".") and path.name.endswith(".shipped.onnx")):
                shutil.copy2(path, folder / path.name)
        _model_copies[model] = folder / model.name
    return _model_copies[model]


def chest_model_copy() -> Path:
    """A copy of the chest model (the bundled model of rounds 1-2, now a test fixture), see :func:`_model_copy`."""
    return _model_copy(CHEST_MODEL)


def bundled_model_copy() -> Path:
    """A copy of today's bundled model (the many-organ CT model), see :func:`_model_copy`."""
    from UNetSegmentationLib.model.bundled import bundled_model_path

    return _model_copy(bundled_model_path())


@dataclass
class Segmented:
    """What :func:`segment` gives: the node, the run, and the labels the engine wrote ([k, j, i])."""

    node: Any
    run: Any
    engine_labels: np.ndarray
    confidence: Optional[np.ndarray] = None


def segment(mrml: Mrml, volume_node, checkpoint: Optional[Path] = None, output_node=None, confidence_map: bool = False,
            metadata=None, show_3d: bool = False, precision: str = "fp32", temp_root: Optional[Path] = None, spacing: str = "model") -> Segmented:
    """The module logic's steps (``UNetSegmentationLogic.process``) on real MRML: the volume exported by
    ``scene.export_volume``, ``unetseg predict`` run by :class:`SegmentationRun` in a child process,
    the result imported by ``scene.import_result``. ``checkpoint`` defaults to :func:`chest_model_copy`;
    ``precision="fp32"`` runs ONNX Runtime (no torch import in the child: about a second)."""
    import slicerio
    import SimpleITK as sitk

    from UNetSegmentationLib.inference.options import SegmentationOptions
    from UNetSegmentationLib.model.header import read_metadata
    from UNetSegmentationLib.panel import run as run_states
    from UNetSegmentationLib.panel.run import RunOptions, SegmentationRun

    scene = mrml.layer("scene")
    checkpoint = Path(checkpoint) if checkpoint is not None else chest_model_copy()
    options = RunOptions(checkpoint, SegmentationOptions(precision=precision, spacing=spacing), confidence_map=confidence_map)
    run = SegmentationRun(options, python=sys.executable, temp_root=temp_root)
    scene.export_volume(volume_node, run.begin_exporting())
    run.start_segmenting()
    assert run.wait(timeout_s=300) == run_states.IMPORTING, run.message
    voxels = np.asarray(slicerio.read_segmentation(str(run.output_path))["voxels"])  # [i, j, k]
    confidence = sitk.GetArrayFromImage(sitk.ReadImage(str(run.confidence_path))) if confidence_map else None
    metadata = metadata if metadata is not None else read_metadata(checkpoint)
    node = scene.import_result(run, volume_node, output_node, metadata, show_3d=show_3d)
    run.finish()
    return Segmented(node, run, voxels.transpose(2, 1, 0), confidence)


# --- stand-ins for what slicer-core lacks (Qt and what is built on it) -------------------------------


class Signal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def emit(self, *args):
        for slot in self.slots:
            slot(*args)


class FakeWidget:
    """Any Qt widget: properties are plain attributes, signals connect by name, other calls do nothing."""

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


class FakeList(FakeWidget):
    """A QListWidget: its entries' texts and the current row; choosing a row emits ``currentRowChanged(int)``."""

    def __init__(self, name=""):
        super().__init__(name, "QListWidget")
        self.items, self.currentRow = [], -1

    def addItem(self, text):
        self.items.append(text)

    def clear(self):
        self.items, self.currentRow = [], -1

    def setCurrentRow(self, row):
        self.currentRow = row

    def choose(self, row):
        self.currentRow = row
        for slot in self.connections.get("currentRowChanged(int)", []):
            slot(row)


#: stand-ins by Qt class (any other class: :class:`FakeWidget`)
FAKE_CLASSES = {"QComboBox": FakeComboBox, "QPlainTextEdit": FakeLog, "QListWidget": FakeList}


def fake_ui():
    """One stand-in per widget of the panel's ``.ui`` file, by its object name."""
    widgets = {}
    for element in ElementTree.parse(UI_FILE).getroot().iter("widget"):
        name, class_name = element.get("name"), element.get("class")
        widget = FAKE_CLASSES[class_name](name) if class_name in FAKE_CLASSES else FakeWidget(name, class_name)
        widgets[name] = widget
    return types.SimpleNamespace(**widgets)


class QTimer:
    def __init__(self):
        self.timeout, self.active, self.interval = Signal(), False, 0

    def setInterval(self, ms):
        self.interval = ms

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def parameter_node_wrapper(cls):
    """``@parameterNodeWrapper``: typed fields with defaults, kept in Python over the real parameter node
    (setting one modifies the node, whose observers then run, as in Slicer)."""
    defaults = {name: getattr(cls, name, None) for name in cls.__annotations__}

    class Wrapped:
        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)
            if not hasattr(node, "_wrapped_values"):  # kept on the node itself (VTK keeps a live node's Python attributes):
                node._wrapped_values = dict(defaults)  # a new scene's parameter node starts from the defaults, as in Slicer
            object.__setattr__(self, "_values", node._wrapped_values)

        def __getattr__(self, name):
            try:
                value = self._values[name]
            except KeyError:
                raise AttributeError(name) from None
            if hasattr(value, "GetScene") and value.GetScene() is None:
                return None  # a reference to a node removed from the scene (a closed scene) reads None, as in Slicer
            return value

        def __setattr__(self, name, value):
            if name not in self._values:
                raise AttributeError(f"no parameter {name}")
            self._values[name] = value
            self.parameterNode.Modified()

        def AddObserver(self, event, callback, priority=0.0):
            return self.parameterNode.AddObserver(event, callback, priority)

        def RemoveObserver(self, tag):
            self.parameterNode.RemoveObserver(tag)

        def connectGui(self, ui):
            return "gui"

        def disconnectGui(self, tag):
            pass

    Wrapped.__name__ = cls.__name__
    return Wrapped


@dataclass
class SlicerModule:
    """``UNetSegmentation.py`` imported on real MRML with the stand-ins; what the tests look at."""

    module: Any
    mrml: Mrml
    temp: Path
    settings: dict
    errors: List[str]
    pip_calls: List[str]


@pytest.fixture
def slicer_module(mrml, monkeypatch, tmp_path) -> SlicerModule:
    """Install the stand-ins (Qt, ``slicer.app``, ScriptedLoadableModule, parameterNodeWrapper, the
    Qt-based ``slicer.util`` calls, PyTorchUtils, ``PythonSlicer`` on the PATH) and import the module."""
    slicer = mrml.slicer
    temp = tmp_path / "slicer-temp"
    temp.mkdir()
    settings, errors, pip_calls = {}, [], []

    qt = types.ModuleType("qt")
    qt.QTimer = QTimer
    qt.QLabel = lambda text="": FakeWidget("label")
    qt.QSettings = lambda: types.SimpleNamespace(value=lambda key, default=None: settings.get(key, default), setValue=settings.__setitem__)

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
            node = mrml.scene.GetSingletonNode("UNetSegmentation", "vtkMRMLScriptedModuleNode")
            if node is None:
                node = mrml.slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag("UNetSegmentation")
                node.SetName("UNetSegmentation")
                node = mrml.scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, autoCloseMsec=1000):
            logging.info(message)

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest):
        setattr(scripted, cls.__name__, cls)
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.Choice = lambda choices: ("Choice", tuple(choices))
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
    wrapper.parameterNodeWrapper = parameter_node_wrapper
    pytorch_utils = types.ModuleType("PyTorchUtils")
    pytorch_utils.PyTorchUtilsLogic = lambda: types.SimpleNamespace(torchInstalled=lambda: True, installTorch=lambda **kwargs: pytest.fail("torch is installed"))

    for name, value in {"ScriptedLoadableModule": scripted, "parameterNodeWrapper": wrapper,
                        "app": types.SimpleNamespace(temporaryPath=str(temp), processEvents=lambda: None, testingEnabled=lambda: True,
                                                     slicerUserSettingsFilePath=str(tmp_path / "settings" / "Slicer.ini"))}.items():
        monkeypatch.setattr(slicer, name, value, raising=False)
    for name, value in {"loadUI": lambda path: FakeWidget("root"), "childWidgetVariables": lambda widget: fake_ui(),
                        "errorDisplay": lambda text, **kwargs: errors.append(text), "confirmOkCancelDisplay": lambda text, **kwargs: True,
                        "pip_install": pip_calls.append}.items():
        monkeypatch.setattr(slicer.util, name, value)
    for name, module in {"qt": qt, "slicer.ScriptedLoadableModule": scripted, "slicer.parameterNodeWrapper": wrapper, "PyTorchUtils": pytorch_utils}.items():
        monkeypatch.setitem(sys.modules, name, module)

    bin_dir = tmp_path / "bin"  # PythonSlicer on the PATH, as in a Slicer installation
    bin_dir.mkdir()
    launcher = bin_dir / "PythonSlicer"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return SlicerModule(importlib.import_module("UNetSegmentation"), mrml, temp, settings, errors, pip_calls)

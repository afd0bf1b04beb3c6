"""The "UNet refine" Segment Editor effect's Qt part (``UNetSegmentationSlicer/refine_effect.py``), checked
without Slicer's Qt: it is a scripted effect as Slicer loads one, it uses only the effect API written
down in ``slicer_facts.FACTS``, the module registers it at start-up (only where the engine can run), its
icon is in the repository, and it stays thin: mouse presses become clicks, everything else is the
controller's (``test_mrml_refine_controller.py``) and the scene logic's (``test_mrml_refine_effect.py``).
The press-to-click translation is run, with stand-ins for Qt and Segment Editor's base class.
"""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import pytest

import mrml_support
from slicer_facts import FACTS

mrml = mrml_support.mrml
MODULE_DIR = mrml_support.MODULE_DIR
EFFECT_FILE = MODULE_DIR / "UNetSegmentationSlicer" / "refine_effect.py"
ICON = MODULE_DIR / "Resources" / "Icons" / "UNetRefine.png"
#: the methods Slicer calls on a scripted effect that this one implements
EFFECT_METHODS = {"clone", "icon", "helpText", "setupOptionsFrame", "setMRMLDefaults", "activate", "deactivate", "updateGUIFromMRML",
                  "processInteractionEvents"}
#: the scriptedEffect API it uses (each written down in FACTS under the name given here)
EFFECT_API = {"saveStateForUndo": "saveStateForUndo", "modifySegmentByLabelmap": "modifySegmentByLabelmap",
              "parameterSetNode": "parameterSetNode", "addOptionsWidget": "addOptionsWidget", "setParameterDefault": "setParameterDefault",
              "integerParameter": "setParameterDefault", "setParameter": "setParameterDefault"}


def effect_tree() -> ast.Module:
    return ast.parse(EFFECT_FILE.read_text(encoding="utf-8"), filename=str(EFFECT_FILE), feature_version=(3, 9))


def effect_class() -> ast.ClassDef:
    return next(n for n in effect_tree().body if isinstance(n, ast.ClassDef) and n.name == "SegmentEditorEffect")


def test_it_is_a_scripted_effect_as_slicer_loads_one():
    cls = effect_class()
    assert [ast.unparse(b) for b in cls.bases] == ["AbstractScriptedSegmentEditorEffect"]
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    assert EFFECT_METHODS <= set(methods)
    init = [ast.unparse(s) for s in methods["__init__"].body]
    assert init[:4] == ["scriptedEffect.name = EFFECT_NAME", "scriptedEffect.perSegment = True", "scriptedEffect.requireSegments = True",
                        "AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)"], "the effect says what it is before the base class reads it"
    clone = ast.unparse(methods["clone"])
    assert "qSlicerSegmentEditorScriptedEffect(None)" in clone and "setPythonSource(__file__" in clone
    assert [ast.unparse(a) for a in methods["processInteractionEvents"].args.args] == ["self", "callerInteractor", "eventId", "viewWidget"]
    assert "AbstractScriptedSegmentEditorEffect" in FACTS and "qSlicerSegmentEditorScriptedEffect" in FACTS


def test_it_uses_only_the_effect_api_written_down():
    used = set()
    for node in ast.walk(effect_tree()):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) in ("self.scriptedEffect", "scriptedEffect"):
            used.add(node.attr)
    used -= {"name", "perSegment", "requireSegments"}
    assert {"saveStateForUndo", "modifySegmentByLabelmap", "parameterSetNode", "addOptionsWidget"} <= used
    assert used <= set(EFFECT_API), f"effect API not written down in slicer_facts.FACTS: {sorted(used - set(EFFECT_API))}"
    assert all(EFFECT_API[name] in FACTS for name in used)


def test_every_connected_slot_is_a_method_of_the_effect():
    cls = effect_class()
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    slots = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect" and len(node.args) == 2:
            slots.add(ast.unparse(node.args[1]))
    slots |= {ast.unparse(el.elts[2]) for el in ast.walk(cls) if isinstance(el, ast.Tuple) and len(el.elts) == 3 and ast.unparse(el.elts[2]).startswith("self.on")}
    assert {"self.onTimer", "self.onApply", "self.onCancel", "self.onUndo", "self.onPropagate", "self.onPropagateToggled"} <= slots
    assert {slot.split(".", 1)[1] for slot in slots if slot.startswith("self.")} <= methods


def test_the_qt_part_stays_thin():
    """No scene edit and no engine request in the effect itself: those are the controller's and the logic's."""
    source = EFFECT_FILE.read_text(encoding="utf-8")
    for name in ("ModifySegmentByLabelmap", "SetBinaryLabelmapToSegment", "ExportSegmentsToLabelmapNode", "submit(", "numpy", "np."):
        assert name not in source.replace("import numpy as np", ""), f"{name} in the effect: it belongs to refine_logic or refine_controller"
    assert len(source.splitlines()) <= 260


def test_the_module_registers_the_effect_at_start_up_where_the_engine_can_run():
    module = ast.parse((MODULE_DIR / "UNetSegmentation.py").read_text(encoding="utf-8"))
    module_class = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "UNetSegmentation")
    init = next(n for n in module_class.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    guards = [n for n in ast.walk(init) if isinstance(n, ast.If) and ast.unparse(n.test) == "sys.version_info >= MINIMUM_PYTHON"]
    assert len(guards) == 1, "Slicer 5.8 (Python 3.9) shows its message; the effect is registered only where the engine runs"
    registration = ast.unparse(guards[0].body[0])
    assert registration.startswith("slicer.app.connect('startupCompleted()'") and "UNetSegmentationSlicer.refine_effect" in registration
    assert "register_effect" in registration and "startupCompleted" in FACTS
    register = next(n for n in effect_tree().body if isinstance(n, ast.FunctionDef) and n.name == "register_effect")
    calls = [ast.unparse(n.func) for n in ast.walk(register) if isinstance(n, ast.Call)]
    assert {"effects.qSlicerSegmentEditorScriptedEffect", "instance.setPythonSource", "instance.self().register"} <= set(calls)


def test_the_icon_is_in_the_repository_and_drawn_by_a_script():
    assert ICON.is_file() and ICON.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources", "Icons", "UNetRefine.png")' in EFFECT_FILE.read_text(encoding="utf-8")
    assert (mrml_support.REPO / "Resources" / "Tools" / "make_refine_icon.py").is_file()


# --- the press-to-click translation, run with stand-ins ---------------------------------------------------


class Recorder:
    def __init__(self):
        self.clicks = []
        self.busy, self.can_apply, self.message = False, False, ""
        self.client = types.SimpleNamespace(opened=False)

    def click(self, ras, positive):
        self.clicks.append((tuple(round(v, 6) for v in ras), positive))
        return True


class Interactor:
    def __init__(self, shift=False):
        self.shift = shift

    def GetEventPosition(self):
        return (10, 20)

    def GetShiftKey(self):
        return self.shift


@pytest.fixture
def effect(mrml, monkeypatch):
    """The effect class loaded with stand-ins for Qt and Segment Editor's base class (real slicer-core and vtk)."""
    import vtk

    qt = types.ModuleType("qt")
    effects = types.ModuleType("SegmentEditorEffects")

    class AbstractScriptedSegmentEditorEffect:
        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

    effects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "SegmentEditorEffects", effects)
    module = mrml.layer("refine_effect")
    instance = module.SegmentEditorEffect(types.SimpleNamespace())
    instance.controller = Recorder()
    xy_to_ras = vtk.vtkMatrix4x4()
    xy_to_ras.SetElement(0, 3, 100.0)  # x + 100, y - 50
    xy_to_ras.SetElement(1, 3, -50.0)
    slice_view = types.SimpleNamespace(className=lambda: "qMRMLSliceWidget",
                                       sliceLogic=lambda: types.SimpleNamespace(GetSliceNode=lambda: types.SimpleNamespace(GetXYToRAS=lambda: xy_to_ras)))
    return instance, slice_view, vtk


@pytest.mark.mrml
def test_a_press_in_a_slice_view_becomes_a_click_at_its_ras_point(effect):
    instance, slice_view, vtk = effect
    assert instance.scriptedEffect.name == "UNet refine" and instance.scriptedEffect.perSegment
    assert instance.processInteractionEvents(Interactor(), vtk.vtkCommand.LeftButtonPressEvent, slice_view) is True
    assert instance.processInteractionEvents(Interactor(shift=True), vtk.vtkCommand.LeftButtonPressEvent, slice_view) is True
    assert instance.processInteractionEvents(Interactor(), vtk.vtkCommand.RightButtonPressEvent, slice_view) is True
    assert instance.controller.clicks == [((110.0, -30.0, 0.0), True), ((110.0, -30.0, 0.0), False), ((110.0, -30.0, 0.0), False)]


@pytest.mark.mrml
def test_other_events_and_views_are_left_to_slicer(effect):
    instance, slice_view, vtk = effect
    assert instance.processInteractionEvents(Interactor(), vtk.vtkCommand.MouseMoveEvent, slice_view) is False
    view_3d = types.SimpleNamespace(className=lambda: "qMRMLThreeDWidget")
    assert instance.processInteractionEvents(Interactor(), vtk.vtkCommand.LeftButtonPressEvent, view_3d) is False
    instance.controller = None
    assert instance.processInteractionEvents(Interactor(), vtk.vtkCommand.LeftButtonPressEvent, slice_view) is False

"""The 3D Slicer API the Slicer layer relies on, for the tests: read from slicer-core, or written down here.

The tests need nothing outside the repository. Where Slicer's own code is installed they check against
it: slicer-core (the ``test`` extra) ships Slicer's ``slicer/util.py`` and its MRML and segmentation
classes, and :func:`slicer_util_definitions` reads the functions and classes of that ``slicer/util.py``
with :mod:`ast` (nothing of it is run). What slicer-core does not ship — the parts of Slicer built on
Qt (``ScriptedLoadableModule``, ``parameterNodeWrapper``), the ``PythonSlicer`` launcher, and the
PyTorch extension — is stated in :data:`FACTS`: one line per name the Slicer layer uses, saying where
Slicer defines it and what the module counts on. These lines are this project's own summary of Slicer's
documented API (Slicer 5.10 and later); no Slicer source is copied here.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Dict, Tuple, Union

from mrml_support import import_slicer_core

Definition = Union[ast.FunctionDef, ast.ClassDef]

#: name the Slicer layer uses → where Slicer defines it and what the module counts on (not in slicer-core)
FACTS: Dict[str, str] = {
    "ScriptedLoadableModuleTest": "slicer.ScriptedLoadableModule: base class of a scripted module's self-test; "
                                  "the class must be named <ModuleName>Test (Developer Tools → Self Tests, ctest py_<ModuleName>)",
    "delayDisplay": "ScriptedLoadableModuleTest.delayDisplay(message, msec=1000): shows a step of the self-test and lets Slicer draw",
    "resourcePath": "ScriptedLoadableModuleWidget.resourcePath(filename): the path of filename under the module's Resources/ folder",
    "getParameterNode": "ScriptedLoadableModuleLogic.getParameterNode(): the module's parameter node, wrapped by the "
                        "parameterNodeWrapper class the logic was constructed with",
    "parameterNodeWrapper": "slicer.parameterNodeWrapper.parameterNodeWrapper: class decorator giving typed, annotated fields "
                            "stored in a vtkMRMLScriptedModuleNode (Slicer 5.2 and later)",
    "WithinRange": "slicer.parameterNodeWrapper.WithinRange(minimum, maximum): validator for typing.Annotated fields",
    "Choice": "slicer.parameterNodeWrapper.Choice(choices): validator for typing.Annotated fields",
    "connectGui": "a parameterNodeWrapper instance's connectGui(widget): binds each child widget whose SlicerParameterName "
                  "property names a field; disconnectGui(tag) undoes it",
    "PyTorchUtilsLogic": "PyTorchUtils.PyTorchUtilsLogic: the logic of the PyTorch extension (EXTENSION_DEPENDS PyTorch); "
                         "importable only when that extension is installed",
    "torchInstalled": "PyTorchUtilsLogic.torchInstalled() (static): whether torch is installed, without importing it",
    "installTorch": "PyTorchUtilsLogic.installTorch(askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None, "
                    "torchvisionVersionRequirement=None): installs the torch build for the machine's GPU; the torch module, or None",
    "PythonSlicer": "the interpreter beside the Slicer launcher (shutil.which('PythonSlicer')): Slicer's Python and its "
                    "site-packages, for background scripts",
    # the Segment Editor's scripted effects (Modules/Loadable/Segmentations/EditorEffects; Qt-based, not in slicer-core)
    "startupCompleted": "qSlicerApplication's signal startupCompleted(), emitted once every module is loaded: where scripted "
                        "effects are registered",
    "qSlicerSegmentEditorScriptedEffect": "qSlicerSegmentationsEditorEffectsPythonQt.qSlicerSegmentEditorScriptedEffect(parent): the "
                                          "C++ adaptor of a Python effect; setPythonSource(path) loads the file's SegmentEditorEffect class, "
                                          "self() is that Python object, whose register() adds it to qSlicerSegmentEditorEffectFactory",
    "AbstractScriptedSegmentEditorEffect": "SegmentEditorEffects.AbstractScriptedSegmentEditorEffect: base class of a scripted effect; "
                                           "__init__(scriptedEffect) after setting scriptedEffect.name, perSegment, requireSegments; Slicer "
                                           "calls clone, icon, helpText, setupOptionsFrame, setMRMLDefaults, activate, deactivate, "
                                           "updateGUIFromMRML and processInteractionEvents(callerInteractor, eventId, viewWidget) -> bool "
                                           "(True: the event is consumed)",
    "saveStateForUndo": "scriptedEffect.saveStateForUndo(): Segment Editor's undo state of the segmentation, before an edit",
    "modifySegmentByLabelmap": "scriptedEffect.modifySegmentByLabelmap(segmentationNode, segmentID, labelmap, "
                               "qSlicerSegmentEditorAbstractEffect.ModificationModeAdd|Remove|Set): an edit with the widget's "
                               "masking (editable area, intensity range) and overwrite settings",
    "parameterSetNode": "scriptedEffect.parameterSetNode(): the vtkMRMLSegmentEditorNode of the Segment Editor widget",
    "addOptionsWidget": "scriptedEffect.addOptionsWidget(widget): the effect's options under its buttons",
    "setParameterDefault": "scriptedEffect.setParameterDefault(name, value), integerParameter(name), setParameter(name, value): "
                           "effect parameters kept in the parameter set node",
}

#: top-level Python packages a binary 3D Slicer (5.10 and later) ships in its own Python, besides the standard library
SLICER_PYTHON_PACKAGES: Tuple[str, ...] = ("slicer", "qt", "ctk", "vtk", "vtkmodules", "PythonQt", "sitkUtils", "numpy", "SimpleITK",
                                           "scipy", "requests",
                                           # the Segment Editor's scripted-effect base (Slicer's Modules/Loadable/Segmentations/EditorEffects/Python)
                                           # and its wrapped C++ effect classes, in every Slicer with the Segmentations module
                                           "SegmentEditorEffects", "qSlicerSegmentationsEditorEffectsPythonQt")
#: what the PyTorch extension (EXTENSION_DEPENDS PyTorch) brings: its module, and torch once it has installed it
PYTORCH_EXTENSION_PACKAGES: Tuple[str, ...] = ("PyTorchUtils", "torch")

#: the keyword arguments of PyTorchUtilsLogic.installTorch (Slicer's PyTorch extension)
INSTALL_TORCH_KEYWORDS: Tuple[str, ...] = ("askConfirmation", "forceComputationBackend", "torchVersionRequirement",
                                           "torchvisionVersionRequirement")


def slicer_util_path() -> Path:
    """slicer-core's ``slicer/util.py``: Slicer's own file (the test is skipped without slicer-core, failed with UNETSEG_REQUIRE_MRML=1)."""
    import_slicer_core()
    return Path(importlib.util.find_spec("slicer.util").origin)


def slicer_util_definitions() -> Dict[str, Definition]:
    """The module-level functions and classes of Slicer's ``slicer/util.py``, by name, as parsed (never run)."""
    tree = ast.parse(slicer_util_path().read_text(encoding="utf-8"))
    return {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def accepts_keyword(definition: Definition, keyword: str) -> bool:
    """Whether a call to ``definition`` may pass ``keyword=`` (a class is called through its ``__init__``)."""
    if isinstance(definition, ast.ClassDef):
        initialisers = [n for n in definition.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
        if not initialisers:
            return False
        definition = initialisers[0]
    arguments = definition.args
    named = [a.arg for a in arguments.args + arguments.kwonlyargs]  # positional-only ones cannot be passed by name
    return keyword in named or arguments.kwarg is not None

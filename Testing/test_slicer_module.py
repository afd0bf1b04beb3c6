"""Static checks of the Slicer layer, which cannot run here (3D Slicer is not installed).

- the CMake SCRIPTS/RESOURCES lists name existing files and cover every file of the module;
- every ``self.ui.<name>`` exists in the .ui, every widget class there is a known Qt/CTK/MRML class,
  and every ``SlicerParameterName`` binding fits a parameter of the right type;
- ``UNetSegmentation.py`` (and every module it loads) parses as Python 3.9 and imports nothing heavy at
  module level or in ``setup()`` (directly or through the Lib and ``UNetSegmentationSlicer`` modules it
  imports); it stays the Slicer wiring (at most 550 lines);
- every ``slicer.util`` and segmentation API name the Slicer layer (the module file and
  ``UNetSegmentationSlicer``) uses is defined in Slicer's own code that slicer-core installs (``slicer/util.py``
  with the keyword arguments passed, the MRML classes), and every other Slicer fact it relies on is one of
  those written down in ``Testing/slicer_facts.py``: nothing outside the repository is read;
- the catalogue entry ``UNetSegmentation.json`` has exactly the allowed fields and matches CMake.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "UNetSegmentation"
MODULE_FILE = MODULE_DIR / "UNetSegmentation.py"
SLICER_PACKAGE = MODULE_DIR / "UNetSegmentationSlicer"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "UNetSegmentation.ui"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
TOP_CMAKE = REPO / "CMakeLists.txt"
CATALOGUE = REPO / "UNetSegmentation.json"

HEAVY_MODULES = ("torch", "monai", "numpy", "SimpleITK", "safetensors", "slicerio", "nrrd", "scipy")
#: extensions of files that must be installed with the module
INSTALLED_EXTENSIONS = (".py", ".ui", ".png", ".json", ".safetensors", ".md")

#: widget classes the .ui may use: plain Qt plus the CTK/MRML widgets Slicer provides
KNOWN_WIDGET_CLASSES = {
    # Qt
    "QWidget", "QLabel", "QPushButton", "QToolButton", "QComboBox", "QCheckBox", "QRadioButton",
    "QSpinBox", "QDoubleSpinBox", "QLineEdit", "QPlainTextEdit", "QTextEdit", "QTextBrowser",
    "QProgressBar", "QGroupBox", "QFrame", "QSlider", "QTabWidget", "QScrollArea", "QSplitter", "QListWidget",
    # CTK
    "ctkCollapsibleButton", "ctkCollapsibleGroupBox", "ctkPathLineEdit", "ctkSliderWidget",
    "ctkRangeWidget", "ctkCheckBox", "ctkComboBox", "ctkMenuButton", "ctkDirectoryButton",
    # MRML
    "qMRMLWidget", "qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget", "qMRMLSubjectHierarchyComboBox",
}
KNOWN_LAYOUT_CLASSES = {"QVBoxLayout", "QHBoxLayout", "QFormLayout", "QGridLayout"}


def module_source() -> str:
    return MODULE_FILE.read_text(encoding="utf-8")


def module_tree() -> ast.Module:
    return ast.parse(module_source(), filename=str(MODULE_FILE))


def slicer_layer_files() -> list:
    """The module file and the files of its Slicer-side package: everything that may call Slicer."""
    return [MODULE_FILE] + sorted(SLICER_PACKAGE.glob("*.py"))


def slicer_layer_source() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in slicer_layer_files())


def slicer_layer_trees() -> list:
    return [ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for path in slicer_layer_files()]


def class_node(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found in {MODULE_FILE.name}")


# --- CMake ----------------------------------------------------------------------------------------


def cmake_list(text: str, variable: str) -> list:
    match = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    items = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    return [item.replace("${MODULE_NAME}", "UNetSegmentation") for item in items if item]


def test_cmake_lists_name_existing_files_and_cover_every_module_file():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    listed = scripts + resources
    assert len(set(listed)) == len(listed), "a file is listed twice"
    missing = [item for item in listed if not (MODULE_DIR / item).is_file()]
    assert not missing, f"listed in {MODULE_CMAKE.relative_to(REPO)} but missing (CMake configuration fails): {missing}"
    assert all(item.endswith(".py") for item in scripts), "SCRIPTS must hold only .py files"
    assert not any(item.endswith(".py") for item in resources), ".py files go to SCRIPTS"

    present = []
    for path in MODULE_DIR.rglob("*"):
        relative = path.relative_to(MODULE_DIR)
        if not path.is_file() or "__pycache__" in relative.parts or relative.parts[0] == "Testing":
            continue
        if any(part.endswith(".egg-info") for part in relative.parts):
            continue
        if path.name.endswith(INSTALLED_EXTENSIONS):
            present.append(relative.as_posix())
    unlisted = sorted(set(present) - set(listed))
    assert not unlisted, f"files of the module not listed in {MODULE_CMAKE.relative_to(REPO)} (missing after install): {unlisted}"


def test_module_cmake_builds_the_scripted_module_with_tests():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    assert re.search(r"set\(MODULE_NAME\s+UNetSegmentation\)", text)
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}\s+SCRIPTS \$\{MODULE_PYTHON_SCRIPTS\}\s+RESOURCES \$\{MODULE_PYTHON_RESOURCES\}\s+WITH_GENERIC_TESTS\s*\)", text)
    testing = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", text, re.S)
    assert testing, "if(BUILD_TESTING) ... endif() missing"
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing.group(1)
    assert "add_subdirectory(Testing)" in testing.group(1)
    assert "add_subdirectory(Python)" in (MODULE_DIR / "Testing" / "CMakeLists.txt").read_text()
    python_tests = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text()
    assert "slicer_add_python_unittest(" in python_tests and "${MODULE_NAME}.py" in python_tests
    assert "TESTNAME_PREFIX" in python_tests, "a second registration of the same script needs its own test name"


def top_cmake_settings() -> dict:
    text = TOP_CMAKE.read_text(encoding="utf-8")
    return {name: value for name, value in re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text)}


def test_top_level_cmake_describes_the_extension():
    text = TOP_CMAKE.read_text(encoding="utf-8")
    assert "cmake_minimum_required(VERSION 3.16.3...3.19.7" in text
    assert re.search(r"^project\(UNetSegmentation\)", text, re.M)
    settings = top_cmake_settings()
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert settings.get(name), f"{name} missing or empty"
    assert settings["EXTENSION_HOMEPAGE"] == "https://github.com/unetsegmentation/SlicerUNetSegmentation"
    assert settings["EXTENSION_CATEGORY"] == "Segmentation"
    assert settings["EXTENSION_DEPENDS"] == "PyTorch"
    order = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(UNetSegmentation)",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(item) for item in order]
    assert -1 not in positions and positions == sorted(positions), f"expected in this order: {order}"


def test_icon_and_screenshot_urls_point_at_files_of_this_repository():
    settings = top_cmake_settings()
    raw = "https://raw.githubusercontent.com/unetsegmentation/SlicerUNetSegmentation/main/"
    urls = [settings["EXTENSION_ICONURL"]] + settings["EXTENSION_SCREENSHOTURLS"].split()
    for url in urls:
        assert url.startswith(raw), url
        assert (REPO / url[len(raw):]).is_file(), f"{url} names a file that is not in the repository"
    for icon in (REPO / "Resources" / "Icons" / "UNetSegmentation.png", MODULE_DIR / "Resources" / "Icons" / "UNetSegmentation.png"):
        assert png_size(icon) == (128, 128), icon


def png_size(path: Path) -> tuple:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# --- catalogue entry --------------------------------------------------------------------------------


def test_catalogue_entry_has_exactly_the_allowed_fields_and_matches_cmake():
    entry = json.loads(CATALOGUE.read_text(encoding="utf-8"))
    allowed = {"$schema", "category", "scm_url", "scm_revision", "build_dependencies", "tier"}
    assert set(entry) <= allowed, f"fields the catalogue schema does not allow: {sorted(set(entry) - allowed)}"
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["$schema"] == "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
    project = re.search(r"^project\((\w+)\)", TOP_CMAKE.read_text(encoding="utf-8"), re.M).group(1)
    assert CATALOGUE.stem == project
    settings = top_cmake_settings()
    assert entry["category"] == settings["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == settings["EXTENSION_DEPENDS"].split(";")
    assert entry["scm_url"].rstrip("/").removesuffix(".git") == settings["EXTENSION_HOMEPAGE"]
    assert entry.get("tier", 1) in (1, 3, 5)
    assert (REPO / "LICENSE").is_file()


# --- .ui and widgets ----------------------------------------------------------------------------------


def ui_widgets() -> dict:
    root = ElementTree.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def test_every_widget_the_code_uses_exists_in_the_ui():
    names = set(ui_widgets())
    used = set(re.findall(r"\bui\.(\w+)", slicer_layer_source()))
    assert used, "the module uses no widget?"
    assert not sorted(used - names), f"self.ui.<name> used but not in {UI_FILE.name}: {sorted(used - names)}"


def test_every_widget_class_in_the_ui_is_a_known_qt_ctk_or_mrml_class():
    root = ElementTree.parse(UI_FILE).getroot()
    classes = {w.get("class") for w in root.iter("widget")}
    assert not classes - KNOWN_WIDGET_CLASSES, f"unknown widget classes: {sorted(classes - KNOWN_WIDGET_CLASSES)}"
    layouts = {layout.get("class") for layout in root.iter("layout")}
    assert layouts <= KNOWN_LAYOUT_CLASSES, layouts
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    custom = {c for c in classes if not c.startswith("Q")}
    assert custom <= declared, f"custom widgets used but not declared in <customwidgets>: {sorted(custom - declared)}"
    assert declared <= KNOWN_WIDGET_CLASSES
    assert root.find("widget").get("class") == "qMRMLWidget", "the root must be a qMRMLWidget to pass the scene on"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"


def parameter_fields() -> dict:
    """name → annotation source of the @parameterNodeWrapper class."""
    tree = module_tree()
    wrapped = [n for n in tree.body if isinstance(n, ast.ClassDef) and any(ast.unparse(d) == "parameterNodeWrapper" for d in n.decorator_list)]
    assert len(wrapped) == 1, "exactly one @parameterNodeWrapper class expected"
    return {n.target.id: ast.unparse(n.annotation) for n in wrapped[0].body if isinstance(n, ast.AnnAssign)}


def test_parameter_bindings_in_the_ui_fit_the_parameter_types():
    """connectGui raises at run time for a binding no GUI connector supports: check them here."""
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = (widget, prop.findtext("string"))
    assert bound, "no widget is bound to the parameter node"
    for widget_name, (widget, parameter) in bound.items():
        widget_class = widget.get("class")
        assert parameter in fields, f"{widget_name} is bound to {parameter!r}, which is not a parameter"
        annotation = fields[parameter]
        if widget_class == "QCheckBox":
            assert annotation == "bool", (widget_name, annotation)
        elif widget_class == "QSpinBox":
            assert re.fullmatch(r"(Annotated\[)?int(, WithinRange\(.*\)\])?", annotation), (widget_name, annotation)
        elif widget_class == "QComboBox":
            assert annotation.startswith("Annotated[str") and "Choice(" in annotation, f"{widget_name}: a QComboBox binds only to a Choice-annotated value"
        elif widget_class == "QLineEdit":
            assert annotation == "str", (widget_name, annotation)
        elif widget_class == "ctkPathLineEdit":
            assert annotation in ("pathlib.Path", "Path"), (widget_name, annotation)
        elif widget_class == "qMRMLNodeComboBox":
            node_types = [s.text for p in widget.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
            assert annotation.startswith("vtkMRML") and annotation in node_types, (widget_name, annotation, node_types)
        else:
            raise AssertionError(f"{widget_name}: no parameter connector for {widget_class}")


# --- the module file -----------------------------------------------------------------------------------


def test_module_parses_as_python_3_9():
    tree = ast.parse(module_source(), filename=str(MODULE_FILE), feature_version=(3, 9))
    # "X | Y" parses under 3.9 but fails at run time when annotations are evaluated
    annotations = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations += [a.annotation for a in node.args.args + node.args.kwonlyargs if a.annotation is not None]
            if node.returns is not None:
                annotations.append(node.returns)
    for annotation in annotations:
        for inner in ast.walk(annotation):
            assert not (isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.BitOr)), f"X | Y annotation at line {inner.lineno}"
    assert "from __future__ import annotations" not in module_source(), "parameterNodeWrapper needs evaluated annotations"


def imports_in(statements, descend_functions: bool) -> set:
    """Modules imported by ``statements`` (not inside nested functions/classes unless asked)."""
    found = set()
    stack = list(statements)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)) and not descend_functions:
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def is_heavy(module: str) -> bool:
    return module.split(".")[0] in HEAVY_MODULES


def methods_reached_from(cls: ast.ClassDef, start: str) -> list:
    """Methods of ``cls`` that ``start`` calls as ``self.<method>(...)``, transitively (slots it only connects run later)."""
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    reached, todo = [], [start]
    while todo:
        name = todo.pop()
        if name in reached or name not in methods:
            continue
        reached.append(name)
        for node in ast.walk(methods[name]):
            function = node.func if isinstance(node, ast.Call) else None
            if isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name) and function.value.id == "self" and function.attr in methods:
                todo.append(function.attr)
    return [methods[name] for name in reached]


#: imports UNetSegmentation.py with stand-ins for qt, vtk and slicer (any attribute is a class that
#: accepts anything) and prints the modules it loaded
LOAD_WITH_STAND_INS = """
import json, sys, types
class Anything:
    def __init__(self, *args, **kwargs): pass
class StandIn(types.ModuleType):
    __path__ = []
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (Anything,), {})
for name in ("qt", "vtk", "slicer", "slicer.util", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"):
    sys.modules[name] = StandIn(name)
sys.path.insert(0, sys.argv[1])
import UNetSegmentation
print(json.dumps(sorted(sys.modules)))
"""


@pytest.fixture(scope="module")
def modules_loaded_with_the_module() -> list:
    result = subprocess.run([sys.executable, "-c", LOAD_WITH_STAND_INS, str(MODULE_DIR)], capture_output=True, text=True, cwd=str(MODULE_DIR))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_loading_the_module_imports_nothing_heavy(modules_loaded_with_the_module):
    heavy = [m for m in modules_loaded_with_the_module if is_heavy(m)]
    assert not heavy, f"loading UNetSegmentation.py imports {heavy}"
    assert "UNetSegmentationSlicer.parameters" in modules_loaded_with_the_module


def test_every_module_the_module_loads_parses_as_python_3_9(modules_loaded_with_the_module):
    """Slicer 5.8 (Python 3.9) loads the module at start-up: a 3.10-only syntax anywhere in what it loads
    would replace the "needs Slicer 5.10" message with a SyntaxError."""
    ours = [m for m in modules_loaded_with_the_module if m.split(".")[0] in ("UNetSegmentationLib", "UNetSegmentationSlicer")]
    assert {"UNetSegmentationSlicer.parameters", "UNetSegmentationLib.panel.run", "UNetSegmentationLib.panel.checkpoints"} <= set(ours)
    for name in ours:
        path = MODULE_DIR / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def test_nothing_heavy_is_imported_in_setup():
    widget = class_node(module_tree(), "UNetSegmentationWidget")
    reached = methods_reached_from(widget, "setup")
    assert {"setup", "initializeParameterNode", "onParameterNodeModified", "_showView"} <= {m.name for m in reached}
    in_setup = imports_in(reached, descend_functions=True)
    assert not [m for m in in_setup if is_heavy(m)], f"heavy imports reached from setup(): {[m for m in in_setup if is_heavy(m)]}"
    assert_light_imports(sorted(m for m in in_setup if m.startswith("UNetSegmentationLib")))


def test_the_slicer_layer_imports_nothing_heavy_at_module_level():
    for path, tree in zip(slicer_layer_files(), slicer_layer_trees()):
        top_level = imports_in([n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))], descend_functions=False)
        assert not [m for m in top_level if is_heavy(m)], f"{path.name}: heavy imports at module level: {[m for m in top_level if is_heavy(m)]}"


def test_every_lib_module_the_slicer_layer_imports_is_light():
    """Whatever the Slicer layer imports from the Lib (anywhere) must not pull torch, numpy or SimpleITK into Slicer's GUI process."""
    everywhere = set().union(*(imports_in(tree.body, descend_functions=True) for tree in slicer_layer_trees()))
    lib_modules = sorted(m for m in everywhere if m.startswith("UNetSegmentationLib"))
    assert "UNetSegmentationLib.panel.run" in lib_modules and "UNetSegmentationLib.panel.checkpoints" in lib_modules
    assert_light_imports(lib_modules)


def test_the_module_file_stays_the_slicer_wiring():
    lines = len(module_source().splitlines())
    assert lines <= 550, f"UNetSegmentation.py has {lines} lines: move what is not Slicer wiring into UNetSegmentationSlicer"


def assert_light_imports(modules) -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(HEAVY_MODULES)!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(MODULE_DIR))
    assert result.returncode == 0, result.stderr
    heavy = json.loads(result.stdout.strip().splitlines()[-1])
    assert not heavy, f"importing {modules} loads {heavy}"


def text_value(node: ast.expr):
    """A literal, or a ``texts.NAME`` of ``UNetSegmentationSlicer/texts.py`` (the help texts live there)."""
    if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "texts":
        texts = ast.parse((SLICER_PACKAGE / "texts.py").read_text(encoding="utf-8"))
        return next(ast.literal_eval(n.value) for n in texts.body if isinstance(n, ast.Assign) and n.targets[0].id == node.attr)
    return ast.literal_eval(node)


def test_module_metadata_and_classes():
    tree = module_tree()
    module_class = class_node(tree, "UNetSegmentation")
    init = next(n for n in module_class.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assigned = {}
    for node in ast.walk(init):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute) and ast.unparse(node.targets[0].value) == "self.parent":
            assigned[node.targets[0].attr] = text_value(node.value)
    assert assigned["title"] == "UNet Segmentation"
    assert assigned["categories"] == ["Segmentation"]
    assert assigned["contributors"] and all(isinstance(c, str) and c for c in assigned["contributors"])
    assert "Segment this volume" in assigned["helpText"] and "Cancel" in assigned["helpText"]
    assert assigned["acknowledgementText"].strip()
    bases = {cls: [ast.unparse(b) for b in class_node(tree, cls).bases] for cls in ("UNetSegmentationWidget", "UNetSegmentationLogic", "UNetSegmentationTest")}
    assert "ScriptedLoadableModuleWidget" in bases["UNetSegmentationWidget"]
    assert bases["UNetSegmentationLogic"] == ["ScriptedLoadableModuleLogic"]
    assert bases["UNetSegmentationTest"] == ["ScriptedLoadableModuleTest"]
    test_methods = {n.name for n in class_node(tree, "UNetSegmentationTest").body if isinstance(n, ast.FunctionDef)}
    assert {"setUp", "runTest", "test_ObliqueVolume", "test_BundledModelOnSampleCT"} <= test_methods
    logic_methods = {n.name for n in class_node(tree, "UNetSegmentationLogic").body if isinstance(n, ast.FunctionDef)}
    assert {"process", "ensureDependencies", "startRun", "importResult"} <= logic_methods


@pytest.mark.child_process
def test_setup_opens_no_dialog_and_starts_no_process():
    """WITH_GENERIC_TESTS calls setup(): no dialog, no network, no dependency installation there."""
    widget = class_node(module_tree(), "UNetSegmentationWidget")
    source = "\n".join(ast.unparse(m) for m in methods_reached_from(widget, "setup"))
    for forbidden in ("confirmOkCancelDisplay", "pip_install", "installTorch", "ensureDependencies", "DeviceProbe(", "exportNode", "Popen", "subprocess"):
        assert forbidden not in source, f"{forbidden} is reached from setup()"


# --- the Slicer API it uses, against Slicer's own code (slicer-core) and Testing/slicer_facts.py -------


#: method names of the segmentation API (checked against slicer-core's classes when the module calls them)
SEGMENTATION_API = re.compile(r"(Segment|Segmentation|ReferenceImageGeometry|Labelmap|ClosedSurface|Terminology)")


def slicer_util_calls() -> list:
    """``(name, keywords)`` of every use of a ``slicer.util`` name in the Slicer layer (a plain reference has no keywords)."""
    uses = [(name, ()) for name in re.findall(r"slicer\.util\.(\w+)", slicer_layer_source())]
    for node in (n for tree in slicer_layer_trees() for n in ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and node.module == "slicer.util":
            uses += [(alias.name, ()) for alias in node.names]
        if isinstance(node, ast.Call) and ast.unparse(node.func).startswith("slicer.util."):
            uses.append((ast.unparse(node.func).rpartition(".")[2], tuple(k.arg for k in node.keywords if k.arg)))
    return uses


@pytest.mark.mrml
def test_every_slicer_util_name_and_keyword_is_in_slicers_own_util():
    from slicer_facts import accepts_keyword, slicer_util_definitions

    definitions = slicer_util_definitions()
    uses = slicer_util_calls()
    assert {"loadUI", "errorDisplay", "pip_install", "VTKObservationMixin"} <= {name for name, _ in uses}
    missing = sorted({name for name, _ in uses if name not in definitions})
    assert not missing, f"slicer.util names not defined in Slicer's slicer/util.py (slicer-core): {missing}"
    refused = sorted({f"{name}({keyword}=)" for name, keywords in uses for keyword in keywords if not accepts_keyword(definitions[name], keyword)})
    assert not refused, f"keyword arguments slicer/util.py does not take: {refused}"


@pytest.mark.mrml
def test_every_segmentation_api_name_is_a_method_of_slicers_classes():
    from mrml_support import import_slicer_core

    called = set()
    for node in (n for tree in slicer_layer_trees() for n in ast.walk(tree)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            called.add(node.func.attr)
    segmentation_calls = {name for name in called if SEGMENTATION_API.search(name) and name[0].isupper()}
    assert {"SetReferenceImageGeometryParameterFromVolumeNode", "GetSegmentation"} <= segmentation_calls
    slicer = import_slicer_core()
    classes = [getattr(slicer, name) for name in dir(slicer) if name.startswith("vtk")]
    missing = sorted(name for name in segmentation_calls if not any(hasattr(cls, name) for cls in classes))
    assert not missing, f"segmentation API names that none of Slicer's classes (slicer-core) has: {missing}"


def test_other_slicer_facts_used_are_written_down():
    from slicer_facts import FACTS, INSTALL_TORCH_KEYWORDS

    source = slicer_layer_source()
    used = [name for name in FACTS if name in source]
    assert {"PyTorchUtilsLogic", "installTorch", "ScriptedLoadableModuleTest"} <= set(used)
    # the Slicer-provided names the layer calls on objects Slicer hands it, beyond slicer.util and MRML, are all stated in FACTS
    for name in ("parameterNodeWrapper", "connectGui", "WithinRange", "Choice", "resourcePath", "getParameterNode", "PythonSlicer", "torchInstalled",
                 "delayDisplay"):
        if name in source:
            assert name in FACTS, name
    # installTorch is called only with keyword arguments the PyTorch extension takes
    for call in re.findall(r"installTorch\(([^)]*)\)", source):
        for keyword in re.findall(r"(\w+)=", call):
            assert keyword in INSTALL_TORCH_KEYWORDS, keyword


def test_dependencies_are_installed_without_replacing_slicers_packages():
    references = [path.name for path, tree in zip(slicer_layer_files(), slicer_layer_trees()) for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and ast.unparse(node) == "slicer.util.pip_install"]
    assert references == ["dependencies.py"], "pip is reached through UNetSegmentationSlicer.dependencies only"
    tree = ast.parse((SLICER_PACKAGE / "dependencies.py").read_text(encoding="utf-8"))
    install_calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and ast.unparse(node.func) == "install"]
    assert [ast.unparse(call.args[0]) for call in install_calls] == ["pip_install_arguments(requirements)"]
    from UNetSegmentationLib.panel.requirements import REQUIREMENTS, pip_install_arguments

    arguments = pip_install_arguments(REQUIREMENTS).split(" ")
    assert arguments[0] == "--no-deps"
    assert not [a for a in arguments if re.split(r"[<>=!~]", a)[0].lower() in ("numpy", "simpleitk", "vtk", "torch")]

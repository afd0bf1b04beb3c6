"""The engine's shape, checked from its source by ``bench/import_graph.py``: no import cycle between
files or between concept folders, no Slicer/Qt/VTK in the engine, files and functions of modest size,
and a Slicer module file ``UNetSegmentation.py`` that stays the Slicer wiring (at most 550 lines).

The checker reads the files with :mod:`ast` (nothing is imported); its own behaviour is checked on
small synthetic packages, so a passing run means "no cycle" rather than "nothing was read".
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "import_graph.py"
#: folders whose functions are held to the 80-line limit here (the others are reported by the script)
FUNCTION_LIMITED_FOLDERS = ("UNetSegmentationLib/networks/", "UNetSegmentationLib/model/")
#: the Slicer module file's limit (issue 22): what is not Slicer wiring lives in UNetSegmentationSlicer or the engine's panel
MODULE_FILE_LIMIT = 550


def _load_checker():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


import_graph = _load_checker()


@pytest.fixture(scope="module")
def report():
    return import_graph.build_report()


def run_checker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def write_package(root: Path, files: dict) -> Path:
    """Files ``{"UNetSegmentationLib/a.py": "source"}`` under ``root`` (``__init__.py`` added to every folder)."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for folder in {p.parent for p in root.rglob("*.py")}:
        if folder != root:
            (folder / "__init__.py").touch()
    return root


# --- the engine as it is --------------------------------------------------------------------------


def test_the_checker_reads_every_engine_file(report):
    engine_files = {p.relative_to(ROOT / "UNetSegmentation").as_posix() for p in (ROOT / "UNetSegmentation" / "UNetSegmentationLib").rglob("*.py")}
    assert engine_files <= set(report.modules.values())
    assert report.unparsable == []
    assert any(i.target == "UNetSegmentationLib.networks.unet" and i.kind == "dynamic" for i in report.imports)  # the registry's lazy classes


def test_the_engine_has_no_import_cycle_between_files_or_folders():
    result = run_checker("--max-file-lines", "100000", "--max-module-lines", "100000")  # sizes have tests of their own below
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_engine_never_imports_slicer_qt_or_vtk(report):
    assert report.slicer_imports == []


def test_no_engine_file_is_over_450_lines(report):
    assert report.long_files == {}, "split these files: " + ", ".join(f"{path} ({lines} lines)" for path, lines in report.long_files.items())


def test_the_slicer_module_file_is_at_most_550_lines(report):
    lines = len((ROOT / "UNetSegmentation" / "UNetSegmentation.py").read_text(encoding="utf-8").splitlines())
    assert report.long_module_files == {}, f"UNetSegmentation.py has {lines} lines: move what is not Slicer wiring into UNetSegmentationSlicer"
    assert lines <= MODULE_FILE_LIMIT


def test_the_checker_exits_1_when_the_module_file_or_an_engine_file_is_too_long():
    assert run_checker("--max-module-lines", "10").returncode == 1
    assert run_checker("--max-module-lines", "100000", "--max-file-lines", "10").returncode == 1


def test_functions_of_networks_and_model_are_at_most_80_lines(report):
    long = {where: lines for where, lines in report.long_functions.items() if where.startswith(FUNCTION_LIMITED_FOLDERS)}
    assert long == {}


# --- the checker itself ---------------------------------------------------------------------------


def test_a_cycle_through_a_lazy_from_package_import_module_is_found(tmp_path):
    source = write_package(tmp_path, {
        "UNetSegmentationLib/a/first.py": "from UNetSegmentationLib.b import second\n",
        "UNetSegmentationLib/b/second.py": "def later():\n    from ..a import first  # lazy and relative\n    return first\n",
    })
    report = import_graph.build_report(source=source)
    assert report.file_cycles == [["UNetSegmentationLib.a.first", "UNetSegmentationLib.b.second", "UNetSegmentationLib.a.first"]]
    assert report.folder_cycles == [["UNetSegmentationLib/a", "UNetSegmentationLib/b", "UNetSegmentationLib/a"]]
    result = run_checker("--source", str(source))
    assert result.returncode == 1 and "UNetSegmentationLib.a.first → UNetSegmentationLib.b.second" in result.stdout
    assert "UNetSegmentationLib/b/second.py:2 (lazy)" in result.stdout


def test_a_folder_cycle_without_a_file_cycle_is_found(tmp_path):
    source = write_package(tmp_path, {
        "UNetSegmentationLib/a/first.py": "import UNetSegmentationLib.b.second\n",
        "UNetSegmentationLib/b/second.py": "x = 1\n",
        "UNetSegmentationLib/b/third.py": "from UNetSegmentationLib.a.fourth import y\n",
        "UNetSegmentationLib/a/fourth.py": "y = 2\n",
    })
    report = import_graph.build_report(source=source)
    assert report.file_cycles == [] and report.folder_cycles == [["UNetSegmentationLib/a", "UNetSegmentationLib/b", "UNetSegmentationLib/a"]]


def test_type_checking_imports_and_package_root_files_make_no_cycle(tmp_path):
    source = write_package(tmp_path, {
        "UNetSegmentationLib/errors.py": "class UserError(Exception):\n    pass\n",
        "UNetSegmentationLib/__main__.py": "from UNetSegmentationLib.a.first import main\n",
        "UNetSegmentationLib/a/first.py": "from UNetSegmentationLib.errors import UserError\nfrom UNetSegmentationLib.b import second\ndef main():\n    pass\n",
        "UNetSegmentationLib/b/second.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from UNetSegmentationLib.a.first import main\n",
    })
    report = import_graph.build_report(source=source)
    assert report.file_cycles == [] and report.folder_cycles == [] and not report.failed
    assert any(i.kind == "type_checking" and i.target == "UNetSegmentationLib.a.first" for i in report.imports)
    assert run_checker("--source", str(source)).returncode == 0


def test_slicer_imports_long_files_and_long_functions_are_reported(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(85))
    source = write_package(tmp_path, {
        "UNetSegmentationLib/a/gui.py": "def show():\n    import slicer\n    from qt import QWidget\n",
        "UNetSegmentationLib/a/long.py": "def long():\n" + body + "\n" * 400,
        "UNetSegmentationSlicer/widgets.py": "import slicer\nimport vtk\n",  # the Slicer side may
        "UNetSegmentation.py": "import slicer\n" + "\n" * 560,
    })
    report = import_graph.build_report(source=source)
    assert report.long_module_files == {"UNetSegmentation.py": 561}
    assert report.slicer_imports == ["UNetSegmentationLib/a/gui.py:2 imports slicer", "UNetSegmentationLib/a/gui.py:3 imports qt"]
    assert report.long_files == {"UNetSegmentationLib/a/long.py": 486}
    assert report.long_functions == {"UNetSegmentationLib/a/long.py:1 long": 86}
    assert report.failed and run_checker("--source", str(source)).returncode == 1

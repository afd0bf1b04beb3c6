"""A downloaded 3D Slicer loads the module from ``UNetSegmentation/`` alone (issue 22, defect 9).

The README's first route into Slicer needs no build: *Additional module paths* points at the
repository's ``UNetSegmentation/`` folder, and the panel installs the engine's dependencies into
Slicer's Python on first use. What can be checked without Slicer:

- the folder is self-contained: every package its Python files import is the standard library (of
  Slicer's Python 3.12 too: nothing removed there), part of the folder, shipped with Slicer's Python,
  brought by the PyTorch extension, or installed by the panel (``panel/requirements.py``); the optional
  extras the panel does not install (plots, cluster, DICOM) are imported only inside the functions that
  use them (``Testing/test_slicer_module.py`` checks that the module parses as Python 3.9);
- a copy of the folder alone, as Slicer would put it on ``sys.path``, imports every engine module from
  the copy and runs ``unetseg info`` on the bundled model it holds;
- ``UNetSegmentation/CMakeLists.txt`` installs every resource file of the folder (the build route), and
  its lists are what ``Resources/Tools/cmake_lists.py`` writes from the folder's files;
- the README gives the binary route before the build route, and its Python-console line installs
  exactly the panel's requirements with ``--no-deps``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Dict, List, Set

import pytest

from slicer_facts import PYTORCH_EXTENSION_PACKAGES, SLICER_PYTHON_PACKAGES
from support import read_pyproject
from UNetSegmentationLib.panel.requirements import REQUIREMENTS, pip_install_arguments

REPOSITORY = Path(__file__).resolve().parent.parent
MODULE_FOLDER = REPOSITORY / "UNetSegmentation"
README = REPOSITORY / "README.md"


def module_folder_files() -> List[Path]:
    """The files of ``UNetSegmentation/`` as a clone has them (tracked and new, not ignored ones)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", "--", "UNetSegmentation"], cwd=REPOSITORY,
                            capture_output=True, check=True).stdout
    return [REPOSITORY / name for name in filter(None, listed.decode().split("\0")) if (REPOSITORY / name).is_file()]


def top_level_imports(tree: ast.Module) -> Dict[str, List[int]]:
    """Absolute imports by top-level package → lines, wherever they are written (lazy ones included)."""
    found: Dict[str, List[int]] = {}
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            found.setdefault(name.split(".")[0], []).append(node.lineno)
    return found


def local_packages() -> Set[str]:
    return {p.stem if p.suffix == ".py" else p.name for p in MODULE_FOLDER.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}


def optional_extra_packages() -> Set[str]:
    """The top-level packages of the engine's optional extras (pyproject.toml), less the test extra."""
    extras = read_pyproject()["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~;\[ ]", requirement)[0] for extra, requirements in extras.items() if extra != "test" for requirement in requirements}
    return {name.replace("-", "_") for name in names if not name.startswith("UNetSegmentationLib")}


# --- self-contained for Additional module paths ------------------------------------------------------------


def test_every_import_of_the_module_folder_is_there_in_a_binary_slicer_once_the_panel_has_installed_its_requirements():
    provided = set(sys.stdlib_module_names) | local_packages() | set(SLICER_PYTHON_PACKAGES) | set(PYTORCH_EXTENSION_PACKAGES)
    provided |= {requirement.module.split(".")[0] for requirement in REQUIREMENTS} | optional_extra_packages()
    unknown = {}
    for path in MODULE_FOLDER.rglob("*.py"):
        for package, lines in top_level_imports(ast.parse(path.read_text(encoding="utf-8"))).items():
            if package not in provided:
                unknown[f"{path.relative_to(REPOSITORY)}:{lines[0]}"] = package
    assert {"UNetSegmentationLib", "UNetSegmentationSlicer"} <= local_packages()
    assert not unknown, f"imports that neither Slicer, the PyTorch extension nor the panel's installation provide: {unknown}"


#: standard-library modules that Python 3.12 (Slicer 5.10's Python) and 3.13 no longer have (PEP 594, PEP 632, imp)
REMOVED_FROM_THE_STANDARD_LIBRARY = ("distutils", "imp", "asynchat", "asyncore", "smtpd", "aifc", "audioop", "cgi", "cgitb", "chunk",
                                     "crypt", "imghdr", "mailcap", "msilib", "nis", "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd",
                                     "sunau", "telnetlib", "uu", "xdrlib", "lib2to3")


def test_nothing_imports_a_standard_module_that_slicers_python_no_longer_has():
    removed = [f"{path.relative_to(REPOSITORY)}:{lines[0]} {package}" for path in MODULE_FOLDER.rglob("*.py")
               for package, lines in top_level_imports(ast.parse(path.read_text(encoding="utf-8"))).items()
               if package in REMOVED_FROM_THE_STANDARD_LIBRARY]
    assert not removed, f"gone from Python 3.12/3.13, which Slicer ships: {removed}"


def test_the_optional_extras_the_panel_does_not_install_are_imported_only_inside_functions():
    installed_by_panel = {requirement.module.split(".")[0] for requirement in REQUIREMENTS}
    optional = optional_extra_packages() - installed_by_panel - set(SLICER_PYTHON_PACKAGES)
    assert {"matplotlib", "ray", "highdicom", "pydicom"} <= optional
    at_module_level = []
    for path in MODULE_FOLDER.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        body = [node for statement in tree.body if not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                for node in ast.walk(statement)]
        body += [node for cls in tree.body if isinstance(cls, ast.ClassDef) for statement in cls.body
                 if not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in ast.walk(statement)]
        for package, lines in top_level_imports(ast.Module(body=[n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])).items():
            if package in optional:
                at_module_level.append(f"{path.relative_to(REPOSITORY)}:{lines[0]} {package}")
    assert not at_module_level, "importing these modules fails in a Slicer without the extra: " + ", ".join(at_module_level)


@pytest.mark.slow
@pytest.mark.child_process
def test_a_copy_of_the_module_folder_alone_imports_and_runs_the_engine(tmp_path):
    module_path = tmp_path / "Additional module path" / "UNetSegmentation"
    for source in module_folder_files():
        target = module_path / source.relative_to(MODULE_FOLDER)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    probe = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        sys.path.insert(0, {str(module_path)!r})  # what Slicer does with an additional module path
        import UNetSegmentationLib
        from UNetSegmentationLib.model.bundled import bundled_model_path
        names = [m.name for m in pkgutil.walk_packages(UNetSegmentationLib.__path__, "UNetSegmentationLib.")]
        outside = [n for n in names if not importlib.import_module(n).__file__.startswith({str(module_path)!r})]
        assert len(names) > 50 and not outside, outside
        assert str(bundled_model_path()).startswith({str(module_path)!r}) and bundled_model_path().is_file()
        print(bundled_model_path())
    """)
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "UNETSEG_CACHE_DIR": str(tmp_path / "cache")}
    imported = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr[-3000:]
    bundled = imported.stdout.strip()
    info = subprocess.run([sys.executable, "-m", "UNetSegmentationLib", "info", bundled], cwd=tmp_path, capture_output=True, text=True,
                          env={**environment, "PYTHONPATH": str(module_path)}, timeout=300)  # the runner's child: PYTHONPATH = the module folder
    assert info.returncode == 0, info.stderr[-3000:]
    assert "unetplusplus" in info.stdout.lower()


# --- the build route: CMake installs every resource --------------------------------------------------------


def test_the_cmake_lists_are_the_ones_the_tool_writes_from_the_module_folder():
    checked = subprocess.run([sys.executable, str(REPOSITORY / "Resources" / "Tools" / "cmake_lists.py"), "--check"], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_cmake_installs_every_resource_of_the_module_folder():
    cmake = (MODULE_FOLDER / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = re.search(r"set\(MODULE_PYTHON_RESOURCES\n(.*?)\n\s*\)", cmake, re.S).group(1).replace("${MODULE_NAME}", "UNetSegmentation").split()
    resources = {p.relative_to(MODULE_FOLDER).as_posix() for p in module_folder_files() if p.relative_to(MODULE_FOLDER).parts[0] == "Resources"}
    assert resources and set(listed) == resources


# --- the README ---------------------------------------------------------------------------------------------


def slicer_section() -> str:
    return README.read_text(encoding="utf-8").split("\n## In 3D Slicer", 1)[1].split("\n## ", 1)[0]


def test_the_readme_gives_the_route_into_a_downloaded_slicer_before_the_build():
    section = slicer_section()
    binary, build = section.index("### Install into a downloaded 3D Slicer"), section.index("### Developers: build the extension package")
    assert binary < build < len(section)
    steps = section[binary:build]
    assert "Additional module paths" in steps and "PyTorch" in steps
    folder = re.search(r"add the folder\s+`SlicerUNetSegmentation/([^`]+)`", steps).group(1)
    assert (REPOSITORY / folder / "UNetSegmentation.py").is_file()


def test_the_readme_console_line_installs_the_panels_requirements_without_deps():
    line = re.search(r"```python\n(.*?)\n\s*```", slicer_section(), re.S).group(1).strip()
    calls = []
    fake_slicer = types.SimpleNamespace(util=types.SimpleNamespace(pip_install=calls.append))
    exec(line, {"slicer": fake_slicer})  # as typed into Slicer's Python console, where `slicer` is defined
    assert calls == [pip_install_arguments(REQUIREMENTS)] and calls[0].startswith("--no-deps ")

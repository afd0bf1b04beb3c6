"""PyTorch and the Python packages the engine needs, installed into Slicer's Python on first use.

PyTorch comes from the PyTorch extension (``PyTorchUtils``), which picks the build for the machine's
GPU; the other packages are installed with ``slicer.util.pip_install`` and ``--no-deps``, so pip never
replaces Slicer's own numpy, SimpleITK or VTK (the list of packages and the pip arguments are decided
in :mod:`UNetSegmentationLib.panel.requirements`). Nothing is installed without ``confirm`` saying yes,
and nothing here runs at import time or in the widget's ``setup()``.

The seams (``torch_utils``, ``pip_install``, ``find_spec``) let tests stand in for the extension,
pip and the import system.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, List, Optional, Tuple

import slicer

from UNetSegmentationLib.panel.requirements import (
    TORCH_VERSION_REQUIREMENT,
    Requirement,
    install_confirmation_text,
    missing_requirements,
    pip_install_arguments,
)

FindSpec = Callable[[str], object]
DECLINED = "the required Python packages are not installed (installation was declined)"


def pytorch_utils_logic() -> Any:
    """``PyTorchUtils.PyTorchUtilsLogic()`` of the PyTorch extension; a RuntimeError that says to install it when missing."""
    try:
        import PyTorchUtils  # the PyTorch extension's module: present only when that extension is installed
    except ImportError:
        raise RuntimeError(
            "UNet Segmentation needs the 'PyTorch' extension. Install it from the Extensions Manager "
            "(search for PyTorch), restart Slicer, and try again."
        ) from None
    return PyTorchUtils.PyTorchUtilsLogic()


def missing_dependencies(torch_utils: Optional[Any] = None, find_spec: FindSpec = importlib.util.find_spec) -> Tuple[bool, List[Requirement]]:
    """``(torch_missing, requirements_missing)``, checked without importing torch or the packages."""
    torch_utils = torch_utils or pytorch_utils_logic()
    return not torch_utils.torchInstalled(), missing_requirements(find_spec)


def install_dependencies(
    torch_missing: bool,
    requirements: List[Requirement],
    torch_utils: Optional[Any] = None,
    pip_install: Optional[Callable[[str], Any]] = None,
    find_spec: FindSpec = importlib.util.find_spec,
) -> None:
    """Install PyTorch (through the extension) and ``requirements`` (pip, ``--no-deps``); RuntimeError when something is still missing."""
    if torch_missing:
        torch = (torch_utils or pytorch_utils_logic()).installTorch(askConfirmation=False, torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
        if torch is None:
            raise RuntimeError("PyTorch could not be installed. Install it with the 'PyTorch Utils' module, then try again.")
    if requirements:
        install = pip_install or slicer.util.pip_install
        install(pip_install_arguments(requirements))  # --no-deps: never replace Slicer's numpy, SimpleITK or VTK
    still_missing = missing_requirements(find_spec)
    if still_missing:
        raise RuntimeError(
            "these Python packages could not be installed: %s. Check the internet connection and the Python console."
            % ", ".join(r.pip for r in still_missing)
        )


def ensure_dependencies(
    run=None,
    confirm: Optional[Callable[[str], bool]] = None,
    on_state_change: Optional[Callable[[], None]] = None,
    torch_utils: Optional[Any] = None,
    pip_install: Optional[Callable[[str], Any]] = None,
    find_spec: FindSpec = importlib.util.find_spec,
) -> bool:
    """Install what is missing, after ``confirm(text)`` says yes when given. Returns True if something was installed.

    ``run`` (a :class:`~UNetSegmentationLib.panel.run.SegmentationRun`) enters ``installing`` first;
    declining fails it (or raises RuntimeError without a run) with a message that says so.
    """
    torch_utils = torch_utils or pytorch_utils_logic()
    torch_missing, requirements = missing_dependencies(torch_utils, find_spec)
    if not torch_missing and not requirements:
        return False
    if confirm is not None and not confirm(install_confirmation_text(requirements, torch_missing)):
        if run is None:
            raise RuntimeError(DECLINED)
        run.fail(DECLINED)
        return False
    if run is not None:
        run.begin_installing()
    if on_state_change is not None:
        on_state_change()
    install_dependencies(torch_missing, requirements, torch_utils, pip_install, find_spec)
    return True

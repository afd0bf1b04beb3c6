"""Whether a module is installed, asked without importing it (the Slicer panel and the command line
check their needs before any work, and must not pay an import of torch or MONAI to do so)."""

from __future__ import annotations

import importlib.util
from typing import Callable


def module_is_installed(module: str, find_spec: Callable[[str], object] = importlib.util.find_spec) -> bool:
    """True when ``find_spec`` finds ``module``; a parent package that is missing or broken counts as not installed."""
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False

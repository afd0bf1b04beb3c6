"""What each ``unetseg`` command needs installed, declared in one table and checked before any work.

The core install (``pip install -e .``, what the README's set-up installs) brings everything every
command needs to do its job (``pyproject.toml``'s ``dependencies``, scipy among them for evaluate's
HD95). What an optional extra brings is named here per command: a command that cannot do without it
stops at once with one message naming the extra; one that can (evaluate without its plot) says so
in one warning at the start, and skips only that part. Modules are looked up, not imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.packages import module_is_installed


@dataclass(frozen=True)
class Need:
    """``module`` must be importable for ``purpose``; ``extra`` is the install extra that brings it
    (None: a core dependency); ``required``: without it the command cannot run at all."""

    module: str
    extra: Optional[str]
    purpose: str
    required: bool = True

    def install_hint(self) -> str:
        if self.extra is None:
            return f'pip install {self.module} (a dependency of UNetSegmentationLib: reinstall it with pip install -e .)'
        return f'pip install "UNetSegmentationLib[{self.extra}]"'


#: the table: command → what it needs beyond the Python standard library
COMMAND_NEEDS: Dict[str, Tuple[Need, ...]] = {
    "demo": (Need("matplotlib", "plots", "the PNG overlay"),),
    "evaluate": (
        Need("scipy", None, "HD95 surface distances (MONAI computes them with scipy)"),
        Need("matplotlib", "plots", "the accuracy-vs-speed plot", required=False),
    ),
    "train": (Need("monai", None, "the augmentations and losses"),),
}


def missing_needs(command: str, find_spec: Callable[[str], object] = importlib.util.find_spec) -> List[Need]:
    """The needs of ``command`` whose module cannot be found (looked up without importing it)."""
    return [need for need in COMMAND_NEEDS.get(command, ()) if not module_is_installed(need.module, find_spec)]


def check_needs(command: str, warn: Callable[[str], None], find_spec: Callable[[str], object] = importlib.util.find_spec) -> List[Need]:
    """Stop ``command`` before any work when something it requires is missing (one :class:`UserError`
    naming the package and the extra); tell ``warn`` about each optional part that will be skipped.
    Returns the missing optional needs (the command skips what they serve)."""
    missing = missing_needs(command, find_spec)
    required = [need for need in missing if need.required]
    if required:
        need = required[0]
        raise UserError(f"unetseg {command} needs {need.module} for {need.purpose}, which is not installed: {need.install_hint()}")
    for need in missing:
        warn(f"{need.module} is not installed, so {need.purpose} is skipped: {need.install_hint()}")
    return missing

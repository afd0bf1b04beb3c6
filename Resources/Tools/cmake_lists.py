"""Rewrites the file lists of ``UNetSegmentation/CMakeLists.txt`` from the module folder's files.

A file that ``MODULE_PYTHON_SCRIPTS`` or ``MODULE_PYTHON_RESOURCES`` does not name is missing after an
Extension Manager install, and a named file that no longer exists stops CMake's configuration; files
are added, moved and removed often enough that the lists are written by this script rather than by
hand. Scripts: every ``.py`` file of the module file, ``UNetSegmentationSlicer`` and
``UNetSegmentationLib``; resources: every file under ``Resources/``. Both from ``git ls-files`` (tracked
and new files, not ignored ones: no ``__pycache__``, no cached ONNX exports), sorted.

Usage: ``python Resources/Tools/cmake_lists.py [--check]`` (``--check``: exit 1 when the lists differ,
writing nothing). ``Testing/test_slicer_module.py`` checks the lists against the files.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_FOLDER = REPOSITORY / "UNetSegmentation"
CMAKE = MODULE_FOLDER / "CMakeLists.txt"
MODULE_NAME = "UNetSegmentation"


def module_files() -> List[str]:
    """The module folder's files, relative to it, as a clone has them."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", "--", "UNetSegmentation"], cwd=REPOSITORY,
                            capture_output=True, check=True).stdout
    names = [name for name in listed.decode().split("\0") if name and (REPOSITORY / name).is_file()]
    return sorted(Path(name).relative_to("UNetSegmentation").as_posix() for name in names)


def written(name: str) -> str:
    """A path as the CMake file writes it: the module's own name through ``${MODULE_NAME}``."""
    return re.sub(rf"(^|/){MODULE_NAME}(\.\w+)$", rf"\1${{MODULE_NAME}}\2", name)


def with_lists(text: str, files: Sequence[str]) -> str:
    scripts = [f for f in files if f.endswith(".py") and (f == f"{MODULE_NAME}.py" or f.split("/")[0] in ("UNetSegmentationLib", "UNetSegmentationSlicer"))]
    resources = [f for f in files if f.split("/")[0] == "Resources"]
    for variable, names in (("MODULE_PYTHON_SCRIPTS", scripts), ("MODULE_PYTHON_RESOURCES", resources)):
        block = "".join(f"  {written(name)}\n" for name in names)
        text, count = re.subn(rf"(set\({variable}\n)(.*?)(  \))", lambda m: m.group(1) + block + m.group(3), text, count=1, flags=re.S)
        if count != 1:
            raise SystemExit(f"{CMAKE}: no set({variable} ...) block")
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the lists differ from the files; write nothing")
    args = parser.parse_args(argv)
    text = CMAKE.read_text(encoding="utf-8")
    updated = with_lists(text, module_files())
    if updated == text:
        print(f"{CMAKE.relative_to(REPOSITORY)}: the lists match the files")
        return 0
    if args.check:
        print(f"{CMAKE.relative_to(REPOSITORY)}: the lists differ from the files (run python Resources/Tools/cmake_lists.py)")
        return 1
    CMAKE.write_text(updated, encoding="utf-8")
    print(f"{CMAKE.relative_to(REPOSITORY)}: lists rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())

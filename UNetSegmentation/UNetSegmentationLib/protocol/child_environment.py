"""The one builder of the environment an engine child process starts with: the Slicer module's runs
(:mod:`.runner`), the module's self-test (``UNetSegmentationSlicer/selftest.py``) and a local Ray
instance's workers (``cohort/ray_executor.py``) all ask it, so a child never finds the engine missing
or speaks a different encoding because one caller forgot a variable.

What a child needs, and why:

- ``PYTHONPATH`` with the folder holding ``UNetSegmentationLib`` first (once): the engine is imported
  from where this process imported it, installed or not (Slicer's Python does not have it installed).
- ``PYTHONIOENCODING=utf-8``: events and messages are UTF-8 JSON on the pipe whatever the locale
  (a ``C``/POSIX locale, or one ITK's DICOM writer left behind, would make Python write ASCII and
  fail on a non-ASCII file or class name).
- ``PYTHONUNBUFFERED=1``: each event reaches the reader when it is printed, not when a buffer fills.
- With ``threads``: the OpenMP/BLAS thread variables, so that native libraries started before the
  engine sets its own thread count (and those it never asks) stay within the CPUs given to the child.

Nothing here imports numpy, torch or Slicer: the panel's GUI process builds the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Mapping, Optional

#: variables native libraries read for their thread pools (OpenMP, MKL, OpenBLAS, numexpr, Accelerate)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def engine_root() -> Path:
    """The folder that holds ``UNetSegmentationLib``: what a child needs on its ``PYTHONPATH``."""
    return Path(__file__).resolve().parents[2]


def with_engine_on_path(pythonpath: Optional[str]) -> str:
    """``pythonpath`` with :func:`engine_root` first, and not twice (empty entries dropped: an empty
    entry would put the child's working folder on its path)."""
    root = str(engine_root())
    rest = [entry for entry in (pythonpath or "").split(os.pathsep) if entry and entry != root]
    return os.pathsep.join([root, *rest])


def child_environment(base: Optional[Mapping[str, str]] = None, *, threads: Optional[int] = None, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment for an engine child: ``base`` (default: this process's environment) with the
    engine on ``PYTHONPATH``, UTF-8 streams, unbuffered output, the thread variables at ``threads``
    when given, then ``extra`` (the caller's own variables win)."""
    environment = dict(os.environ if base is None else base)
    environment["PYTHONPATH"] = with_engine_on_path(environment.get("PYTHONPATH"))
    environment["PYTHONIOENCODING"] = "utf-8"
    environment["PYTHONUNBUFFERED"] = "1"
    if threads is not None:
        environment.update({name: str(max(1, int(threads))) for name in THREAD_VARIABLES})
    environment.update(extra or {})
    return environment

"""Where the bundled model lies: ``<module>/Resources/Models`` beside the engine package, in the source
tree and in a Slicer install alike (torch-, numpy- and SimpleITK-free: the panel reads it at start-up).
Decided in :mod:`~UNetSegmentationLib.io.bundled_files`, below the output gate that must refuse to write it.

Its short name on the command line is ``bundled`` (``--checkpoint bundled``, ``unetseg info bundled``,
``train --init bundled``), and ``predict`` without ``--checkpoint`` runs it (issue 22, defect 12):
:func:`checkpoint_path` is the one place that reads the name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from UNetSegmentationLib.io.bundled_files import BUNDLED_MODEL_NAME, bundled_model_path, interactive_model_path, models_folder

#: what a user types for the bundled model wherever a checkpoint is asked for (``./bundled`` is a file)
BUNDLED_SHORT_NAME = "bundled"

__all__ = ["BUNDLED_MODEL_NAME", "BUNDLED_SHORT_NAME", "bundled_model_path", "checkpoint_path", "interactive_checkpoint_path", "interactive_model_path", "models_folder"]


def checkpoint_path(text: Union[str, Path]) -> Path:
    """A checkpoint argument as a path: ``bundled`` is the bundled model, anything else the file it names
    (argparse's ``type=`` for every checkpoint option, so the short name is read in one place)."""
    if isinstance(text, str) and text.strip() == BUNDLED_SHORT_NAME:
        return bundled_model_path()
    return Path(text)


def interactive_checkpoint_path(text: Union[str, Path]) -> Path:
    """An interactive checkpoint argument as a path (``unetseg refine --checkpoint``, the engine's
    ``refine_open``): ``bundled`` is the bundled interactive model, anything else the file it names."""
    if isinstance(text, str) and text.strip() == BUNDLED_SHORT_NAME:
        return interactive_model_path()
    return Path(text)

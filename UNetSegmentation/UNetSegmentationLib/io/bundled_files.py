"""Where the bundled model's files lie: ``<module>/Resources/Models`` beside the engine package, in the source
tree and in a Slicer install alike. Standard library only (the panel reads it at start-up), and in io/
because the output gate (:mod:`.output_gate`) must refuse to write them; :mod:`~UNetSegmentationLib.model.bundled`
gives the same names to the rest of the engine."""

from __future__ import annotations

from pathlib import Path
from typing import List

#: file name of the bundled model, shipped in the module's Resources/Models (``unetseg demo`` runs it too)
BUNDLED_MODEL_NAME = "ct-organs-unetplusplus.safetensors"
#: file name of the bundled interactive model (issue 26: ``unetseg refine`` and the refine sessions run it)
INTERACTIVE_MODEL_NAME = "interactive-ct-unetplusplus.safetensors"
#: what ships beside it: its ONNX export(s) and its model card
SHIPPED_SUFFIXES = (".shipped.onnx", ".md")


def models_folder() -> Path:
    """``<module>/Resources/Models``: beside the Lib package in the source tree and in a Slicer install."""
    return Path(__file__).resolve().parents[2] / "Resources" / "Models"


def bundled_model_path() -> Path:
    """Where the bundled model is (it may be missing in a development checkout)."""
    return models_folder() / BUNDLED_MODEL_NAME


def interactive_model_path() -> Path:
    """Where the bundled interactive model is (it may be missing in a development checkout)."""
    return models_folder() / INTERACTIVE_MODEL_NAME


def bundled_files() -> List[Path]:
    """The bundled models' files: the model, its shipped ONNX export(s) and its card (those that exist),
    and the interactive model and its card."""
    folder = models_folder()
    stem = BUNDLED_MODEL_NAME[: -len(".safetensors")]
    try:
        shipped = [entry for entry in folder.iterdir() if entry.name.startswith(stem + ".") and entry.name.endswith(SHIPPED_SUFFIXES)]
    except OSError:
        shipped = []
    interactive = interactive_model_path()
    return [bundled_model_path(), *sorted(shipped), interactive, interactive.with_suffix(".md")]

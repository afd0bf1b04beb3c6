"""Where the bundled model lies: ``<module>/Resources/Models`` beside the engine package, in the source
tree and in a Slicer install alike (torch-, numpy- and SimpleITK-free: the panel reads it at start-up)."""

from __future__ import annotations

from pathlib import Path


#: file name of the bundled model, shipped in the module's Resources/Models (``unetseg demo`` runs it too)
BUNDLED_MODEL_NAME = "chest-ct-unetplusplus.safetensors"


def models_folder() -> Path:
    """``<module>/Resources/Models``: beside the Lib package in the source tree and in a Slicer install."""
    return Path(__file__).resolve().parents[2] / "Resources" / "Models"


def bundled_model_path() -> Path:
    """Where the bundled model is (it may be missing in a development checkout)."""
    return models_folder() / BUNDLED_MODEL_NAME

"""Where the bundled model lies: ``<module>/Resources/Models`` beside the engine package, in the source
tree and in a Slicer install alike (torch-, numpy- and SimpleITK-free: the panel reads it at start-up).
Decided in :mod:`~UNetSegmentationLib.io.bundled_files`, below the output gate that must refuse to write it."""

from __future__ import annotations

from UNetSegmentationLib.io.bundled_files import BUNDLED_MODEL_NAME, bundled_model_path, models_folder

__all__ = ["BUNDLED_MODEL_NAME", "bundled_model_path", "models_folder"]

"""The Python packages the engine needs inside Slicer, and how they are installed there without
touching Slicer's own numpy, SimpleITK or VTK (torch comes from the PyTorch extension).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Callable, List, Sequence
from UNetSegmentationLib.packages import module_is_installed


@dataclass(frozen=True)
class Requirement:
    """A package the engine needs besides torch: the module to import and what to give pip."""

    module: str
    pip: str


#: installed with ``--no-deps`` so pip never replaces Slicer's own numpy, SimpleITK or VTK; the list
#: is closed over these packages' dependencies (monai → numpy, torch; slicerio → numpy, pynrrd,
#: requests; pynrrd → numpy, typing_extensions; tqdm → colorama on Windows; onnxruntime → numpy,
#: flatbuffers, packaging, protobuf; onnx → numpy, protobuf, typing_extensions, ml_dtypes), except for
#: the packages Slicer ships (PROTECTED_PACKAGES). ONNX Runtime is the engine's fast CPU backend (what
#: ``--backend auto`` picks on the CPU, and what runs the bundled model's shipped export without
#: PyTorch); ml_dtypes stays below 0.6, whose wheels need numpy 2 (0.5.x works with numpy 1.26 and 2).
REQUIREMENTS = (
    Requirement("monai", "monai>=1.3"),
    Requirement("safetensors", "safetensors>=0.4"),
    Requirement("slicerio", "slicerio>=1.0"),
    Requirement("nrrd", "pynrrd>=1.0"),
    Requirement("typing_extensions", "typing_extensions>=4.7"),
    Requirement("tqdm", "tqdm>=4.60"),
    Requirement("onnxruntime", "onnxruntime>=1.17"),
    Requirement("onnx", "onnx>=1.15"),
    Requirement("ml_dtypes", "ml_dtypes>=0.5.4,<0.6"),
    Requirement("google.protobuf", "protobuf>=4.25"),
    Requirement("flatbuffers", "flatbuffers"),
    Requirement("packaging", "packaging"),
) + ((Requirement("colorama", "colorama"),) if sys.platform == "win32" else ())
#: never installed or upgraded by the extension: Slicer ships them (torch comes from the PyTorch extension)
PROTECTED_PACKAGES = ("numpy", "scipy", "SimpleITK", "vtk", "requests", "torch", "torchvision")
TORCH_VERSION_REQUIREMENT = ">=2.1"


def missing_requirements(find_spec: Callable[[str], object] = importlib.util.find_spec) -> List[Requirement]:
    """Requirements whose module cannot be imported (checked without importing them)."""
    return [requirement for requirement in REQUIREMENTS if not module_is_installed(requirement.module, find_spec)]


def pip_install_arguments(requirements: Sequence[Requirement]) -> str:
    """One string for ``slicer.util.pip_install`` (it splits on spaces): ``--no-deps`` plus the packages."""
    if not requirements:
        return ""
    return " ".join(["--no-deps"] + [r.pip for r in requirements])


def install_confirmation_text(requirements: Sequence[Requirement], torch_missing: bool) -> str:
    """What the confirmation dialog says before anything is installed."""
    items = []
    if torch_missing:
        items.append("PyTorch (through the PyTorch extension; about 1\u20133 GB, GPU build when a GPU is present)")
    items += [r.pip for r in requirements]
    return (
        "UNet Segmentation needs these Python packages, which are not installed yet:\n\n  \u2022 "
        + "\n  \u2022 ".join(items)
        + "\n\nThey are installed once into Slicer's Python (Slicer's own numpy, SimpleITK and VTK are not touched). "
        "This can take several minutes and needs an internet connection. Install now?"
    )

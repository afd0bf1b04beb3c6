"""Decisions behind the Slicer panel that need no Slicer: what the combo boxes list, which packages
to install and how, which checkpoint is the default.

Torch-free, numpy-free and SimpleITK-free, so the Slicer module can import it in ``setup()``.
Device availability is found by a short child process (:class:`DeviceProbe`) so the GUI process
never imports torch just to fill a combo box.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from UNetSegmentationLib.model.header import SAFETENSORS, TORCH, checkpoint_kind, read_metadata
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.networks.registry import ARCHITECTURES, get_architecture, prune_depths_of

#: file name of the bundled model (the same as ``demo.BUNDLED_MODEL_NAME``; demo imports numpy, so it is repeated here)
BUNDLED_MODEL_NAME = "chest-ct-unetplusplus.safetensors"
ACCURATE = "accurate"
DEVICE_AUTO, DEVICE_CPU, DEVICE_GPU = "auto", "cpu", "cuda"
SLICE_AXES = ("auto", "i", "j", "k")


def models_folder() -> Path:
    """``<module>/Resources/Models``: beside the Lib package in the source tree and in a Slicer install."""
    return Path(__file__).resolve().parents[2] / "Resources" / "Models"


def bundled_model_path() -> Path:
    """Where the bundled model is (it may be missing in a development checkout)."""
    return models_folder() / BUNDLED_MODEL_NAME


def default_checkpoint(last_used: Optional[str] = None) -> Optional[Path]:
    """The checkpoint to offer: the last one used if it still exists, else the bundled model, else None."""
    if last_used:
        path = Path(last_used)
        if path.is_file():
            return path
    bundled = bundled_model_path()
    return bundled if bundled.is_file() else None


# --- architectures, checkpoints, depths --------------------------------------------------------------


def architecture_choices() -> List[tuple]:
    """``(name, title)`` of every registered architecture, in registry order."""
    return [(a.name, a.title) for a in ARCHITECTURES.values()]


def architecture_can_prune(name: Optional[str]) -> bool:
    architecture = ARCHITECTURES.get(name or "")
    return bool(architecture and architecture.prunable)


@dataclass(frozen=True)
class DepthChoice:
    """One entry of the prune-depth combo box: ``value`` goes to ``--depth``."""

    value: str
    label: str
    recommended: bool = False


def depth_choices(metadata: ModelMetadata) -> List[DepthChoice]:
    """Depths this checkpoint's network can run at, each with its validation Dice and speed when known.

    Empty for architectures that cannot be pruned (the panel hides the combo box then).
    """
    try:
        architecture = get_architecture(metadata.architecture)
    except UserError:
        return []
    depths = prune_depths_of(architecture, metadata.kwargs)
    if not depths:
        return []
    recommended = metadata.recommended_depth if metadata.recommended_depth in depths else max(depths)
    choices = []
    for depth in depths:
        metrics = metadata.depth_metrics.get(depth, {})
        parts = []
        if "dice" in metrics:
            parts.append(f"Dice {metrics['dice']:.3f}")
        if "ms_per_slice" in metrics:
            parts.append(f"{metrics['ms_per_slice']:.1f} ms/slice")
        label = f"L{depth}" + (" (full network)" if depth == max(depths) else "")
        if parts:
            label += " \u2014 " + ", ".join(parts)
        if depth == recommended:
            label += "  \u2605 recommended"
        choices.append(DepthChoice(str(depth), label, depth == recommended))
    choices.append(DepthChoice(ACCURATE, "Accurate \u2014 average of all depths (slowest)"))
    return choices


def default_depth(choices: Sequence[DepthChoice]) -> Optional[str]:
    for choice in choices:
        if choice.recommended:
            return choice.value
    return None


@dataclass
class CheckpointInfo:
    """What the panel shows about a checkpoint file. ``error`` is set instead of raising."""

    path: Optional[Path]
    kind: Optional[str] = None
    metadata: Optional[ModelMetadata] = None
    error: Optional[str] = None

    @property
    def usable(self) -> bool:
        """True when a run can start: metadata read, or a plain PyTorch file (the user gives the model)."""
        return self.error is None and self.kind in (SAFETENSORS, TORCH)

    @property
    def needs_model_options(self) -> bool:
        """A plain PyTorch state dict has no metadata: architecture and classes come from the panel."""
        return self.kind == TORCH

    @property
    def architecture(self) -> Optional[str]:
        return self.metadata.architecture if self.metadata else None

    def depth_choices(self) -> List[DepthChoice]:
        return depth_choices(self.metadata) if self.metadata else []

    def class_names(self) -> List[str]:
        return [c.name for c in self.metadata.classes] if self.metadata else []

    def summary(self) -> str:
        """One or two lines for the panel."""
        if self.error:
            return self.error
        if self.kind == TORCH:
            return "Plain PyTorch weights without metadata: choose the architecture and type the class names."
        metadata = self.metadata
        if metadata is None:
            return "No checkpoint selected."
        architecture = ARCHITECTURES.get(metadata.architecture)
        title = architecture.title if architecture else metadata.architecture
        names = ", ".join(c.name for c in metadata.classes)
        count = len(metadata.classes)
        normalization = metadata.normalization
        if normalization.kind == "ct":
            low, high = normalization.window
            modality = f"CT (window {low:g} to {high:g} HU)"
        else:
            modality = "MR (intensities standardised per volume)"
        trained = "" if (metadata.training or metadata.depth_metrics) else " \u2014 no training record (untrained weights?)"
        return f"{title}, {count} segment{'s' if count != 1 else ''}: {names}\nFor {modality}{trained}"


def describe_checkpoint(path) -> CheckpointInfo:
    """Read a checkpoint's metadata (torch-free); never raises."""
    if path is None or str(path) in ("", "."):
        return CheckpointInfo(None, error="Choose a checkpoint file (.safetensors).")
    path = Path(path)
    try:
        kind = checkpoint_kind(path)
        if kind == TORCH:
            return CheckpointInfo(path, kind=TORCH)
        return CheckpointInfo(path, kind=SAFETENSORS, metadata=read_metadata(path))
    except UserError as error:
        return CheckpointInfo(path, error=str(error))
    except OSError as error:  # pragma: no cover - races with the file system
        return CheckpointInfo(path, error=f"cannot read {path}: {error}")


def output_segmentation_name(volume_name: str) -> str:
    return f"{volume_name} segmentation" if volume_name else "Segmentation"


# --- devices -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceChoice:
    value: str
    label: str
    enabled: bool = True


@dataclass
class DeviceInfo:
    """What a short child process found: the torch version and the CUDA GPUs it can use."""

    torch_version: Optional[str] = None
    cuda: bool = False
    gpu_names: List[str] = field(default_factory=list)
    error: Optional[str] = None


#: run in a child by :class:`DeviceProbe` (``python -c PROBE_CODE``): prints one JSON line
PROBE_CODE = (
    "import json\n"
    "try:\n"
    "    import torch\n"
    "except Exception as error:\n"
    "    print(json.dumps({'torch_version': None, 'error': type(error).__name__ + ': ' + str(error)}))\n"
    "else:\n"
    "    cuda = bool(torch.cuda.is_available())\n"
    "    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []\n"
    "    print(json.dumps({'torch_version': torch.__version__, 'cuda': cuda, 'gpu_names': names}))\n"
)


def parse_probe_output(text: str) -> DeviceInfo:
    """The probe's JSON line (the last line that parses), or a DeviceInfo with ``error``."""
    for line in reversed((text or "").strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return DeviceInfo(
                torch_version=data.get("torch_version"),
                cuda=bool(data.get("cuda", False)),
                gpu_names=[str(n) for n in data.get("gpu_names", [])],
                error=data.get("error"),
            )
    return DeviceInfo(error="the device check printed nothing readable")


def device_choices(info: Optional[DeviceInfo]) -> List[DeviceChoice]:
    """Entries of the device combo box, saying what is available (``info`` None: not checked yet)."""
    if info is None:
        return [
            DeviceChoice(DEVICE_AUTO, "Automatic (GPU if available)"),
            DeviceChoice(DEVICE_CPU, "CPU"),
            DeviceChoice(DEVICE_GPU, "GPU (CUDA) \u2014 checking\u2026"),
        ]
    if info.torch_version is None:
        return [
            DeviceChoice(DEVICE_AUTO, "Automatic (PyTorch not installed yet)"),
            DeviceChoice(DEVICE_CPU, "CPU"),
            DeviceChoice(DEVICE_GPU, "GPU (CUDA) \u2014 unknown until PyTorch is installed"),
        ]
    if info.cuda and info.gpu_names:
        gpu = info.gpu_names[0] + (f" (+{len(info.gpu_names) - 1} more)" if len(info.gpu_names) > 1 else "")
        return [
            DeviceChoice(DEVICE_AUTO, f"Automatic (GPU: {gpu})"),
            DeviceChoice(DEVICE_CPU, "CPU"),
            DeviceChoice(DEVICE_GPU, f"GPU: {gpu}"),
        ]
    return [
        DeviceChoice(DEVICE_AUTO, "Automatic (CPU: no CUDA GPU found)"),
        DeviceChoice(DEVICE_CPU, "CPU"),
        DeviceChoice(DEVICE_GPU, "GPU (CUDA) \u2014 not available", enabled=False),
    ]


class DeviceProbe:
    """``python -c PROBE_CODE`` in the background; :meth:`poll` never blocks."""

    def __init__(self, python: Optional[str] = None, timeout_s: float = 120.0) -> None:
        self.python = python or sys.executable
        self.timeout_s = timeout_s
        self.result: Optional[DeviceInfo] = None
        self._process: Optional[subprocess.Popen] = None
        self._started = 0.0

    def start(self) -> "DeviceProbe":
        try:
            self._process = subprocess.Popen(
                [self.python, "-c", PROBE_CODE],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError as error:
            self.result = DeviceInfo(error=f"cannot run {self.python}: {error}")
        self._started = time.monotonic()
        return self

    def poll(self) -> Optional[DeviceInfo]:
        """The result once the child has finished (or timed out), else None."""
        if self.result is not None or self._process is None:
            return self.result
        if self._process.poll() is None:
            if time.monotonic() - self._started < self.timeout_s:
                return None
            self._process.kill()
            self._process.wait()
            self.result = DeviceInfo(error=f"the device check took longer than {self.timeout_s:g} s")
            return self.result
        output = self._process.stdout.read() if self._process.stdout else ""
        if self._process.stdout:
            self._process.stdout.close()
        self.result = parse_probe_output(output)
        return self.result

    def wait(self, timeout_s: Optional[float] = None) -> DeviceInfo:
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.poll() or DeviceInfo(error="the device check did not finish")


# --- dependencies ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """A package the engine needs besides torch: the module to import and what to give pip."""

    module: str
    pip: str


#: installed with ``--no-deps`` so pip never replaces Slicer's own numpy, SimpleITK or VTK; the list
#: is closed over these packages' dependencies (monai → numpy, torch; slicerio → numpy, pynrrd,
#: requests; pynrrd → numpy, typing_extensions; tqdm → colorama on Windows), except for the
#: packages Slicer ships (PROTECTED_PACKAGES)
REQUIREMENTS = (
    Requirement("monai", "monai>=1.3"),
    Requirement("safetensors", "safetensors>=0.4"),
    Requirement("slicerio", "slicerio>=1.0"),
    Requirement("nrrd", "pynrrd>=1.0"),
    Requirement("typing_extensions", "typing_extensions>=4.0"),
    Requirement("tqdm", "tqdm>=4.60"),
) + ((Requirement("colorama", "colorama"),) if sys.platform == "win32" else ())
#: never installed or upgraded by the extension: Slicer ships them (torch comes from the PyTorch extension)
PROTECTED_PACKAGES = ("numpy", "SimpleITK", "vtk", "requests", "torch", "torchvision")
TORCH_VERSION_REQUIREMENT = ">=2.1"


def missing_requirements(find_spec: Callable[[str], object] = importlib.util.find_spec) -> List[Requirement]:
    """Requirements whose module cannot be imported (checked without importing them)."""
    missing = []
    for requirement in REQUIREMENTS:
        try:
            found = find_spec(requirement.module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(requirement)
    return missing


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


# --- readiness ---------------------------------------------------------------------------------------

#: the id the engine gives the segment of label value v in the .seg.nrrd it writes (see volume_io)
SEGMENT_ID_FORMAT = "Segment_{value}"


def segment_id(label_value: int) -> str:
    return SEGMENT_ID_FORMAT.format(value=int(label_value))


def readiness(volume_selected: bool, info: CheckpointInfo, class_names: str = "", architecture: Optional[str] = None) -> tuple:
    """``(ready, reason)``: whether "Segment this volume" can be pressed, and why not."""
    if not volume_selected:
        return False, "Select an input volume."
    if info.path is None:
        return False, "Choose a model file (.safetensors)."
    if not info.usable:
        return False, info.error or "The model file cannot be used."
    if info.needs_model_options:
        if not architecture:
            return False, "Choose the architecture of this plain PyTorch file."
        names = [n.strip() for n in (class_names or "").split(",")]
        if not class_names or any(not n for n in names):
            return False, "Type the segment names of this plain PyTorch file, separated by commas."
    return True, ""

"""What the Slicer panel shows about models: the default checkpoint, a checkpoint's summary, the
architecture and prune-depth combo boxes, and whether the inputs allow a run.

Torch-, numpy- and SimpleITK-free (checkpoints are read with the header reader), so the Slicer module
can call it from ``setup()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.geometry.slice_distance import thinner_slices
from UNetSegmentationLib.geometry.spacing_match import same_in_plane
from UNetSegmentationLib.model.bundled import bundled_model_path
from UNetSegmentationLib.model.depth import ACCURATE
from UNetSegmentationLib.model.header import SAFETENSORS, TORCH, checkpoint_kind, read_metadata
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.model.training_record import printable
from UNetSegmentationLib.model.user_models import list_models
from UNetSegmentationLib.networks.registry import ARCHITECTURES, get_architecture, prune_depths_of

#: the id the engine gives the segment of label value v in the .seg.nrrd it writes
SEGMENT_ID_FORMAT = "Segment_{value}"


def default_checkpoint(last_used: Optional[str] = None, bundled: Optional[Path] = None) -> Optional[Path]:
    """The checkpoint to offer: the last one used if it still exists, else the bundled model (``bundled``,
    default :func:`bundled_model_path`) if present, else None."""
    if last_used:
        path = Path(last_used)
        if path.is_file():
            return path
    bundled = bundled_model_path() if bundled is None else Path(bundled)
    return bundled if bundled.is_file() else None


def checkpoint_for_scene(named: Optional[Path], last_used: Optional[str] = None, bundled: Optional[Path] = None) -> Tuple[Optional[Path], str]:
    """``(checkpoint, notice)``: the model a scene's parameter node names when that file exists (notice
    ""); else :func:`default_checkpoint`, and when the scene named a file that is gone, a notice saying
    which and what is used instead (a scene saved with a model that was deleted or moved since must not
    leave the panel without a model)."""
    if named is not None and str(named) not in ("", "."):
        if Path(named).is_file():
            return Path(named), ""
        fallback = default_checkpoint(last_used, bundled)
        instead = f"using {fallback.name} instead" if fallback is not None else "choose a model file"
        return fallback, f"The model this scene names, {printable(Path(named).name)}, no longer exists: {instead}."
    return default_checkpoint(last_used, bundled), ""


def architecture_choices() -> List[Tuple[str, str]]:
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
        lineage = fine_tuning_text(metadata.training.get("fine_tuning"))
        return f"{title}, {count} segment{'s' if count != 1 else ''}: {names}\nFor {modality}{trained}" + (f"\n{lineage}" if lineage else "")


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


def segment_id(label_value: int) -> str:
    return SEGMENT_ID_FORMAT.format(value=int(label_value))


def readiness(volume_selected: bool, info: CheckpointInfo, class_names: str = "", architecture: Optional[str] = None) -> Tuple[bool, str]:
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


def fine_tuning_text(record: Any) -> str:
    """The model card's lineage line of a fine-tuned model (``training["fine_tuning"]``): base, date,
    classes corrected, validation Dice before and after; "" for a model that was not fine-tuned.

    The record is JSON from a file: nothing in it is trusted (a wrong type is left out, never a
    traceback), and every text goes through :func:`~UNetSegmentationLib.model.training_record.printable`
    (one line, no control characters or escape codes), as ``unetseg info`` shows it."""
    if not isinstance(record, dict):
        return ""
    base = record.get("base") if isinstance(record.get("base"), dict) else {}
    text = f"Fine-tuned from {printable(base.get('name') or 'another model')}"
    if isinstance(record.get("date"), str) and record["date"]:
        text += f" on {printable(record['date'][:10])}"
    corrected = _names(record.get("classes_corrected"))
    labelled = _names(record.get("classes_labelled"))
    if corrected is not None:
        text += f" with corrections of {printable(', '.join(corrected))}" if corrected else " (no class was changed)"
    elif labelled:
        text += f" on labels of {printable(', '.join(labelled))}"
    before, after = record.get("dice_before"), record.get("dice_after")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (before, after)):
        text += f"; validation Dice {before:.3f} \u2192 {after:.3f}"
    return text


def _names(value: Any) -> Optional[List[str]]:
    """A list of class names from a record (None when absent or not a list of texts)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value


def _mm(value: float) -> str:
    return f"{round(float(value), 2):g}"


def spacing_text(metadata: Optional[ModelMetadata], volume_spacing: Optional[Sequence[float]], spacing: str = "model") -> str:
    """The model's spacing beside the input's (issue 14), e.g.
    ``Model: 3.05 x 3.05 mm in-plane, neighbours 10 mm apart`` and
    ``This volume: 0.76 x 0.76 mm in-plane, slices 2.5 mm apart: resampled to the model's spacing``.

    ``volume_spacing``: (row, column, slice) mm of the input (None: no input); ``spacing``: the run's
    ``--spacing`` (``model`` or ``native``).
    """
    lines = []
    trained = metadata.in_plane_spacing if metadata else None
    if metadata is not None:
        if trained:
            distance = metadata.context_distance
            neighbours = f", neighbours {_mm(distance)} mm apart" if distance and metadata.context else ""
            lines.append(f"Model: {_mm(trained[0])} \u00d7 {_mm(trained[1])} mm in-plane{neighbours}")
        else:
            lines.append("Model: no spacing recorded")
    if volume_spacing is not None:
        row, column, between = volume_spacing
        if trained is None:
            how = "segmented on its own grid"
        elif spacing == "native":
            how = "segmented on its own grid (Spacing: native)"
        elif same_in_plane((row, column), trained) and not thinner_slices(metadata.context_distance, between, metadata.context):
            how = "the model's spacing, nothing to resample"
        else:
            how = "resampled to the model's spacing"
        lines.append(f"This volume: {_mm(row)} \u00d7 {_mm(column)} mm in-plane, slices {_mm(between)} mm apart: {how}")
    return "\n".join(lines)


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model choice: what it says and the checkpoint it selects."""

    label: str
    path: Path


def model_choices(user_folder: Optional[Path], current: Optional[Path] = None, bundled: Optional[Path] = None) -> List[ModelChoice]:
    """The bundled model, then the user's models (fine-tuned ones, newest first), then ``current`` when
    it is another file: the entries of the panel's model choice."""
    bundled = bundled_model_path() if bundled is None else Path(bundled)
    choices = [ModelChoice("Bundled: " + bundled.stem, bundled)] if bundled.is_file() else []
    choices += [ModelChoice(path.stem, path) for path in list_models(user_folder)]
    if current is not None and str(current) not in ("", ".") and all(Path(current) != c.path for c in choices):
        choices.append(ModelChoice(f"{Path(current).name} (file)", Path(current)))
    return choices

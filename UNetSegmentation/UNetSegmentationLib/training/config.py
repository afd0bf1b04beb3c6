"""What a training run is told (:class:`TrainConfig`, stored in the checkpoint) and what it returns (:class:`TrainResult`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.training.sampling import AugmentOptions

#: config entries that may change between a run and its ``--resume``
RESUMABLE_CHANGES = {"epochs", "stop_after", "threads", "device", "progress", "log", "state"}


@dataclass
class TrainConfig:
    """Everything ``unetseg train`` can be told (JSON-serialisable; stored in the checkpoint)."""

    arch: str = "unetplusplus"
    features: Optional[List[int]] = None
    context: int = 1
    norm: str = "ct:-1000,1000"
    classes: Optional[List[str]] = None
    class_table: Optional[List[Dict[str, Any]]] = None  # --classes TABLE.json: the classes with their values, colours and terminology
    init: Optional[str] = None
    other_labels: str = "error"
    spacing: Optional[Any] = None  # None: the median in-plane spacing of the training images; "native"; [row, column] mm
    slice_distance: Optional[float] = None  # mm between a slice and its 2.5D neighbours; None: the median slice spacing
    label_map: Optional[Dict[str, str]] = None  # the user's label value or segment name -> the model's class (name or value)
    train_slices: Optional[str] = None  # train only on these slices (grammar/slice_ranges text, e.g. 12-18,40) of every training case
    partial_classes: Any = "auto"  # "auto": classes no training label holds are unlabelled, not background; "none"; or class names
    corrected_classes: Optional[List[str]] = None  # the classes the user changed, for the model card (None: not known)
    freeze_encoder: bool = False
    freeze_norm: bool = False  # BatchNorm statistics kept as the --init checkpoint has them
    epochs: int = 50
    steps_per_epoch: int = 50
    batch_size: int = 8
    crop: Tuple[int, int] = (96, 96)
    crop_given: bool = True  # False: the default crop, fitted to the training slices (training/adapt.py)
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "poly"
    loss: str = "auto"
    foreground: float = 0.5
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    val_every: int = 1
    val_slices: Optional[float] = None
    val_blocks: int = 3
    val_gap: Optional[int] = None
    val_batch_size: int = 4
    depth_tolerance: float = 0.01
    axis: Optional[int] = None
    threads: Optional[int] = None
    stop_after: Optional[int] = None
    log: Optional[str] = None
    state: Optional[str] = None
    interactive: Optional[str] = None  # train_options.INTERACTIVE_MODES: a network guided by clicks (training/interactive_trainer.py)
    no_guidance: float = 0.0  # the share of an interactive network's samples without guidance
    pseudo_objects: float = 0.0  # the share of a class-agnostic interactive network's samples with a pseudo-object (training/pseudo_objects.py)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run (every epoch)."""
        return self.epochs * self.steps_per_epoch

    def to_json(self) -> Dict[str, Any]:
        """The config as the checkpoint records it: files by name only, since a checkpoint travels and the
        folders of the machine it was trained on mean nothing elsewhere (the bundled model held
        ``/tmp/bundled/train.csv``: issue 22, defect 14)."""
        data = dataclasses.asdict(self)
        data["crop"] = list(self.crop)
        for name in ("init", "log", "state"):
            if data.get(name):
                data[name] = Path(data[name]).name
        return data

    def check(self) -> None:
        """Stop with a :class:`UserError` on a count, probability or rate out of range."""
        counts = (("--epochs", self.epochs), ("--steps-per-epoch", self.steps_per_epoch), ("--batch-size", self.batch_size), ("--val-every", self.val_every))
        for name, value in counts:
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.foreground <= 1:
            raise UserError(f"--foreground must be a probability in [0, 1], got {self.foreground}")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")

    def adopting(self, metadata: ModelMetadata) -> "TrainConfig":
        """This config with the architecture, features, classes, context and normalisation of the
        ``--init`` checkpoint's ``metadata``, so that the stored config records what the run really uses."""
        n = metadata.normalization
        norm = f"ct:{n.window[0]:g},{n.window[1]:g}" if n.kind == "ct" else f"mr:{n.percentiles[0]:g},{n.percentiles[1]:g}"
        return dataclasses.replace(
            self, arch=metadata.architecture, context=metadata.context, norm=norm,
            features=metadata.kwargs.get("features"), classes=[c.name for c in metadata.classes],
        )


@dataclass
class TrainResult:
    """What a run wrote: the best checkpoint, the CSV log, the resume state; its epoch rows and final metadata."""

    checkpoint: Path
    log: Path
    state: Path
    history: List[dict]
    metadata: ModelMetadata


def default_side_path(output: Path, suffix: str) -> Path:
    """``model.safetensors`` → ``model.csv`` / ``model.resume.pt``."""
    name = output.name[: -len(".safetensors")] if output.name.endswith(".safetensors") else output.stem
    return output.with_name(name + suffix)


def round_crop(crop: Sequence[int], multiple: int) -> Tuple[int, int]:
    """The crop, rounded up so the network's poolings divide it."""
    return tuple(int(math.ceil(int(c) / multiple) * multiple) for c in crop)

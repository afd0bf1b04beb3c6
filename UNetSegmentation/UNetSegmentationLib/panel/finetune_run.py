"""One click of "Fine-tune" in the panel's "Improve the model" section, as a state machine without Slicer or Qt.

::

    idle ──► exporting ──► training ──► saving ──► done
      │           │             │           │
      └───────────┴─────────────┴───────────┴──► failed / cancelled

The Slicer layer exports the training pair (the volume and its corrected segmentation, as a label map
on the volume's exact grid) to :attr:`FineTuneRun.image_path` and :attr:`FineTuneRun.label_path`; this
object runs ``unetseg train --init BASE ...`` in a child process into its own temporary folder, as a
:class:`~UNetSegmentationLib.panel.child_run.ChildRun` like a segmentation (the same runner and event
schema, log, failure and cancel). Only when the child has finished is the new checkpoint copied, under a name of its
own, into the user models folder (:func:`~UNetSegmentationLib.model.user_models.save_model`: verified
whole, then renamed into place): a cancel or a failure leaves that folder as it was. Which model the
panel then selects is :func:`model_to_select`'s decision: the new one only when it is not worse than its
base on the held-out slices. Torch-, numpy- and SimpleITK-free.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.grammar.slice_ranges import check_slice_ranges
from UNetSegmentationLib.model import user_models
from UNetSegmentationLib.model.header import SAFETENSORS, checkpoint_kind, read_metadata
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.panel.child_run import (
    CANCEL_TEXT,
    CANCELLED,
    DONE,
    FAILED,
    FINISHED_STATES,
    IDLE,
    PROGRESS_MAXIMUM,
    ButtonWords,
    ChildRun,
    Engine,
    EngineFactory,
    PanelView,
    run_view,
)
from UNetSegmentationLib.panel.log_lines import format_duration, format_eta
from UNetSegmentationLib.protocol.events import DONE as DONE_EVENT
from UNetSegmentationLib.protocol.events import Event
from UNetSegmentationLib.protocol.runner import EngineProcess
from UNetSegmentationLib.training.train_options import DEFAULT_HOLD_OUT, TrainOptions, check_hold_out

#: this module's vocabulary: the states of a fine-tuning (the shared ones come from .child_run), what
#: the panel shows, and the run itself (the Slicer module reads FINISHED_STATES)
__all__ = [
    "IDLE", "EXPORTING", "TRAINING", "SAVING", "DONE", "FAILED", "CANCELLED", "ACTIVE_STATES", "FINISHED_STATES", "TRANSITIONS",
    "FINE_TUNE_TEXT", "CANCEL_TEXT", "PROGRESS_MAXIMUM", "PROGRESS_AT", "FINE_TUNE_BUTTON", "model_file_stem", "training_process",
    "FineTuneParameters", "FineTuneView", "FineTuneRun", "training_text", "finetune_view", "finetune_readiness",
    "ModelPick", "model_to_select", "SLICES_BOX",
]

EXPORTING, TRAINING, SAVING = "exporting", "training", "saving"
ACTIVE_STATES = (EXPORTING, TRAINING, SAVING)
#: saving cannot be cancelled: the new model is being renamed into place
TRANSITIONS = {
    IDLE: (EXPORTING, FAILED, CANCELLED),
    EXPORTING: (TRAINING, FAILED, CANCELLED),
    TRAINING: (SAVING, FAILED, CANCELLED),
    SAVING: (DONE, FAILED),
    DONE: (), FAILED: (), CANCELLED: (),
}

FINE_TUNE_TEXT = "Fine-tune"
#: progress bar value at the start of each state; training fills TRAINING..SAVING by steps
PROGRESS_AT = {IDLE: 0, EXPORTING: 2, TRAINING: 5, SAVING: 98, DONE: 100}
FINE_TUNE_BUTTON = ButtonWords(
    start_text=FINE_TUNE_TEXT,
    start_tooltip="Train a copy of the chosen model on this volume and its corrected segmentation",
    ready_text="Ready to fine-tune",
    cancellable_states=(EXPORTING, TRAINING),
    cancel_tooltip="Stop the training; no model is written",
    busy_tooltip="Saving the new model",
)
#: the slice box in messages (its text is read by the one slice-range grammar, bounded)
SLICES_BOX = "Slices to train on"


def model_file_stem(base: Path, volume_name: str, now: Optional[datetime.datetime] = None) -> str:
    """``<base stem>-<volume>-<YYYYMMDD-HHMMSS>``, with only characters every file system takes."""
    now = now or datetime.datetime.now()
    return user_models.safe_name(f"{Path(base).stem}-{volume_name or 'volume'}-{now:%Y%m%d-%H%M%S}", "fine-tuned")


def training_process(arguments: Sequence[str], outputs: Sequence[Path], python: Optional[str], idle_timeout_s: Optional[float]) -> Engine:
    """The real engine child: ``python -m UNetSegmentationLib train ... --progress json``, its failures worded as the training's."""
    return EngineProcess(arguments, outputs=outputs, python=python, idle_timeout_s=idle_timeout_s, what="training")


@dataclass(frozen=True)
class FineTuneParameters:
    """What a fine-tuning run starts from and where its model goes; checked on construction (one
    :class:`UserError` per problem, worded for the panel).

    ``base``: the model to start from (a ``.safetensors`` file with metadata); ``models_folder``: the
    user models folder the new model lands in, as ``<name>.safetensors`` (``-2``, ``-3``... when taken);
    ``train_slices``: only these slices of the pair (``12-18,40``; None: all); ``label_map``: the
    ``--label-map`` of the engine (None: segments matched to the classes by name); ``epochs`` and
    ``steps_per_epoch``: None for the engine's fine-tuning defaults; ``validation``: the share of the
    slices held out to measure the Dice before and after (the model card's, and the progress line's),
    used when the whole segmentation is the user's truth (no ``train_slices``: otherwise the slices not
    marked are no truth to measure against); None: no validation. ``base_metadata``: the base's
    metadata, read once on construction (its classes name the segments to export).
    """

    base: Path
    models_folder: Path
    name: str
    train_slices: Optional[str] = None
    label_map: Optional[str] = None
    epochs: Optional[int] = None  # None: the engine's fine-tuning defaults
    steps_per_epoch: Optional[int] = None
    validation: Optional[float] = DEFAULT_HOLD_OUT
    slice_count: Optional[int] = None  # the volume's slices along its slice axis, when known: the slice box is checked against it
    base_metadata: ModelMetadata = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", Path(self.base))
        object.__setattr__(self, "models_folder", Path(self.models_folder))
        object.__setattr__(self, "train_slices", (self.train_slices or "").strip() or None)
        object.__setattr__(self, "label_map", (self.label_map or "").strip() or None)
        if not self.base.is_file():
            raise UserError(f"Choose the model to fine-tune: {self.base} is not a file.")
        if checkpoint_kind(self.base) != SAFETENSORS:
            raise UserError("Fine-tuning starts from a .safetensors model (a plain PyTorch file does not say its classes and normalisation).")
        object.__setattr__(self, "base_metadata", read_metadata(self.base))  # a broken model says why here, before any export
        if self.train_slices is not None:
            check_slice_ranges(self.train_slices, self.slice_count, option=SLICES_BOX)  # bounded: 0-99999999999 is refused, not expanded
        user_models.check_name(self.name)
        for value, what in ((self.epochs, "epochs"), (self.steps_per_epoch, "steps per epoch")):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"The number of {what} must be a whole number of at least 1 (got {value!r}).")
        check_hold_out(self.validation, option="The share of slices held out for validation")  # the engine's one rule
        user_models.check_folder(self.models_folder)

    def train_options(self, image: Path, label: Path, output: Path, corrected: Optional[Sequence[str]] = None) -> TrainOptions:
        """The engine's options of this run: the panel writes no command line of its own. ``corrected``:
        the classes the user changed (measured at export; None: not known), for the model card."""
        return TrainOptions(output, image=image, label=label, init=self.base, train_slices=self.train_slices,
                            val_slices=None if self.train_slices else self.validation, label_map=self.label_map,
                            epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                            corrected_classes=None if corrected is None else (",".join(corrected) or "none"))

    def to_arguments(self, image: Path, label: Path, output: Path, corrected: Optional[Sequence[str]] = None) -> List[str]:
        """The ``unetseg train`` command line of this run (the process runner adds ``--progress json``)."""
        return self.train_options(image, label, output, corrected).to_arguments()


#: what the "Improve the model" section shows about the run: the panel's view of any run
FineTuneView = PanelView


class FineTuneRun(ChildRun):
    """One fine-tuning: the state machine plus its temporary folder, child process and new model.

    Args:
        parameters: what to fine-tune and where the model goes.
        python: interpreter of the engine child (``PythonSlicer`` inside Slicer).
        temp_root: where the temporary folder goes (default: the system's).
        idle_timeout_s: fail when the child prints no event for this long.
        on_log: called with each new log line.
        engine_factory: builds the child process (tests pass their own).
    """

    transitions = TRANSITIONS
    active_states = ACTIVE_STATES
    progress_at = PROGRESS_AT
    child_state = TRAINING
    after_child_state = SAVING
    state_texts = {EXPORTING: "Exporting the volume and its segmentation\u2026", SAVING: "Saving the new model\u2026"}
    button_words = FINE_TUNE_BUTTON
    folder_prefix = "UNetSegmentation-finetune-"
    process_name = "training"
    run_name = "fine-tuning"
    failed_line = "Fine-tuning failed: {message}"
    cancelled_line = "Fine-tuning cancelled by the user"
    wait_interval_s = 0.2  # training reports less often than a segmentation

    def __init__(self, parameters: FineTuneParameters, python: Optional[str] = None, temp_root: Union[str, Path, None] = None,
                 idle_timeout_s: Optional[float] = 1800.0, on_log: Optional[Callable[[str], None]] = None,
                 engine_factory: EngineFactory = training_process) -> None:
        super().__init__(python=python, temp_root=temp_root, idle_timeout_s=idle_timeout_s, on_log=on_log, engine_factory=engine_factory)
        self.parameters = parameters
        self.model_path: Optional[Path] = None  # the new model, once saved
        self.pick: Optional[ModelPick] = None  # the model to select next, once saved
        self.corrected_classes: Optional[List[str]] = None  # measured by the Slicer layer at export (None: not known)

    # -- files ---------------------------------------------------------------------------------------

    @property
    def image_path(self) -> Path:
        """Where the Slicer layer exports the training volume to."""
        return self._ensure_folder() / "image.nrrd"

    @property
    def label_path(self) -> Path:
        """Where the Slicer layer exports the corrected segmentation to, as a label map on the volume's grid."""
        return self._ensure_folder() / "label.nrrd"

    @property
    def output_path(self) -> Path:
        """The checkpoint the child writes (its log and resume state go beside it), inside the temporary folder."""
        return self._ensure_folder() / "model.safetensors"

    # -- transitions ---------------------------------------------------------------------------------

    def begin_exporting(self) -> None:
        """Enter ``exporting``: the Slicer layer now writes :attr:`image_path` and :attr:`label_path`."""
        self._enter(EXPORTING)
        self.add_log(f"Exporting the training pair for fine-tuning {self.parameters.base.name}\u2026")

    def arguments(self) -> List[str]:
        return self.parameters.to_arguments(self.image_path, self.label_path, self.output_path, self.corrected_classes)

    def start_training(self) -> None:
        """Start ``unetseg train --init`` on the exported pair (the state becomes ``training`` or ``failed``)."""
        self._enter(TRAINING)
        missing = [p.name for p in (self.image_path, self.label_path) if not p.is_file()]
        if missing:
            self.fail(f"the training pair was not exported ({', '.join(missing)} missing)")
            return
        self._start_engine([self.output_path, self.output_path.with_suffix(".csv"), self.output_path.with_suffix(".resume.pt")])

    def _event_line(self, event: Event) -> Optional[str]:
        if event.get("event") == DONE_EVENT:
            return None  # the saved model gets its own line
        return super()._event_line(event)

    def _child_succeeded(self) -> None:
        """Save the child's checkpoint into the user models folder under a new name (verified whole, then
        renamed into place), and decide which model the panel selects next."""
        try:
            destination = user_models.save_model(self.output_path, self.parameters.models_folder, self.parameters.name,
                                                 protected=[self.parameters.base])
        except UserError as error:
            self.fail(str(error))
            return
        self.model_path = destination
        self.pick = model_to_select(self.parameters.base, destination)
        self._finish(f"New model {destination.name} in {format_duration(self.elapsed_s)}. {self.pick.reason}")

    # -- what the panel shows ------------------------------------------------------------------------

    def _child_text(self) -> str:
        return training_text(self.last_progress) if self.last_progress else "Starting the training (loading the model and the data)\u2026"


@dataclass(frozen=True)
class ModelPick:
    """The model the panel selects after a fine-tuning, and the sentence that says which and why."""

    path: Path
    reason: str
    new_is_better: bool


def model_to_select(base: Path, new: Path) -> ModelPick:
    """The new model, unless its held-out validation Dice (its card's ``dice_after``) is lower than its
    base's (``dice_before``, the same slices): then the base stays selected, and the sentence says so.
    Without both numbers (trained on marked slices only: nothing else is truth), the new model."""
    record = _lineage(new)
    before, after = record.get("dice_before"), record.get("dice_after")
    if not (_is_number(before) and _is_number(after)):
        return ModelPick(new, f"{new.name} is selected (its Dice was not measured: no slices were held out).", True)
    if after < before:
        return ModelPick(base, f"{Path(base).name} stays selected: the new model scored a validation Dice of {after:.3f} on the "
                               f"held-out slices, below its base's {before:.3f} ({new.name} is in the model list).", False)
    return ModelPick(new, f"{new.name} is selected: validation Dice {before:.3f} \u2192 {after:.3f} on the held-out slices.", True)


def _lineage(path: Path) -> dict:
    try:
        training = read_metadata(path).training
    except (UserError, OSError):
        return {}
    record = training.get("fine_tuning") if isinstance(training, dict) else None
    return record if isinstance(record, dict) else {}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def training_text(progress: Event) -> str:
    """``"Epoch 2 of 4 · loss 0.3120 · validation Dice 0.871 · about 1 min 05 s left"`` from a train ``progress`` event."""
    parts = []
    if progress.get("epoch") is not None:
        parts.append(f"Epoch {progress['epoch']}" + (f" of {progress['epochs']}" if progress.get("epochs") else ""))
    else:
        parts.append(f"Step {progress.get('done', 0)} of {progress.get('total', '?')}")
    if isinstance(progress.get("loss"), (int, float)):
        parts.append(f"loss {progress['loss']:.4f}")
    if isinstance(progress.get("val_dice"), (int, float)):
        parts.append(f"validation Dice {progress['val_dice']:.3f}")
    parts.append(format_eta(progress.get("eta_s")))
    return " \u00b7 ".join(parts)


def finetune_view(state: str, value: int = 0, text: str = "", ready: bool = True, reason: str = "") -> FineTuneView:
    """Button and progress bar for ``state`` (also before any run: ``idle``)."""
    return run_view(FINE_TUNE_BUTTON, state, value, text, ready, reason)


def finetune_readiness(volume_selected: bool, segmentation_selected: bool, base_usable: bool, segmenting: bool = False) -> Tuple[bool, str]:
    """``(ready, reason)``: whether "Fine-tune" can be pressed, and why not."""
    if segmenting:
        return False, "Wait for the segmentation to finish."
    if not base_usable:
        return False, "Choose a .safetensors model to fine-tune."
    if not volume_selected:
        return False, "Choose the volume to learn from."
    if not segmentation_selected:
        return False, "Choose its corrected segmentation (segment it first, then correct it in Segment Editor)."
    return True, ""

"""One click of "Fine-tune" in the panel's "Improve the model" section, as a state machine without Slicer or Qt.

::

    idle ──► exporting ──► training ──► saving ──► done
      │           │             │           │
      └───────────┴─────────────┴───────────┴──► failed / cancelled

The Slicer layer exports the training pair (the volume and its corrected segmentation, as a label map
on the volume's exact grid) to :attr:`FineTuneRun.image_path` and :attr:`FineTuneRun.label_path`; this
object runs ``unetseg train --init BASE ...`` in a child process through the same runner and event
schema as a segmentation (:class:`~UNetSegmentationLib.protocol.runner.EngineProcess`), into its own
temporary folder. Only when the child has finished is the new checkpoint copied, under a name of its
own, into the user models folder (renamed into place when complete): a cancel or a failure leaves that
folder as it was. Torch-, numpy- and SimpleITK-free.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.bundled import bundled_model_path
from UNetSegmentationLib.model.header import SAFETENSORS, checkpoint_kind, read_metadata
from UNetSegmentationLib.panel.log_lines import describe_event, format_duration, format_eta
from UNetSegmentationLib.panel.run import Engine, EngineFactory
from UNetSegmentationLib.protocol import runner as runner_module
from UNetSegmentationLib.protocol.events import DONE as DONE_EVENT
from UNetSegmentationLib.protocol.events import PROGRESS, START, WARNING, Event
from UNetSegmentationLib.protocol.runner import EngineProcess

IDLE, EXPORTING, TRAINING, SAVING, DONE, FAILED, CANCELLED = "idle", "exporting", "training", "saving", "done", "failed", "cancelled"
ACTIVE_STATES = (EXPORTING, TRAINING, SAVING)
FINISHED_STATES = (DONE, FAILED, CANCELLED)
TRANSITIONS = {
    IDLE: (EXPORTING, FAILED, CANCELLED),
    EXPORTING: (TRAINING, FAILED, CANCELLED),
    TRAINING: (SAVING, FAILED, CANCELLED),
    SAVING: (DONE, FAILED),
    DONE: (), FAILED: (), CANCELLED: (),
}

FINE_TUNE_TEXT = "Fine-tune"
CANCEL_TEXT = "Cancel"
PROGRESS_MAXIMUM = 100
#: progress bar value at the start of each state; training fills TRAINING..SAVING by steps
PROGRESS_AT = {IDLE: 0, EXPORTING: 2, TRAINING: 5, SAVING: 98, DONE: 100}
#: ``--train-slices``: slice numbers and ranges, e.g. ``12-18,40``
_SLICES = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")
#: characters a new model's file name keeps (others become '-')
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def model_file_stem(base: Path, volume_name: str, now: Optional[datetime.datetime] = None) -> str:
    """``<base stem>-<volume>-<YYYYMMDD-HHMMSS>``, with only characters every file system takes."""
    now = now or datetime.datetime.now()
    stem = f"{Path(base).stem}-{volume_name or 'volume'}-{now:%Y%m%d-%H%M%S}"
    return _UNSAFE.sub("-", stem).strip("-.") or "fine-tuned"


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
    ``steps_per_epoch``: None for the engine's fine-tuning defaults.
    """

    base: Path
    models_folder: Path
    name: str
    train_slices: Optional[str] = None
    label_map: Optional[str] = None
    epochs: Optional[int] = None  # None: the engine's fine-tuning defaults
    steps_per_epoch: Optional[int] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", Path(self.base))
        object.__setattr__(self, "models_folder", Path(self.models_folder))
        object.__setattr__(self, "train_slices", (self.train_slices or "").strip() or None)
        object.__setattr__(self, "label_map", (self.label_map or "").strip() or None)
        if not self.base.is_file():
            raise UserError(f"Choose the model to fine-tune: {self.base} is not a file.")
        if checkpoint_kind(self.base) != SAFETENSORS:
            raise UserError("Fine-tuning starts from a .safetensors model (a plain PyTorch file does not say its classes and normalisation).")
        read_metadata(self.base)  # a broken model says why here, before any export
        if self.train_slices is not None and not _SLICES.match(self.train_slices):
            raise UserError(f"Slices to train on: give numbers and ranges separated by commas, e.g. 12-18,40 (got {self.train_slices!r}).")
        if _UNSAFE.sub("", self.name) != self.name or not self.name.strip(".-"):
            raise UserError(f"The new model's name may hold only letters, digits, '.', '_', '+' and '-' (got {self.name!r}).")
        for value, what in ((self.epochs, "epochs"), (self.steps_per_epoch, "steps per epoch")):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"The number of {what} must be a whole number of at least 1 (got {value!r}).")
        if self.models_folder.exists() and not self.models_folder.is_dir():
            raise UserError(f"The user models folder {self.models_folder} is a file.")

    def destination(self) -> Path:
        """Where the new model lands: ``<name>.safetensors`` in the models folder, never an existing file,
        never the base model, never the bundled one."""
        protected = {self.base.resolve(), bundled_model_path().resolve()}
        for number in range(1, 1000):
            path = self.models_folder / (self.name + ("" if number == 1 else f"-{number}") + ".safetensors")
            if not path.exists() and path.resolve() not in protected:
                return path
        raise UserError(f"The user models folder {self.models_folder} already holds 999 models named {self.name}.")

    def to_arguments(self, image: Path, label: Path, output: Path) -> List[str]:
        """The ``unetseg train`` command line of this run (the process runner adds ``--progress json``)."""
        arguments = ["train", "--init", str(self.base), "--image", str(image), "--label", str(label)]
        if self.train_slices:
            arguments += ["--train-slices", self.train_slices.replace(" ", "")]
        if self.label_map:
            arguments += ["--label-map", self.label_map]
        if self.epochs is not None:
            arguments += ["--epochs", str(self.epochs)]
        if self.steps_per_epoch is not None:
            arguments += ["--steps-per-epoch", str(self.steps_per_epoch)]
        return arguments + [str(output)]


@dataclass(frozen=True)
class FineTuneView:
    """Everything the "Improve the model" section shows about the run."""

    state: str
    button_text: str
    button_enabled: bool
    button_tooltip: str
    progress_value: int
    progress_maximum: int
    progress_text: str
    settings_enabled: bool
    running: bool


class FineTuneRun:
    """One fine-tuning: the state machine plus its temporary folder, child process and new model.

    Args:
        parameters: what to fine-tune and where the model goes.
        python: interpreter of the engine child (``PythonSlicer`` inside Slicer).
        temp_root: where the temporary folder goes (default: the system's).
        idle_timeout_s: fail when the child prints no event for this long.
        on_log: called with each new log line.
        engine_factory: builds the child process (tests pass their own).
    """

    def __init__(self, parameters: FineTuneParameters, python: Optional[str] = None, temp_root=None, idle_timeout_s: Optional[float] = 1800.0,
                 on_log: Optional[Callable[[str], None]] = None, engine_factory: EngineFactory = training_process) -> None:
        self.parameters = parameters
        self.python = python
        self.temp_root = temp_root
        self.idle_timeout_s = idle_timeout_s
        self.on_log = on_log
        self.engine_factory = engine_factory
        self.state = IDLE
        self.message = ""
        self.log: List[str] = []
        self.warnings: List[str] = []
        self.engine: Optional[Engine] = None
        self.start_event: Optional[Event] = None
        self.last_progress: Optional[Event] = None
        self.done_event: Optional[Event] = None
        self.model_path: Optional[Path] = None  # the new model, once saved
        self.folder: Optional[Path] = None
        self.started_at = time.monotonic()
        self.finished_at: Optional[float] = None
        self._value = 0

    # -- files ---------------------------------------------------------------------------------------

    def _ensure_folder(self) -> Path:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="UNetSegmentation-finetune-", dir=None if self.temp_root is None else str(self.temp_root)))
        return self.folder

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

    def cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- transitions ---------------------------------------------------------------------------------

    def _enter(self, state: str) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"cannot go from {self.state} to {state}")
        self.state = state
        if state in PROGRESS_AT:
            self._value = max(self._value, PROGRESS_AT[state])
        if state in FINISHED_STATES:
            self.finished_at = time.monotonic()

    def add_log(self, line: str) -> None:
        self.log.append(line)
        if self.on_log is not None:
            self.on_log(line)

    def begin_exporting(self) -> None:
        """Enter ``exporting``: the Slicer layer now writes :attr:`image_path` and :attr:`label_path`."""
        self._enter(EXPORTING)
        self.add_log(f"Exporting the training pair for fine-tuning {self.parameters.base.name}\u2026")

    def arguments(self) -> List[str]:
        return self.parameters.to_arguments(self.image_path, self.label_path, self.output_path)

    def start_training(self) -> None:
        """Start ``unetseg train --init`` on the exported pair (the state becomes ``training`` or ``failed``)."""
        self._enter(TRAINING)
        missing = [p.name for p in (self.image_path, self.label_path) if not p.is_file()]
        if missing:
            self.fail(f"the training pair was not exported ({', '.join(missing)} missing)")
            return
        outputs = [self.output_path, self.output_path.with_suffix(".csv"), self.output_path.with_suffix(".resume.pt")]
        self.engine = self.engine_factory(self.arguments(), outputs, self.python, self.idle_timeout_s)
        try:
            self.engine.start()
        except OSError as error:
            self.fail(f"cannot start the training process ({self.engine.python}): {error}")

    def poll(self) -> List[Event]:
        """Read the child's new events (never blocks); saves the model and ends ``done`` when the child succeeded."""
        if self.state != TRAINING or self.engine is None:
            return []
        events, engine_state = self.engine.poll()
        for event in events:
            self._take(event)
        if engine_state == runner_module.DONE:
            self._save_model()
        elif engine_state == runner_module.FAILED:
            self.fail(self.engine.error_message or "the training process failed")
        elif engine_state == runner_module.CANCELLED and self.state == TRAINING:
            self.cancel()
        return events

    def _take(self, event: Event) -> None:
        kind = event.get("event")
        if kind == START:
            self.start_event = event
        elif kind == PROGRESS:
            self.last_progress = event
            total = max(1, int(event.get("total") or 1))
            done = min(total, int(event.get("done") or 0))
            self._value = max(self._value, PROGRESS_AT[TRAINING] + (PROGRESS_AT[SAVING] - PROGRESS_AT[TRAINING]) * done // total)
        elif kind == WARNING:
            self.warnings.append(str(event.get("message", "")))
        if kind == DONE_EVENT:
            self.done_event = event
            return  # the saved model gets its own line
        line = describe_event(event)
        if line:
            self.add_log(line)

    def _save_model(self) -> None:
        """Copy the child's checkpoint into the user models folder under a new name, renamed into place when whole."""
        self._enter(SAVING)
        try:
            destination = self.parameters.destination()
            destination.parent.mkdir(parents=True, exist_ok=True)
            partial = destination.with_name(f".{destination.name}.partial")
            shutil.copyfile(self.output_path, partial)
            os.replace(partial, destination)
        except (OSError, UserError) as error:
            self.fail(f"the new model could not be saved in {self.parameters.models_folder}: {error}")
            return
        self.model_path = destination
        self._enter(DONE)
        dice = (self.done_event or {}).get("validation") or {}
        self.message = f"New model {destination.name} in {format_duration(self.elapsed_s)}" + (f" (validation Dice {dice['dice']:.3f})" if isinstance(dice.get("dice"), (int, float)) else "")
        self.add_log(self.message)
        self.cleanup()

    def fail(self, message: str) -> None:
        """Stop whatever runs and enter ``failed``; nothing is left in the user models folder."""
        if self.state in FINISHED_STATES:
            return
        self._stop_engine()
        self._enter(FAILED)
        self.message = str(message) or "failed"
        self.add_log(f"Fine-tuning failed: {self.message}")
        self.cleanup()

    def cancel(self) -> None:
        """Stop the child (its whole process tree) and enter ``cancelled``; nothing is written."""
        if self.state in FINISHED_STATES or self.state == SAVING:
            return
        self._stop_engine()
        self._enter(CANCELLED)
        self.message = "Cancelled"
        self.add_log("Fine-tuning cancelled by the user")
        self.cleanup()

    def _stop_engine(self) -> None:
        if self.engine is not None and self.engine.state == runner_module.RUNNING:
            self.engine.cancel(grace_s=3.0)

    def wait(self, timeout_s: Optional[float] = None, interval_s: float = 0.2, on_poll: Optional[Callable[[], None]] = None) -> str:
        """Poll until the run has finished (for scripts and tests); returns the state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.state == TRAINING:
            self.poll()
            if on_poll is not None:
                on_poll()
            if self.state != TRAINING:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.fail(f"the fine-tuning did not finish within {format_duration(timeout_s)} and was stopped")
                break
            time.sleep(interval_s)
        return self.state

    # -- what the panel shows ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def elapsed_s(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started_at

    @property
    def progress_value(self) -> int:
        """0..100, never decreasing during a run."""
        return self._value

    def view(self, ready: bool = True, reason: str = "") -> FineTuneView:
        return finetune_view(self.state, self._value, self._state_text(), ready, reason)

    def _state_text(self) -> str:
        if self.state == EXPORTING:
            return "Exporting the volume and its segmentation\u2026"
        if self.state == TRAINING:
            return training_text(self.last_progress) if self.last_progress else "Starting the training (loading the model and the data)\u2026"
        if self.state == SAVING:
            return "Saving the new model\u2026"
        if self.state == FAILED:
            return f"Failed: {self.message}"
        return self.message


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
    if state == IDLE or state in FINISHED_STATES:
        tooltip = reason if not ready else "Train a copy of the chosen model on this volume and its corrected segmentation"
        text = text or ("Ready to fine-tune" if ready else reason) if state == IDLE else text
        return FineTuneView(state, FINE_TUNE_TEXT, bool(ready), tooltip, value if state != CANCELLED else 0, PROGRESS_MAXIMUM, text, True, False)
    cancellable = state in (EXPORTING, TRAINING)
    tooltip = "Stop the training; no model is written" if cancellable else "Saving the new model"
    return FineTuneView(state, CANCEL_TEXT, cancellable, tooltip, value, PROGRESS_MAXIMUM, text, False, True)


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

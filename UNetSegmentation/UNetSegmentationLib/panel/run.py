"""One click of "Segment this volume", as a state machine without Slicer or Qt.

::

    idle ──► installing ──► exporting ──► segmenting ──► importing ──► done
      │           │              │             │              │
      └───────────┴──────────────┴─────────────┴──────────────┴──► failed / cancelled

The Slicer module does the Slicer parts (install packages, export the volume to
:attr:`SegmentationRun.input_path`, load :attr:`output_path`), and calls this object between them;
everything else lives here: the temporary folder and its removal in every outcome, the engine
child process (:class:`~UNetSegmentationLib.protocol.runner.EngineProcess`), the log (worded by :mod:`.log_lines`), and what the
panel shows in each state (:meth:`SegmentationRun.view`: button text and enabled state, progress
bar value and text). Torch-, numpy- and SimpleITK-free.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.protocol import runner as runner_module
from UNetSegmentationLib.protocol.events import DONE as DONE_EVENT
from UNetSegmentationLib.panel.log_lines import describe_event, format_duration, progress_text
from UNetSegmentationLib.protocol.events import PROGRESS, START, WARNING, Event
from UNetSegmentationLib.protocol.runner import EngineProcess

IDLE = "idle"
INSTALLING = "installing"
EXPORTING = "exporting"
SEGMENTING = "segmenting"
IMPORTING = "importing"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
ACTIVE_STATES = (INSTALLING, EXPORTING, SEGMENTING, IMPORTING)
FINISHED_STATES = (DONE, FAILED, CANCELLED)

#: allowed transitions; any active state may also fail or be cancelled
TRANSITIONS: Dict[str, tuple] = {
    IDLE: (INSTALLING, EXPORTING, FAILED, CANCELLED),
    INSTALLING: (EXPORTING, FAILED, CANCELLED),
    EXPORTING: (SEGMENTING, FAILED, CANCELLED),
    SEGMENTING: (IMPORTING, FAILED, CANCELLED),
    IMPORTING: (DONE, FAILED, CANCELLED),
    DONE: (),
    FAILED: (),
    CANCELLED: (),
}

APPLY_TEXT = "Segment this volume"
CANCEL_TEXT = "Cancel"
PROGRESS_MAXIMUM = 100
#: progress bar value at the start of each state; segmenting fills SEGMENTING..IMPORTING by slices
PROGRESS_AT = {IDLE: 0, INSTALLING: 1, EXPORTING: 3, SEGMENTING: 5, IMPORTING: 92, DONE: 100}


def slicer_python(which: Callable[[str], Optional[str]] = shutil.which) -> Optional[str]:
    """The interpreter for the engine child inside Slicer: ``PythonSlicer`` on the PATH, or None."""
    return which("PythonSlicer")


@dataclass
class RunOptions:
    """What the panel asks for: the engine's :class:`SegmentationOptions` plus what only the panel decides.

    ``segmentation.probabilities`` is ignored: the run writes the confidence map into its temporary
    folder when ``confidence_map`` is set.
    """

    checkpoint: Path
    segmentation: SegmentationOptions = field(default_factory=SegmentationOptions)
    confidence_map: bool = False
    architecture: Optional[str] = None  # only for a plain PyTorch checkpoint (no metadata)
    classes: Optional[str] = None  # only for a plain PyTorch checkpoint, comma-separated names

    def model_arguments(self) -> List[str]:
        """``--arch``/``--classes`` of a plain PyTorch checkpoint (empty for a safetensors file)."""
        return (["--arch", self.architecture] if self.architecture else []) + (["--classes", self.classes] if self.classes else [])


class Engine(Protocol):
    """What a run needs of its engine child (:class:`~UNetSegmentationLib.protocol.runner.EngineProcess`
    is the real one): start it, poll its events and state without blocking, cancel it."""

    python: str
    state: str
    error_message: Optional[str]

    def start(self) -> "Engine": ...

    def poll(self) -> Tuple[List[Event], str]: ...

    def cancel(self, grace_s: float = 5.0) -> None: ...


#: builds the engine child of a run: ``(arguments, outputs, python, idle_timeout_s)`` → a not yet started engine
EngineFactory = Callable[[Sequence[str], Sequence[Path], Optional[str], Optional[float]], Engine]


def engine_process(arguments: Sequence[str], outputs: Sequence[Path], python: Optional[str], idle_timeout_s: Optional[float]) -> Engine:
    """The real engine child: ``python -m UNetSegmentationLib ARGUMENTS --progress json``."""
    return EngineProcess(arguments, outputs=outputs, python=python, idle_timeout_s=idle_timeout_s)


@dataclass(frozen=True)
class PanelView:
    """Everything the panel shows about the run."""

    state: str
    button_text: str
    button_enabled: bool
    button_tooltip: str
    progress_value: int
    progress_maximum: int
    progress_text: str
    settings_enabled: bool
    running: bool


class SegmentationRun:
    """One segmentation of one volume: the state machine plus its temporary files and child process.

    Args:
        options: what to run.
        python: interpreter of the engine child (``PythonSlicer`` inside Slicer).
        temp_root: where the temporary folder goes (default: the system's).
        idle_timeout_s: fail when the child prints no event for this long.
        on_log: called with each new log line.
        engine_factory: builds the child process (tests pass one that delivers events their own way).
    """

    def __init__(
        self,
        options: RunOptions,
        python: Optional[str] = None,
        temp_root=None,
        idle_timeout_s: Optional[float] = 900.0,
        on_log: Optional[Callable[[str], None]] = None,
        engine_factory: EngineFactory = engine_process,
    ) -> None:
        self.options = options
        self.engine_factory = engine_factory
        self.python = python
        self.temp_root = temp_root
        self.idle_timeout_s = idle_timeout_s
        self.on_log = on_log
        self.state = IDLE
        self.message = ""
        self.log: List[str] = []
        self.warnings: List[str] = []
        self.events: List[Event] = []
        self.engine: Optional[Engine] = None
        self.start_event: Optional[Event] = None
        self.last_progress: Optional[Event] = None
        self.done_event: Optional[Event] = None
        self.folder: Optional[Path] = None
        self.started_at = time.monotonic()
        self.finished_at: Optional[float] = None
        self._value = 0

    # -- files ---------------------------------------------------------------------------------------

    def _ensure_folder(self) -> Path:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="UNetSegmentation-", dir=None if self.temp_root is None else str(self.temp_root)))
        return self.folder

    @property
    def input_path(self) -> Path:
        """Where the Slicer layer exports the volume to."""
        return self._ensure_folder() / "input.nrrd"

    @property
    def output_path(self) -> Path:
        """The ``.seg.nrrd`` the engine writes (names, colours, terminology of the checkpoint's classes)."""
        return self._ensure_folder() / "segmentation.seg.nrrd"

    @property
    def confidence_path(self) -> Optional[Path]:
        return self._ensure_folder() / "confidence.nrrd" if self.options.confidence_map else None

    def cleanup(self) -> None:
        """Remove the temporary folder and everything in it (called in every outcome)."""
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

    def begin_installing(self) -> None:
        self._enter(INSTALLING)
        self.add_log("Installing the Python packages the segmentation needs (one time)\u2026")

    def begin_exporting(self) -> Path:
        """Enter ``exporting``; returns the file the volume must be written to."""
        self._enter(EXPORTING)
        return self.input_path

    def arguments(self) -> List[str]:
        """The ``unetseg predict`` arguments of this run: its options, with this run's files."""
        options = replace(self.options.segmentation, probabilities=self.confidence_path)
        return options.to_arguments(self.input_path, self.output_path, self.options.checkpoint, self.options.model_arguments())

    def start_segmenting(self) -> None:
        """Start the engine child on the exported volume (the state becomes ``segmenting`` or ``failed``)."""
        self._enter(SEGMENTING)
        if not self.input_path.is_file():
            self.fail("the volume was not exported (no input file was written)")
            return
        outputs = [self.output_path] + ([self.confidence_path] if self.confidence_path else [])
        self.engine = self.engine_factory(self.arguments(), outputs, self.python, self.idle_timeout_s)
        try:
            self.engine.start()
        except OSError as error:
            self.fail(f"cannot start the segmentation process ({self.engine.python}): {error}")

    def poll(self) -> List[Event]:
        """Read the child's new events (never blocks); moves to ``importing`` or ``failed`` when it ends."""
        if self.state != SEGMENTING or self.engine is None:
            return []
        events, engine_state = self.engine.poll()
        for event in events:
            self.events.append(event)
            kind = event.get("event")
            if kind == START:
                self.start_event = event
            elif kind == PROGRESS:
                self.last_progress = event
                total = max(1, int(event.get("total") or 1))
                done = min(total, int(event.get("done") or 0))
                span = PROGRESS_AT[IMPORTING] - PROGRESS_AT[SEGMENTING]
                self._value = max(self._value, PROGRESS_AT[SEGMENTING] + (span * done) // total)
            elif kind == WARNING:
                self.warnings.append(str(event.get("message", "")))
            elif kind == DONE_EVENT:
                self.done_event = event
            line = describe_event(event)
            if line:
                self.add_log(line)
        if engine_state == runner_module.DONE:
            self._enter(IMPORTING)
        elif engine_state == runner_module.FAILED:
            self.fail(self.engine.error_message or "the segmentation process failed")
        elif engine_state == runner_module.CANCELLED and self.state == SEGMENTING:
            self.cancel()
        return events

    def wait(self, timeout_s: Optional[float] = None, interval_s: float = 0.1, on_poll: Optional[Callable[[], None]] = None) -> str:
        """Poll until the child has finished (for scripts and tests); returns the state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.state == SEGMENTING:
            self.poll()
            if on_poll is not None:
                on_poll()
            if self.state != SEGMENTING:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.fail(f"the segmentation did not finish within {format_duration(timeout_s)} and was stopped")
                break
            time.sleep(interval_s)
        return self.state

    def finish(self, message: Optional[str] = None) -> None:
        """The result is in the scene: ``done``; removes the temporary files."""
        self._enter(DONE)
        self.message = message or f"Done in {format_duration(self.elapsed_s)}"
        self.add_log(self.message)
        self.cleanup()

    def fail(self, message: str) -> None:
        """Stop whatever runs and enter ``failed`` with ``message`` (the child's own words when it failed)."""
        if self.state in FINISHED_STATES:
            return
        self._stop_engine()
        self._enter(FAILED)
        self.message = str(message) or "failed"
        self.add_log(f"Failed: {self.message}")
        self.cleanup()

    def cancel(self) -> None:
        """Stop the child (its whole process tree) and enter ``cancelled``; removes the temporary files."""
        if self.state in FINISHED_STATES:
            return
        self._stop_engine()
        self._enter(CANCELLED)
        self.message = "Cancelled"
        self.add_log("Cancelled by the user")
        self.cleanup()

    def _stop_engine(self) -> None:
        if self.engine is not None and self.engine.state == runner_module.RUNNING:
            self.engine.cancel(grace_s=3.0)

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

    def view(self, ready: bool = True, reason: str = "") -> PanelView:
        """Button and progress bar for the current state; ``ready``/``reason`` say whether the inputs allow a run."""
        return panel_view(self.state, self._value, self._state_text(), ready, reason)

    def _state_text(self) -> str:
        state = self.state
        if state == INSTALLING:
            return "Installing dependencies (one time, may take several minutes)\u2026"
        if state == EXPORTING:
            return "Exporting the volume\u2026"
        if state == SEGMENTING:
            if self.last_progress:
                p = self.last_progress
                return progress_text(int(p.get("done") or 0), int(p.get("total") or 0), p.get("rate_per_s"), p.get("eta_s"))
            if self.start_event:
                return f"Segmenting: 0 of {self.start_event.get('total', '?')} slices, estimating time left"
            return "Starting the segmentation (loading the model)\u2026"
        if state == IMPORTING:
            return "Importing the segmentation\u2026"
        if state == DONE:
            return self.message
        if state == FAILED:
            return f"Failed: {self.message}"
        if state == CANCELLED:
            return "Cancelled"
        return ""


def panel_view(state: str, value: int = 0, text: str = "", ready: bool = True, reason: str = "") -> PanelView:
    """The button and progress bar for ``state`` (also used before any run exists: ``idle``)."""
    if state == IDLE or state in FINISHED_STATES:
        tooltip = reason if not ready else "Segment the input volume with the chosen model"
        shown_value = value if state != CANCELLED else 0
        if state == IDLE:
            text = text or ("Ready" if ready else reason)
        return PanelView(state, APPLY_TEXT, bool(ready), tooltip, shown_value, PROGRESS_MAXIMUM, text, True, False)
    cancellable = state == SEGMENTING
    tooltip = "Stop the segmentation; nothing is added to the scene" if cancellable else "This step cannot be interrupted"
    return PanelView(state, CANCEL_TEXT, cancellable, tooltip, value, PROGRESS_MAXIMUM, text, False, True)

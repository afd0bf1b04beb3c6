"""One click of "Segment this volume", as a state machine without Slicer or Qt.

::

    idle ──► installing ──► exporting ──► segmenting ──► importing ──► done
      │           │              │             │              │
      └───────────┴──────────────┴─────────────┴──────────────┴──► failed / cancelled

The Slicer module does the Slicer parts (install packages, export the volume to
:attr:`SegmentationRun.input_path`, load :attr:`output_path`), and calls this object between them.
This file says what is particular to a segmentation: its states and their transitions, the
``unetseg predict`` command line, its files, and what the panel shows in each state
(:meth:`SegmentationRun.view`: button text and enabled state, progress bar value and text), and whether a
run goes to the session's warm engine (:mod:`.warm_engine`; a second segmentation pays no start-up) or to a
``unetseg predict`` child (plain PyTorch checkpoints, which the warm engine does not serve). What every
run shares (the engine child or warm request, :class:`~UNetSegmentationLib.protocol.runner.EngineProcess`; the log,
worded by :mod:`.log_lines`; the temporary folder and its removal in every outcome; failure and
cancel) is :class:`~UNetSegmentationLib.panel.child_run.ChildRun`. Torch-, numpy- and SimpleITK-free.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from UNetSegmentationLib.inference.options import SegmentationOptions
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
from UNetSegmentationLib.panel.log_lines import format_duration, progress_text
from UNetSegmentationLib.panel.warm_engine import WarmEngineFactory
from UNetSegmentationLib.protocol.runner import EngineProcess

#: this module's vocabulary: the states of a segmentation (the shared ones come from .child_run), what
#: the panel shows, and the run itself (the Slicer module reads FINISHED_STATES, the tests CANCEL_TEXT)
__all__ = [
    "IDLE", "INSTALLING", "EXPORTING", "SEGMENTING", "IMPORTING", "DONE", "FAILED", "CANCELLED", "ACTIVE_STATES", "FINISHED_STATES",
    "TRANSITIONS", "APPLY_TEXT", "CANCEL_TEXT", "PROGRESS_MAXIMUM", "PROGRESS_AT", "SEGMENT_BUTTON",
    "slicer_python", "RunOptions", "Engine", "EngineFactory", "engine_process", "PanelView", "SegmentationRun", "panel_view",
]

INSTALLING = "installing"
EXPORTING = "exporting"
SEGMENTING = "segmenting"
IMPORTING = "importing"
ACTIVE_STATES = (INSTALLING, EXPORTING, SEGMENTING, IMPORTING)

#: allowed transitions; any active state may also fail or be cancelled
TRANSITIONS: Dict[str, Tuple[str, ...]] = {
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
#: progress bar value at the start of each state; segmenting fills SEGMENTING..IMPORTING by slices
PROGRESS_AT = {IDLE: 0, INSTALLING: 1, EXPORTING: 3, SEGMENTING: 5, IMPORTING: 92, DONE: 100}
#: the button: exporting and importing run in Slicer's main thread and cannot be interrupted
SEGMENT_BUTTON = ButtonWords(
    start_text=APPLY_TEXT,
    start_tooltip="Segment the input volume with the chosen model",
    ready_text="Ready",
    cancellable_states=(SEGMENTING,),
    cancel_tooltip="Stop the segmentation; nothing is added to the scene",
    busy_tooltip="This step cannot be interrupted",
)


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

    def warm_engine_serves(self) -> bool:
        """Whether the warm engine can run this: any checkpoint but a plain PyTorch file named with
        ``--arch``/``--classes`` (a request has no fields for those; such a run keeps its own child)."""
        return not self.model_arguments()


def engine_process(arguments: Sequence[str], outputs: Sequence[Path], python: Optional[str], idle_timeout_s: Optional[float]) -> Engine:
    """The real engine child: ``python -m UNetSegmentationLib ARGUMENTS --progress json``."""
    return EngineProcess(arguments, outputs=outputs, python=python, idle_timeout_s=idle_timeout_s)


class SegmentationRun(ChildRun):
    """One segmentation of one volume: the state machine plus its temporary files and child process.

    Args:
        options: what to run.
        python: interpreter of the engine child (``PythonSlicer`` inside Slicer).
        temp_root: where the temporary folder goes (default: the system's).
        idle_timeout_s: fail when the child prints no event for this long.
        on_log: called with each new log line.
        engine_factory: builds the child process (tests pass one that delivers events their own way).
        warm_engine: builds a request to a warm engine (``warm_engine.SESSION_ENGINE.requests(python)`` in
            Slicer; tests pass ``warm_requests(client)`` or a fake); None: every run starts a child.
    """

    transitions = TRANSITIONS
    active_states = ACTIVE_STATES
    progress_at = PROGRESS_AT
    child_state = SEGMENTING
    after_child_state = IMPORTING
    state_texts = {
        INSTALLING: "Installing dependencies (one time, may take several minutes)\u2026",
        EXPORTING: "Exporting the volume\u2026",
        IMPORTING: "Importing the segmentation\u2026",
    }
    button_words = SEGMENT_BUTTON
    folder_prefix = "UNetSegmentation-"
    process_name = "segmentation"
    run_name = "segmentation"
    failed_line = "Failed: {message}"
    cancelled_line = "Cancelled by the user"
    wait_interval_s = 0.1

    def __init__(
        self,
        options: RunOptions,
        python: Optional[str] = None,
        temp_root: Union[str, Path, None] = None,
        idle_timeout_s: Optional[float] = 900.0,
        on_log: Optional[Callable[[str], None]] = None,
        engine_factory: EngineFactory = engine_process,
        warm_engine: Optional[WarmEngineFactory] = None,
    ) -> None:
        super().__init__(python=python, temp_root=temp_root, idle_timeout_s=idle_timeout_s, on_log=on_log, engine_factory=engine_factory)
        self.options = options
        self.warm_engine = warm_engine

    # -- files ---------------------------------------------------------------------------------------

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

    # -- transitions ---------------------------------------------------------------------------------

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

    @property
    def uses_warm_engine(self) -> bool:
        """This run is a request to the warm engine, not a child of its own."""
        return self.warm_engine is not None and self.options.warm_engine_serves()

    def start_segmenting(self) -> None:
        """Start the segmentation of the exported volume: a request to the warm engine when it serves the
        checkpoint, else an engine child (the state becomes ``segmenting`` or ``failed``)."""
        self._enter(SEGMENTING)
        if not self.input_path.is_file():
            self.fail("the volume was not exported (no input file was written)")
            return
        if self.uses_warm_engine:
            options = replace(self.options.segmentation, probabilities=self.confidence_path)
            self._start_engine((), self.warm_engine(self.input_path, self.output_path, options, self.options.checkpoint))
            return
        self._start_engine([self.output_path] + ([self.confidence_path] if self.confidence_path else []))

    def finish(self, message: Optional[str] = None) -> None:
        """The result is in the scene: ``done``; removes the temporary files."""
        self._finish(message or f"Done in {format_duration(self.elapsed_s)}")

    def finish_imported(self, segment_count: int, node_name: str) -> None:
        """``done``, saying how long, how many segments went into which node, and whether there were warnings."""
        warned = " (with warnings, see the log)" if self.warnings else ""
        self.finish(f"Done in {format_duration(self.elapsed_s)}: {segment_count} segment(s) in '{node_name}'{warned}")

    # -- what the panel shows ------------------------------------------------------------------------

    def _child_text(self) -> str:
        if self.last_progress:
            p = self.last_progress
            return progress_text(int(p.get("done") or 0), int(p.get("total") or 0), p.get("rate_per_s"), p.get("eta_s"))
        if self.start_event:
            return f"Segmenting: 0 of {self.start_event.get('total', '?')} slices, estimating time left"
        if self.uses_warm_engine:
            return "Starting the segmentation (the first of a session starts the engine)\u2026"
        return "Starting the segmentation (loading the model)\u2026"


def panel_view(state: str, value: int = 0, text: str = "", ready: bool = True, reason: str = "") -> PanelView:
    """The button and progress bar for ``state`` (also used before any run exists: ``idle``)."""
    return run_view(SEGMENT_BUTTON, state, value, text, ready, reason)

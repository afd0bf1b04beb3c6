"""What every run behind a panel button has in common: one engine child process, driven by a state
machine whose table the run gives, with its log, warnings, temporary folder, failure, cancel and view.

:class:`~UNetSegmentationLib.panel.run.SegmentationRun` (``unetseg predict``) and
:class:`~UNetSegmentationLib.panel.finetune_run.FineTuneRun` (``unetseg train --init``) are the two
runs: each names its states, their transitions, the progress value at the start of each, the state its
child runs in and the one its child's success leads to, and its own words. :class:`ChildRun` decides
once how any run moves between them, reads the child's events
(:mod:`~UNetSegmentationLib.protocol.events`), stops the child, and removes the temporary folder in
every outcome. Torch-, numpy- and SimpleITK-free.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Optional, Protocol, Sequence, Tuple, Union

from UNetSegmentationLib.panel.log_lines import describe_event, format_duration
from UNetSegmentationLib.protocol import runner as runner_module
from UNetSegmentationLib.protocol.events import DONE as DONE_EVENT
from UNetSegmentationLib.protocol.events import PROGRESS, START, WARNING, Event

#: the states every run has: before it starts, and its three outcomes
IDLE = "idle"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
FINISHED_STATES = (DONE, FAILED, CANCELLED)

CANCEL_TEXT = "Cancel"
PROGRESS_MAXIMUM = 100
#: seconds a stopped engine child gets to end by itself before its process tree is killed
STOP_GRACE_S = 3.0


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


@dataclass(frozen=True)
class PanelView:
    """Everything the panel shows about a run."""

    state: str
    button_text: str
    button_enabled: bool
    button_tooltip: str
    progress_value: int
    progress_maximum: int
    progress_text: str
    settings_enabled: bool
    running: bool


@dataclass(frozen=True)
class ButtonWords:
    """What one run's button and idle progress text say, and in which active states the button cancels."""

    start_text: str  # the button while no run is active ("Segment this volume")
    start_tooltip: str  # its tooltip when the inputs allow a run (otherwise: why not)
    ready_text: str  # the progress text in ``idle`` when the inputs allow a run
    cancellable_states: Tuple[str, ...]  # active states the button cancels; in the others it is disabled
    cancel_tooltip: str
    busy_tooltip: str  # the disabled button's tooltip in the other active states


def run_view(words: ButtonWords, state: str, value: int = 0, text: str = "", ready: bool = True, reason: str = "") -> PanelView:
    """The button and progress bar of a run in ``state`` (also before any run exists: ``idle``);
    ``ready``/``reason`` say whether the inputs allow a run."""
    if state == IDLE or state in FINISHED_STATES:
        tooltip = reason if not ready else words.start_tooltip
        if state == IDLE:
            text = text or (words.ready_text if ready else reason)
        shown_value = 0 if state == CANCELLED else value  # a cancelled run made nothing: the bar empties
        return PanelView(state, words.start_text, bool(ready), tooltip, shown_value, PROGRESS_MAXIMUM, text, True, False)
    cancellable = state in words.cancellable_states
    tooltip = words.cancel_tooltip if cancellable else words.busy_tooltip
    return PanelView(state, CANCEL_TEXT, cancellable, tooltip, value, PROGRESS_MAXIMUM, text, False, True)


class ChildRun:
    """One run of an engine child: the state machine, the child, the log and the temporary folder.

    A run class gives, as class attributes, the table of its state machine and its words, and starts its
    child with :meth:`_start_engine` once it has entered :attr:`child_state`. When the child has
    succeeded the run enters :attr:`after_child_state` and calls :meth:`_child_succeeded`.

    Args:
        python: interpreter of the engine child (``PythonSlicer`` inside Slicer).
        temp_root: where the temporary folder goes (default: the system's).
        idle_timeout_s: fail when the child prints no event for this long.
        on_log: called with each new log line.
        engine_factory: builds the child process (tests pass one that delivers events their own way).
    """

    #: allowed transitions: state → the states it may enter
    transitions: ClassVar[Dict[str, Tuple[str, ...]]]
    #: states in which the run is under way (the panel's settings are locked)
    active_states: ClassVar[Tuple[str, ...]]
    #: progress bar value at the start of each state; the child's progress fills child_state..after_child_state
    progress_at: ClassVar[Dict[str, int]]
    #: the state the engine child runs in, and the one its success leads to
    child_state: ClassVar[str]
    after_child_state: ClassVar[str]
    #: the progress text of each active state other than child_state (that one comes from the child's events)
    state_texts: ClassVar[Dict[str, str]]
    button_words: ClassVar[ButtonWords]
    #: name prefix of the temporary folder
    folder_prefix: ClassVar[str]
    #: the child in messages: "cannot start the {process_name} process", "the {process_name} process failed"
    process_name: ClassVar[str]
    #: the run in the time-out message of :meth:`wait`: "the {run_name} did not finish within ..."
    run_name: ClassVar[str]
    #: the log line of a failure (``{message}``: why) and of a cancel
    failed_line: ClassVar[str]
    cancelled_line: ClassVar[str]
    #: how often :meth:`wait` polls when not told
    wait_interval_s: ClassVar[float]

    def __init__(
        self,
        python: Optional[str],
        temp_root: Union[str, Path, None],
        idle_timeout_s: Optional[float],
        on_log: Optional[Callable[[str], None]],
        engine_factory: EngineFactory,
    ) -> None:
        self.python = python
        self.temp_root = temp_root
        self.idle_timeout_s = idle_timeout_s
        self.on_log = on_log
        self.engine_factory = engine_factory
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
            self.folder = Path(tempfile.mkdtemp(prefix=self.folder_prefix, dir=None if self.temp_root is None else str(self.temp_root)))
        return self.folder

    def cleanup(self) -> None:
        """Remove the temporary folder and everything in it (called in every outcome)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- transitions ---------------------------------------------------------------------------------

    def _enter(self, state: str) -> None:
        if state not in self.transitions[self.state]:
            raise RuntimeError(f"cannot go from {self.state} to {state}")
        self.state = state
        if state in self.progress_at:
            self._value = max(self._value, self.progress_at[state])
        if state in FINISHED_STATES:
            self.finished_at = time.monotonic()

    def add_log(self, line: str) -> None:
        self.log.append(line)
        if self.on_log is not None:
            self.on_log(line)

    def arguments(self) -> List[str]:
        """The engine command line of this run (the process runner adds ``--progress json``)."""
        raise NotImplementedError

    def _start_engine(self, outputs: Sequence[Path], engine: Optional[Engine] = None) -> None:
        """Start the child on :meth:`arguments`, writing ``outputs`` (or start ``engine``, a request to a warm
        engine, built by the run); the run fails when it cannot start."""
        self.engine = engine or self.engine_factory(self.arguments(), outputs, self.python, self.idle_timeout_s)
        try:
            self.engine.start()
        except OSError as error:
            self.fail(f"cannot start the {self.process_name} process ({self.engine.python}): {error}")

    def poll(self) -> List[Event]:
        """Read the child's new events (never blocks); when the child has ended, the run moves on to
        :attr:`after_child_state`, fails with the child's own message, or is cancelled."""
        if self.state != self.child_state or self.engine is None:
            return []
        events, engine_state = self.engine.poll()
        for event in events:
            self._take(event)
        if engine_state == runner_module.DONE:
            self._enter(self.after_child_state)
            self._child_succeeded()
        elif engine_state == runner_module.FAILED:
            self.fail(self.engine.error_message or f"the {self.process_name} process failed")
        elif engine_state == runner_module.CANCELLED and self.state == self.child_state:
            self.cancel()
        return events

    def _take(self, event: Event) -> None:
        """Keep one event of the child: the start, the latest progress (which moves the bar), warnings, the done summary."""
        self.events.append(event)
        kind = event.get("event")
        if kind == START:
            self.start_event = event
        elif kind == PROGRESS:
            self.last_progress = event
            total = max(1, int(event.get("total") or 1))
            done = min(total, int(event.get("done") or 0))
            first, last = self.progress_at[self.child_state], self.progress_at[self.after_child_state]
            self._value = max(self._value, first + (last - first) * done // total)
        elif kind == WARNING:
            self.warnings.append(str(event.get("message", "")))
        elif kind == DONE_EVENT:
            self.done_event = event
        line = self._event_line(event)
        if line:
            self.add_log(line)

    def _event_line(self, event: Event) -> Optional[str]:
        """The log line of a child's event (None: no line)."""
        return describe_event(event)

    def _child_succeeded(self) -> None:
        """What follows the child's success, once in :attr:`after_child_state` (nothing by default: the caller goes on)."""

    def wait(self, timeout_s: Optional[float] = None, interval_s: Optional[float] = None, on_poll: Optional[Callable[[], None]] = None) -> str:
        """Poll every ``interval_s`` (default :attr:`wait_interval_s`) until the child has finished (for
        scripts and tests); after ``timeout_s`` the run fails. Returns the state."""
        interval_s = self.wait_interval_s if interval_s is None else interval_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.state == self.child_state:
            self.poll()
            if on_poll is not None:
                on_poll()
            if self.state != self.child_state:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.fail(f"the {self.run_name} did not finish within {format_duration(timeout_s)} and was stopped")
                break
            time.sleep(interval_s)
        return self.state

    def _finish(self, message: str) -> None:
        """Enter ``done`` with ``message``; removes the temporary files."""
        self._enter(DONE)
        self.message = message
        self.add_log(self.message)
        self.cleanup()

    def fail(self, message: str) -> None:
        """Stop whatever runs and enter ``failed`` with ``message`` (the child's own words when it failed)."""
        if self.state in FINISHED_STATES:
            return
        self._stop_engine()
        self._enter(FAILED)
        self.message = str(message) or "failed"
        self.add_log(self.failed_line.format(message=self.message))
        self.cleanup()

    def cancel(self) -> None:
        """Stop the child (its whole process tree) and enter ``cancelled``; removes the temporary files.
        Ignored where the table allows no cancel (a finished run, a step that must complete)."""
        if CANCELLED not in self.transitions[self.state]:
            return
        self._stop_engine()
        self._enter(CANCELLED)
        self.message = "Cancelled"
        self.add_log(self.cancelled_line)
        self.cleanup()

    def _stop_engine(self) -> None:
        if self.engine is not None and self.engine.state == runner_module.RUNNING:
            self.engine.cancel(grace_s=STOP_GRACE_S)

    # -- what the panel shows ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.state in self.active_states

    @property
    def elapsed_s(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started_at

    @property
    def progress_value(self) -> int:
        """0..100, never decreasing during a run."""
        return self._value

    def view(self, ready: bool = True, reason: str = "") -> PanelView:
        """Button and progress bar for the current state; ``ready``/``reason`` say whether the inputs allow a run."""
        return run_view(self.button_words, self.state, self._value, self._state_text(), ready, reason)

    def _state_text(self) -> str:
        if self.state == self.child_state:
            return self._child_text()
        if self.state == FAILED:
            return f"Failed: {self.message}"
        # idle, done and cancelled say the run's message ("", the outcome, "Cancelled")
        return self.state_texts.get(self.state, self.message)

    def _child_text(self) -> str:
        """The progress text while the child runs, from its events."""
        raise NotImplementedError

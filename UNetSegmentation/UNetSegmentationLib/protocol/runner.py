"""Run the engine in a child process and follow it: the process runner the Slicer module drives.

The child is ``PYTHON -m UNetSegmentationLib <command> ... --progress json``: a files-in/files-out
script that prints one JSON event per line on stdout (the schema of :mod:`.events`, read here with
:func:`~.events.parse_event` only). Threads read its stdout and stderr into a queue, so the GUI thread only calls :meth:`EngineProcess.poll` from a
timer and never blocks. :meth:`EngineProcess.cancel` terminates the whole process tree (the
child runs in its own process group / session, so launchers such as ``PythonSlicer`` and any
workers go too), then kills what is left. After a cancel or a failure no output file of the run
remains. No Slicer imports here.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from UNetSegmentationLib.io.outputs import remove_leftovers
from UNetSegmentationLib.protocol.child_environment import child_environment
from UNetSegmentationLib.protocol.events import DONE as DONE_EVENT
from UNetSegmentationLib.protocol.events import ERROR, PROGRESS, DoneEvent, Event, ProgressEvent, make_event, parse_event

IDLE, RUNNING, DONE, FAILED, CANCELLED = "idle", "running", "done", "failed", "cancelled"
FINISHED_STATES = (DONE, FAILED, CANCELLED)
#: the runner's own last event of a run, after the child's: ``{"event": "exit", "returncode": N}``
EXIT = "exit"


class EngineProcess:
    """One run of an ``unetseg`` command in a child process.

    Args:
        arguments: the command's arguments (e.g. ``SegmentationOptions.to_arguments(...)``).
        outputs: files the run writes; removed after a failure or cancel (unless they existed
            before the run and were left untouched).
        python: the interpreter (``PythonSlicer`` inside Slicer; ``sys.executable`` by default).
        idle_timeout_s: fail the run if the child prints no event for this long (a hung child).
        env: extra environment variables for the child.
        what: what the child does, in its failure messages ("the segmentation process failed: ...").
        interactive: the child reads lines on its stdin, written with :meth:`send` (the warm engine's
            requests, ``engine/client.py``); else its stdin is empty.
    """

    def __init__(
        self,
        arguments: Sequence[str],
        outputs: Iterable = (),
        python: Optional[str] = None,
        idle_timeout_s: Optional[float] = None,
        env: Optional[Dict[str, str]] = None,
        what: str = "segmentation",
        interactive: bool = False,
    ) -> None:
        self.arguments = list(arguments)
        self.outputs = [Path(p) for p in outputs]
        self.python = python or sys.executable
        self.idle_timeout_s = idle_timeout_s
        self.extra_env = dict(env or {})
        self.what = what
        self.interactive = interactive
        self.state = IDLE
        self.error_message: Optional[str] = None
        self.returncode: Optional[int] = None
        self.last_progress: Optional[ProgressEvent] = None
        self.done_event: Optional[DoneEvent] = None  # the command's payload: events.DONE_PAYLOADS
        self._process: Optional[subprocess.Popen] = None
        self._events: "queue.Queue[Event]" = queue.Queue()
        self._stderr_tail: collections.deque = collections.deque(maxlen=40)
        self._error_event: Optional[str] = None
        self._before: Dict[Path, Optional[Tuple[int, int]]] = {}
        self._threads: List[threading.Thread] = []
        self._last_event_time = 0.0
        self._lock = threading.Lock()
        self._exit_posted = False

    # -- starting ------------------------------------------------------------------------------

    @property
    def command(self) -> List[str]:
        return [self.python, "-m", "UNetSegmentationLib", *self.arguments, "--progress", "json"]

    def start(self) -> "EngineProcess":
        if self.state != IDLE:
            raise RuntimeError("an EngineProcess runs once")
        self._before = {p: _signature(p) for p in self.outputs}
        env = child_environment(extra=self.extra_env)
        popen_options = {}
        if os.name == "nt":  # pragma: no cover - Windows
            popen_options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            popen_options["start_new_session"] = True  # own process group: cancel reaches every descendant
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE if self.interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **popen_options,
        )
        self.state = RUNNING
        self._last_event_time = time.monotonic()
        self._threads = [
            threading.Thread(target=self._read_stdout, name="unetseg-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="unetseg-stderr", daemon=True),
            threading.Thread(target=self._watch, name="unetseg-watch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def send(self, line: str) -> None:
        """Write ``line`` (one line, no newline) to an interactive child's stdin; OSError when it is gone."""
        if self._process is None or self._process.stdin is None:
            raise OSError("the child does not read its stdin")
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    # -- reading (threads) -------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self._process and self._process.stdout
        for line in self._process.stdout:
            event = parse_event(line)
            if event is not None:
                self._events.put(event)
        returncode = self._process.wait()
        self._threads[1].join(timeout=5)  # the stderr tail, for the failure message
        self._post_exit(returncode)

    def _watch(self) -> None:
        """When the child ends, end what it left in its process group (a worker, a grandchild): no
        orphans, and no pipe held open by one, which would hide the child's end from the readers."""
        assert self._process
        returncode = self._process.wait()
        if os.name != "nt":
            _signal_group(self._process.pid, signal.SIGKILL)
        self._threads[0].join(timeout=5)
        if self._threads[0].is_alive():  # a process outside the group still holds stdout
            self._post_exit(returncode)

    def _post_exit(self, returncode: int) -> None:
        with self._lock:
            if self._exit_posted:
                return
            self._exit_posted = True
        self._events.put(exit_event(returncode))

    def _read_stderr(self) -> None:
        assert self._process and self._process.stderr
        for line in self._process.stderr:
            line = line.rstrip()
            if line:
                self._stderr_tail.append(line)

    # -- driving (GUI thread) ----------------------------------------------------------------------

    def poll(self) -> Tuple[List[Event], str]:
        """New events since the last call and the current state; never blocks."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            events.append(event)
            self._handle(event)
        if (
            self.state == RUNNING
            and self.idle_timeout_s is not None
            and time.monotonic() - self._last_event_time > self.idle_timeout_s
        ):
            self._terminate_tree()
            self._finish(FAILED, f"the {self.what} process stopped responding (no progress for {self.idle_timeout_s:g} s) and was stopped")
            events.append(make_event(ERROR, message=self.error_message))
        return events, self.state

    def _handle(self, event: Event) -> None:
        self._last_event_time = time.monotonic()
        kind = event.get("event")
        if kind == PROGRESS:
            self.last_progress = event
        elif kind == DONE_EVENT:
            self.done_event = event
        elif kind == ERROR:
            self._error_event = str(event.get("message", "unknown error"))
        elif kind == EXIT and self.state == RUNNING:
            self.returncode = event["returncode"]
            if self.returncode == 0 and self.done_event is not None:
                self._finish(DONE)
            else:
                self._finish(FAILED, self._failure_message())

    def _failure_message(self) -> str:
        if self._error_event:
            return self._error_event
        code = self.returncode
        if code is not None and code < 0:  # killed by a signal: say which, whatever stderr held before
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = "; the machine may have run out of memory" if -code == getattr(signal, "SIGKILL", 9) else ""
            return f"the {self.what} process was killed by {name}{hint}"
        for line in reversed(self._stderr_tail):  # e.g. the last line of a traceback
            if line.strip() and not line.startswith(" "):
                return f"the {self.what} process failed: {line.strip()}"
        return f"the {self.what} process exited with code {code} without a result"

    def _finish(self, state: str, message: Optional[str] = None) -> None:
        with self._lock:
            if self.state in FINISHED_STATES:
                return
            self.state = state
            self.error_message = message
        if state != DONE:
            self._remove_outputs()

    def cancel(self, grace_s: float = 5.0) -> None:
        """Stop the run: SIGTERM to the whole process group, SIGKILL after ``grace_s``; remove outputs."""
        if self.state != RUNNING:
            return
        self._terminate_tree(grace_s)
        self._finish(CANCELLED, "cancelled")

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> str:
        """Block until the run finishes (for scripts and tests); returns the final state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            _, state = self.poll()
            if state in FINISHED_STATES or state == IDLE:
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run still {state} after {timeout} s")
            time.sleep(interval)

    # -- stopping ------------------------------------------------------------------------------------

    def _terminate_tree(self, grace_s: float = 5.0) -> None:
        process = self._process
        if process is None:
            return
        if os.name == "nt":  # pragma: no cover - Windows
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True)
        else:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process.pid, signal.SIGKILL)  # whatever is left in the group, child or grandchild
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
        self.returncode = process.returncode

    def _remove_outputs(self) -> None:
        remove_leftovers(self.outputs, self.pid)  # the killed child's temporary and lock files
        for path in self.outputs:
            if path.exists() and _signature(path) != self._before.get(path):
                with contextlib.suppress(OSError):
                    path.unlink()


def exit_event(returncode: int) -> Event:
    """The runner's own event after the child ended (not part of the child's schema)."""
    return {"event": EXIT, "returncode": returncode}


def _signature(path: Path) -> Optional[Tuple[int, int]]:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)  # the child leads its own session, so its pgid is its pid

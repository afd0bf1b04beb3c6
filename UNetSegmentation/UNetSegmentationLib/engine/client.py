"""The warm engine's client: starts ``unetseg serve`` when a request needs it, sends requests, and hands
back each request's events. What the Slicer panel uses: no Slicer, torch or numpy here.

The engine runs through the process runner (:class:`~..protocol.runner.EngineProcess`: the child
environment, its own process group, readers on threads, a poll that never blocks). Every request gets an
``id`` from the client; :meth:`EngineClient.poll` sorts the engine's events by it and
:meth:`EngineClient.events` yields one request's events up to its ``done`` or ``error``.

When the engine process dies (a crash, the out-of-memory killer, a kill), it is said once: the requests
it had begun to answer end with one ``error`` event each (their temporary files and locks removed, as
the runner does after a killed run); if none had, the next request's events start with one ``warning``
saying so. The next request starts a new engine, which loads its models again. A request the dead engine
never answered (written while it was dying, so perhaps never read) is sent to the new engine, once.

An engine that hangs (a request that runs forever, a process stopped) is treated as dead: when requests
are open and the engine has sent no event for ``stall_s`` seconds (a run reports every batch), the client
ends its process group, each open request ends with one ``error`` saying so (its temporary files and locks
removed), and the next request starts a new engine. The client never waits on an engine for ever.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import time
from pathlib import Path
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from UNetSegmentationLib.engine.requests import CANCEL, SEGMENT, SEGMENT_SLICES, SHUTDOWN, RequestId, request_line
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.io.outputs import remove_leftovers
from UNetSegmentationLib.model.bundled import BUNDLED_SHORT_NAME
from UNetSegmentationLib.protocol.events import DONE, ERROR, LOG, WARNING, Event, make_event
from UNetSegmentationLib.protocol.runner import CANCELLED, EXIT, FAILED, IDLE, RUNNING, EngineProcess
from UNetSegmentationLib.protocol.runner import DONE as FINISHED

#: seconds ``close`` waits for the engine to end after ``shutdown`` before it ends its process group
CLOSE_WAIT_S = 10.0
#: how often the blocking helpers poll the engine's events
POLL_INTERVAL_S = 0.02
#: seconds an open request may go without any event from the engine before the engine is taken for hung
#: (a run reports every batch; a first run's ONNX export and model load say so as they start)
DEFAULT_STALL_S = 300.0
#: seconds a hung engine gets between SIGTERM and SIGKILL
STALL_KILL_GRACE_S = 2.0


class _EngineChild(EngineProcess):
    """The runner's child process, whose run is the engine's whole life: a request's ``error`` event is
    that request's, not the process's, so only the process's own end decides its state and message."""

    def _handle(self, event: Event) -> None:
        if event.get("event") == EXIT:
            super()._handle(event)


class EngineClient:
    """Requests to one warm engine at a time, started on the first request and after a death.

    Args:
        python: the interpreter of the engine (``PythonSlicer`` inside Slicer; default this one's).
        models: models the engine keeps loaded (``unetseg serve --models``; None: its default).
        env: extra environment variables for the engine.
        stall_s: seconds without any event from the engine, while requests are open, after which the
            engine is taken for hung and replaced (None: wait for ever).
    """

    def __init__(self, python: Optional[str] = None, models: Optional[int] = None, env: Optional[Dict[str, str]] = None, stall_s: Optional[float] = DEFAULT_STALL_S) -> None:
        self.python = python
        self.models = models
        self.env = dict(env or {})
        self.stall_s = stall_s
        self._last_sign = time.monotonic()  # the engine's last event, or the last request sent to an idle engine
        self.starts = 0  # engines started so far (1 + the deaths recovered from)
        self._child: Optional[_EngineChild] = None
        self._ids = itertools.count(1)
        self._open: Dict[RequestId, List[Path]] = {}  # requests without their last event yet → their outputs
        self._lines: Dict[RequestId, str] = {}  # … and their request lines
        self._answered: Set[RequestId] = set()  # open requests the engine has sent an event of
        self._resent: Set[RequestId] = set()  # requests sent again to a new engine (once only)
        self._events: Dict[RequestId, Deque[Event]] = collections.defaultdict(collections.deque)
        self._death_untold: Optional[str] = None  # an engine that died between requests, said on the next one

    # -- requests ----------------------------------------------------------------------------------

    def segment(self, input_path, output_path, options: Optional[SegmentationOptions] = None, checkpoint=None, slices: Optional[str] = None, series: Optional[str] = None) -> RequestId:
        """Send a ``segment`` request (``segment_slices`` with ``slices``, e.g. ``"12-18,40"``); returns its id."""
        options = options or SegmentationOptions()
        named = checkpoint is None or str(checkpoint) == BUNDLED_SHORT_NAME  # the engine resolves the short name
        fields = {"input": _absolute(input_path), "output": _absolute(output_path), "options": options, "series": series,
                  "checkpoint": checkpoint if named else _absolute(checkpoint)}
        outputs = [Path(_absolute(p)) for p in (output_path, options.probabilities, options.review_list) if p is not None]
        if slices is not None:
            return self.submit(SEGMENT_SLICES, outputs, slices=slices, **fields)
        return self.submit(SEGMENT, outputs, **fields)

    def submit(self, kind: str, outputs: Sequence[Path] = (), **fields: Any) -> RequestId:
        """Send a request of ``kind`` with ``fields`` (starting an engine first when none runs); its
        events come from :meth:`poll` or :meth:`events` under the returned id."""
        request_id = f"r{next(self._ids)}"
        self._send(request_id, request_line(kind, request_id, **fields), list(outputs))
        return request_id

    def _send(self, request_id: RequestId, line: str, outputs: List[Path]) -> None:
        """Send a request's line, starting an engine first when none runs (an engine found dead on the way
        is replaced once; a new one that cannot take the line ends the request with one ``error``)."""
        while True:
            started = self._ensure_engine(request_id)
            try:
                self._child.send(line)
            except OSError:
                self._ended(wait=True)
                if not started:
                    continue
                self._events[request_id].append(make_event(ERROR, id=request_id, message=str(self._death_untold)))
                self._death_untold = None
                return
            if not self._open:
                self._last_sign = time.monotonic()  # the watch starts with the first open request
            self._open[request_id] = outputs
            self._lines[request_id] = line
            return

    def cancel(self, request_id: RequestId) -> None:
        """Ask the engine to stop ``request_id``; the request then ends with an ``error`` event ``cancelled``
        (or with ``done`` when it had already written its outputs)."""
        if self._child is not None and request_id in self._open:
            with contextlib.suppress(OSError):
                self._child.send(request_line(CANCEL, f"cancel-{next(self._ids)}", request=request_id))

    def poll(self) -> List[Event]:
        """Every new event of the open requests, in order; never blocks (for a GUI timer)."""
        self._pump()
        events = []
        for request_id in list(self._events):
            queue = self._events[request_id]
            while queue:
                events.append(queue.popleft())
            if request_id not in self._open:
                del self._events[request_id]
        return events

    def poll_request(self, request_id: RequestId) -> List[Event]:
        """``request_id``'s new events; never blocks (the other requests' events stay for their readers)."""
        self._pump()
        queue = self._events.get(request_id)
        events = []
        while queue:
            events.append(queue.popleft())
        if request_id not in self._open:
            self._events.pop(request_id, None)
        return events

    def events(self, request_id: RequestId, timeout_s: Optional[float] = None) -> Iterator[Event]:
        """``request_id``'s events as they come, up to and including its ``done`` or ``error``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        queue = self._events[request_id]
        while True:
            if not queue:
                self._pump()
            while queue:
                event = queue.popleft()
                yield event
                if event.get("event") in (DONE, ERROR):
                    self._events.pop(request_id, None)
                    return
            if request_id not in self._open and not queue:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"request {request_id} gave no last event within {timeout_s} s")
            time.sleep(POLL_INTERVAL_S)

    def run(self, kind: str, timeout_s: Optional[float] = None, **fields: Any) -> List[Event]:
        """Send a request and wait for all its events (for scripts and tests)."""
        return list(self.events(self.submit(kind, **fields), timeout_s))

    @property
    def pid(self) -> Optional[int]:
        """The running engine's process id (None when none runs)."""
        return None if self._child is None else self._child.pid

    def close(self) -> None:
        """Shut the engine down (it cancels what runs), and end its process group if it does not end."""
        child, self._child = self._child, None
        if child is None:
            return
        with contextlib.suppress(OSError):
            child.send(request_line(SHUTDOWN, "shutdown"))
        with contextlib.suppress(TimeoutError):
            child.wait(timeout=CLOSE_WAIT_S)
        child.cancel()  # nothing left to end after a clean shutdown; else the whole group goes

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the engine process ------------------------------------------------------------------------

    def _ensure_engine(self, request_id: RequestId) -> bool:
        """Start an engine when none runs (saying so in ``request_id``'s events); True when started now."""
        self._pump()
        if self._child is not None:
            return False
        arguments = ["serve"] + ([] if self.models is None else ["--models", str(self.models)])
        self._child = _EngineChild(arguments, python=self.python, env=self.env, what="warm engine", interactive=True).start()
        self.starts += 1
        if self._death_untold is not None:
            self._events[request_id].append(make_event(WARNING, id=request_id, message=f"{self._death_untold}; a new engine was started, and loads its models again"))
            self._death_untold = None
        self._events[request_id].append(make_event(LOG, id=request_id, message="starting the warm engine"))
        return True

    def _pump(self) -> None:
        """Sort the engine's new events by request id; notice its end."""
        if self._child is None:
            return
        events, state = self._child.poll()
        if events:
            self._last_sign = time.monotonic()
        for event in events:
            request_id = event.get("id")
            if request_id in self._open:
                self._events[request_id].append(event)
                self._answered.add(request_id)
                if event.get("event") in (DONE, ERROR):
                    self._forget(request_id)
        if state != RUNNING:
            self._ended(wait=False)
        elif self._open and self.stall_s is not None and time.monotonic() - self._last_sign > self.stall_s:
            self._stalled()

    def _stalled(self) -> None:
        """No event for ``stall_s`` while requests were open: the engine is ended (its whole process group) and
        each open request fails once; none is sent again (it may be what hangs). The next request starts anew."""
        child, self._child = self._child, None
        child.cancel(grace_s=STALL_KILL_GRACE_S)
        message = f"the warm engine sent nothing for {self.stall_s:g} s and was stopped; the next request starts a new engine"
        for request_id in list(self._open):
            remove_leftovers(self._open[request_id], child.pid)
            self._events[request_id].append(make_event(ERROR, id=request_id, message=message))
            self._forget(request_id)

    def _ended(self, wait: bool) -> None:
        """The engine process is gone: its open requests fail once each, or the next request is told."""
        child, self._child = self._child, None
        if child is None:
            return
        if wait:
            with contextlib.suppress(TimeoutError):
                child.wait(timeout=CLOSE_WAIT_S)
        message = child.error_message or f"the warm engine process ended (exit code {child.returncode})"
        # a request the engine never answered may never have been read (a line written while it was dying):
        # it goes to a new engine, once; the others end with the death, said in each one's error
        unanswered = [(rid, self._open[rid], self._lines[rid]) for rid in self._open if rid not in self._answered and rid not in self._resent]
        resend = {rid for rid, _, _ in unanswered}
        failed = [rid for rid in self._open if rid not in resend]
        for request_id in failed:
            remove_leftovers(self._open[request_id], child.pid)
            self._events[request_id].append(make_event(ERROR, id=request_id, message=f"{message}; the next request starts a new engine"))
            self._forget(request_id)
        self._death_untold = None if failed else message  # else said in the next request's events
        for request_id, outputs, line in unanswered:
            remove_leftovers(outputs, child.pid)
            self._forget(request_id)
            self._resent.add(request_id)
            self._send(request_id, line, outputs)

    def _forget(self, request_id: RequestId) -> None:
        """``request_id`` has had its last event (its queue stays until it is read)."""
        for table in (self._open, self._lines):
            table.pop(request_id, None)
        self._answered.discard(request_id)


class WarmRequest:
    """One segmentation on a warm engine, driven as the panel drives an engine child (the ``Engine``
    protocol of ``panel/child_run.py``, :class:`~..protocol.runner.EngineProcess`'s ``start``, ``poll``,
    ``cancel``, ``state`` and ``error_message``), so a run's state machine needs no other change."""

    def __init__(self, client: EngineClient, input_path, output_path, options: SegmentationOptions, checkpoint=None) -> None:
        self.client = client
        self.python = client.python or "python"
        self.state = IDLE
        self.error_message: Optional[str] = None
        self.done_event: Optional[Event] = None
        self._request = (input_path, output_path, options, checkpoint)
        self._id: Optional[RequestId] = None

    def start(self) -> "WarmRequest":
        self._id = self.client.segment(*self._request)
        self.state = RUNNING
        return self

    def poll(self) -> Tuple[List[Event], str]:
        """The request's new events and its state (``running``, then ``done``, ``failed`` or ``cancelled``)."""
        events = self.client.poll_request(self._id) if self.state == RUNNING else []
        for event in events:
            if event.get("event") == DONE:
                self.state, self.done_event = FINISHED, event
            elif event.get("event") == ERROR:
                self.error_message = str(event.get("message"))
                self.state = CANCELLED if self.error_message == "cancelled" else FAILED
        return events, self.state

    def cancel(self, grace_s: float = 5.0) -> None:
        """Ask the engine to stop the request; it ends as ``cancelled`` (no output, no lock), the engine stays up.
        Waits up to ``grace_s`` for the request's last event, as the runner waits for a child to end, so
        that the caller may then remove the request's folder without the engine still writing into it."""
        if self.state == RUNNING:
            self.client.cancel(self._id)
            with contextlib.suppress(TimeoutError):
                collections.deque(self.client.events(self._id, timeout_s=grace_s), maxlen=0)
            self.state, self.error_message = CANCELLED, "cancelled"


def _absolute(path) -> str:
    return os.path.abspath(os.fspath(path))

"""``unetseg serve``: the warm engine's loop. Requests are read on the main thread (so ``cancel`` and
``ping`` are answered while a volume runs) and segmenting requests run one at a time, in the order they
came, on one worker thread; models stay loaded between them (:mod:`.model_cache`).

The engine ends on ``shutdown`` and on SIGTERM (the command's handler raises in the main thread), which
cancel what runs and wait for its run to leave through its ``finally`` blocks, so no temporary file and
no lock outlives the engine; at the end of its input (``requests.jsonl | unetseg serve``, or a client
gone) it first finishes the requests it was given.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import traceback
from typing import Deque, Iterator, Optional, TextIO, Tuple

from UNetSegmentationLib.engine.cancellation import CancelToken, RequestCancelled
from UNetSegmentationLib.engine.model_cache import DEFAULT_CAPACITY, ModelCache
from UNetSegmentationLib.engine.request_reporter import EventWriter, RequestReporter
from UNetSegmentationLib.engine.requests import CANCEL, MAX_LINE, PING, SHUTDOWN, Request, RequestRefused, parse_request
from UNetSegmentationLib.engine.segment import run_segment
from UNetSegmentationLib.engine.sessions import Sessions
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.memory_budget import machine_memory_note

#: seconds a stopping engine waits for the running request to leave (a batch, or a write, at most)
STOP_WAIT_S = 120.0

Job = Tuple[Request, CancelToken]


class WarmEngine:
    """The requests waiting and running, and the worker thread that runs them."""

    def __init__(self, writer: EventWriter, cache: ModelCache) -> None:
        self.writer = writer
        self.cache = cache
        self.sessions = Sessions()  # refinement sessions (issue 26), run on the worker thread like segmentations
        self._waiting: Deque[Job] = collections.deque()
        self._running: Optional[Job] = None
        self._stopping = False
        self._condition = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="unetseg-request", daemon=True)

    # -- the reading thread ------------------------------------------------------------------------

    def serve(self, lines: Iterator[str]) -> int:
        """Answer every request line until ``shutdown`` or the end of ``lines``; returns the exit status."""
        self._worker.start()
        try:
            for line in lines:
                if line.strip() and self._answer(line) == SHUTDOWN:
                    return 0
            self.stop(finish=True)  # the end of the input: what was asked is still done
        finally:  # shutdown, or SIGTERM's exception on its way out
            self.stop()
        return 0

    def _answer(self, line: str) -> Optional[str]:
        try:
            request = parse_request(line)
        except RequestRefused as refused:
            self.writer.error(refused.request_id, str(refused))
            return None
        if request.segments or request.refines:
            self._submit(request)
        elif request.type == CANCEL:
            self._cancel(request)
        elif request.type == PING:
            self.writer.done(request.id, pid=os.getpid(), models=self.cache.describe(), running=self._running_id(), waiting=len(self._waiting))
        elif request.type == SHUTDOWN:
            self.stop()
            self.writer.done(request.id, shutdown=True)
        return request.type

    def _running_id(self):
        running = self._running
        return None if running is None else running[0].id

    def _submit(self, request: Request) -> None:
        with self._condition:
            if request.id in [job[0].id for job in self._waiting] + [self._running_id()]:
                self.writer.error(request.id, f"a request with id {request.id!r} is already running or waiting; give each request its own id")
                return
            self._waiting.append((request, CancelToken()))
            self._condition.notify()

    def _cancel(self, request: Request) -> None:
        target = request.request
        with self._condition:
            waiting = [job for job in self._waiting if job[0].id == target]
            running = self._running if self._running is not None and self._running[0].id == target else None
            for job in waiting:
                self._waiting.remove(job)
            asked = running is not None and running[1].cancel()
        for job in waiting:  # never started: nothing to remove
            self.writer.error(target, "cancelled")
        if waiting or asked:
            self.writer.done(request.id, cancelled=target)
        elif running is not None:
            self.writer.error(request.id, f"request {target!r} had already written its outputs; nothing to cancel")
        else:
            self.writer.error(request.id, f"no request {target!r} is running or waiting")

    def stop(self, finish: bool = False) -> None:
        """End the worker once the requests waiting are done (``finish``), or cancel them all; wait for it."""
        with self._condition:
            self._stopping = True
            dropped = [] if finish else list(self._waiting)
            if not finish:
                self._waiting.clear()
                if self._running is not None:
                    self._running[1].cancel()
            self._condition.notify_all()
        for request, _ in dropped:
            self.writer.error(request.id, "cancelled: the engine is stopping")
        if self._worker.is_alive() and self._worker is not threading.current_thread():
            self._worker.join(STOP_WAIT_S)
        if not self._worker.is_alive():
            self.sessions.close_all()  # nothing the user did not accept is written; their folders go

    # -- the worker thread -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._stopping:
                    self._condition.wait()
                if not self._waiting:  # stopping, and nothing left to do
                    return
                self._running = self._waiting.popleft()
            try:
                self._run(*self._running)
            finally:
                with self._condition:
                    self._running = None

    def _run(self, request: Request, token: CancelToken) -> None:
        """One request to its one ``done`` or ``error`` event (the run reports ``done`` itself)."""
        reporter = RequestReporter(self.writer, request.id, token)
        try:
            token.check()
            if request.refines:
                self.sessions.run(request, reporter)
            else:
                run_segment(request, self.cache, reporter)
        except RequestCancelled:
            self.writer.error(request.id, "cancelled")
        except UserError as error:
            self.writer.error(request.id, str(error))
        except MemoryError:
            self.writer.error(request.id, f"out of memory ({machine_memory_note()}): close other programs, or crop or resample the input to fewer voxels")
        except Exception as error:  # a bug: the traceback on stderr, one message on the protocol, the engine goes on
            traceback.print_exc(file=sys.stderr)
            self.writer.error(request.id, f"internal error: {type(error).__name__}: {error}")


def request_lines(stream: TextIO) -> Iterator[str]:
    """The lines of ``stream``, none read whole beyond :data:`~.requests.MAX_LINE` characters (a longer
    one comes out cut, one character over the limit, and is refused as too long)."""
    while True:
        line = stream.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith("\n"):
            while True:  # the rest of the long line, read in bounded pieces and dropped
                rest = stream.readline(MAX_LINE)
                if not rest or rest.endswith("\n"):
                    break
        yield line


def serve(stdin: TextIO, stdout: TextIO, models: int = DEFAULT_CAPACITY) -> int:
    """``unetseg serve``: the warm engine on these streams, keeping up to ``models`` models loaded."""
    return WarmEngine(EventWriter(stdout), ModelCache(models)).serve(request_lines(stdin))

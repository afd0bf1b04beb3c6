"""The warm engine's output: every event of :mod:`..protocol.events` on one stream, each carrying the
``id`` of the request it answers, written whole by one thread at a time (the reading thread answers
``ping`` and ``cancel`` while a worker thread reports a run's progress)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Optional, TextIO

from UNetSegmentationLib.engine.cancellation import CancelToken
from UNetSegmentationLib.engine.requests import RequestId
from UNetSegmentationLib.protocol.events import DONE, ERROR, encode, make_event
from UNetSegmentationLib.protocol.reporters import JsonLinesReporter


class EventWriter:
    """Writes events as JSON lines to ``stream`` (stdout), one whole line at a time."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def emit(self, request_id: RequestId, kind: str, **fields: Any) -> None:
        line = encode(make_event(kind, id=request_id, **fields)) + "\n"
        with self._lock:
            self.stream.write(line)
            self.stream.flush()

    def done(self, request_id: RequestId, **fields: Any) -> None:
        self.emit(request_id, DONE, **fields)

    def error(self, request_id: RequestId, message: str) -> None:
        self.emit(request_id, ERROR, message=message)


class RequestReporter(JsonLinesReporter):
    """The reporter a request's run gets: predict's JSON-lines events with the request's ``id``, the
    ``done`` event completed with ``extra`` (e.g. whether the model was already loaded) and
    ``request_s`` (the request's seconds in the engine, from its line read to its ``done``); each event before ``done`` is
    also where a cancel takes effect (:mod:`.cancellation`)."""

    def __init__(self, writer: EventWriter, request_id: RequestId, token: CancelToken) -> None:
        super().__init__(writer.stream)
        self.writer = writer
        self.request_id = request_id
        self.token = token
        self.extra: dict = {}
        self.finished = False
        self.started = time.perf_counter()

    def emit(self, kind: str, **fields: Any) -> None:
        if kind == DONE:  # every output is in place: from here on the run is finished, whatever a cancel says
            self.token.finish()
            self.finished = True
            fields = {**fields, **self.extra, "request_s": round(time.perf_counter() - self.started, 4)}
        elif kind != ERROR:
            self.token.check()
        self.writer.emit(self.request_id, kind, **fields)

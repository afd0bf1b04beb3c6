"""The JSON-lines event schema that every long-running ``unetseg`` command speaks (``--progress json``).

One JSON object per line on stdout, nothing else on that stream. Every object has ``"event"``:

``start``
    ``{"event": "start", "version": 1, "command": "predict", "total": 120, "unit": "slice", ...}``:
    the schema :data:`VERSION`, the command (``predict``, ``train``, ``evaluate``), how much work there
    is (``total`` of ``unit``: ``slice``, ``step`` or ``case``), and what the command wants to say about
    the run (predict: device, arch, depth, classes, geometry, backend, precision, threads, workers).
``progress``
    ``{"event": "progress", "done": 8, "total": 120, "unit": "slice", "rate_per_s": 31.2, "eta_s": 3.6, ...}``:
    ``eta_s`` is null until a rate is known; commands may add fields (train: epoch, loss, ...).
``log``
    ``{"event": "log", "message": "..."}``: a step worth knowing about (e.g. a first-run export).
``warning``
    ``{"event": "warning", "message": "..."}``: the run goes on, but the user should know.
``done``
    ``{"event": "done", ...}``: the command's summary (predict: outputs, depth, precision, timings).
``error``
    ``{"event": "error", "message": "..."}``: the run failed; the message names the problem.

Readers (the process runner, the Slicer panel) go through :func:`parse_event`, which also turns any
line that is not an event into a ``log`` event, so a stray print can never break a reader.
"""

from __future__ import annotations

import json
from typing import Any, Dict

#: the schema's version, sent in every ``start`` event; raise it when a field changes meaning
VERSION = 1
START, PROGRESS, LOG, WARNING, DONE, ERROR = "start", "progress", "log", "warning", "done", "error"
KINDS = (START, PROGRESS, LOG, WARNING, DONE, ERROR)
UNITS = ("slice", "step", "case")

Event = Dict[str, Any]


def make_event(kind: str, **fields: Any) -> Event:
    """An event of ``kind`` (one of :data:`KINDS`) with ``fields``; ``start`` gets :data:`VERSION`."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    if kind == START:
        fields = {"version": VERSION, **fields}
    return {"event": kind, **fields}


def encode(event: Event) -> str:
    """One line of JSON (no newline); non-ASCII text is kept as it is."""
    return json.dumps(event, ensure_ascii=False, default=str)


def parse_event(line: str) -> Event | None:
    """The event on ``line``; None for a blank line; a ``log`` event for any other text."""
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return make_event(LOG, message=line)
    return event

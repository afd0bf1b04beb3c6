"""The warm engine's requests: one JSON object per line on its stdin, read and refused here only.

Every request has an ``id`` (a string or an integer, echoed in every event of its answer) and a
``type``:

``segment``
    ``{"id": "r1", "type": "segment", "input": "ct.nrrd", "output": "labels.nrrd", "checkpoint": "bundled",
    "options": {"depth": 2, "largest_component": true}, "series": "1.2.3"}``: what ``unetseg predict INPUT
    OUTPUT`` does, with the fields of :class:`~..inference.options.SegmentationOptions` under ``options``
    (only those that differ from the defaults need to be given; ``checkpoint`` defaults to the bundled
    model, ``series`` picks a DICOM series). Volumes pass by file, never through the pipe.
``segment_slices``
    The same with ``"slices": "12-18,40"`` (:mod:`..grammar.slice_ranges`): only those slices along the
    slice axis are segmented; the output is a label map of the whole volume, background elsewhere.
``cancel``
    ``{"id": "c1", "type": "cancel", "request": "r1"}``: stop request ``r1`` (it ends with an ``error``
    event ``cancelled``, no output and no lock left); the engine stays up.
``ping`` and ``shutdown``
    ``{"id": "p1", "type": "ping"}``: the engine answers ``done`` with what it holds; ``shutdown`` cancels
    what runs, answers ``done`` and ends the process.
``refine_open``, ``refine_click``, ``refine_scribble``, ``refine_undo``, ``refine_propagate``, ``refine_accept``, ``refine_cancel``
    A refinement session of one object (issue 26; :mod:`.sessions`, which reads their fields):
    ``{"id": "o1", "type": "refine_open", "input": "ct.nrrd", "checkpoint": "bundled", "initial": "labels.seg.nrrd",
    "segment": "liver"}`` opens it (its ``done`` names the ``session``); ``{"id": "c1", "type": "refine_click",
    "session": "o1", "click": {"lps": [x, y, z], "positive": true}}``, ``refine_scribble`` with ``"scribble":
    {"ijk": [[i, j, k], ...], "positive": false}``, ``refine_undo``, ``refine_propagate`` (optional ``"slices"``)
    answer with the changed slices' masks in a file; ``refine_accept`` (optional ``"output"``, ``"overwrite"``)
    writes the object and closes the session, ``refine_cancel`` closes it leaving nothing.

Every request ends with exactly one ``done`` or one ``error`` event carrying its ``id``. A request that
cannot be read (not JSON, an unknown type or field, a bad option) is answered with one ``error`` event
(``id`` null when none could be read) and the engine goes on. Numpy- and torch-free: the client
(:mod:`.client`) builds its lines with :func:`request_line`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.options import DEFAULTS, SegmentationOptions
from UNetSegmentationLib.model.bundled import BUNDLED_SHORT_NAME

SEGMENT, SEGMENT_SLICES, CANCEL, PING, SHUTDOWN = "segment", "segment_slices", "cancel", "ping", "shutdown"
REFINE_OPEN, REFINE_CLICK, REFINE_SCRIBBLE, REFINE_UNDO = "refine_open", "refine_click", "refine_scribble", "refine_undo"
REFINE_PROPAGATE, REFINE_ACCEPT, REFINE_CANCEL = "refine_propagate", "refine_accept", "refine_cancel"
#: each request type's fields beside ``id`` and ``type``: (required, optional)
FIELDS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    SEGMENT: (("input", "output"), ("checkpoint", "options", "series")),
    SEGMENT_SLICES: (("input", "output", "slices"), ("checkpoint", "options", "series")),
    CANCEL: (("request",), ()),
    PING: ((), ()),
    SHUTDOWN: ((), ()),
    REFINE_OPEN: (("input",), ("checkpoint", "initial", "segment")),
    REFINE_CLICK: (("session", "click"), ()),
    REFINE_SCRIBBLE: (("session", "scribble"), ()),
    REFINE_UNDO: (("session",), ()),
    REFINE_PROPAGATE: (("session",), ("slices",)),
    REFINE_ACCEPT: (("session",), ("output", "overwrite")),
    REFINE_CANCEL: (("session",), ()),
}
TYPES = tuple(FIELDS)
#: the requests of a refinement session (their fields are read by engine/sessions.py)
REFINE_TYPES = (REFINE_OPEN, REFINE_CLICK, REFINE_SCRIBBLE, REFINE_UNDO, REFINE_PROPAGATE, REFINE_ACCEPT, REFINE_CANCEL)
#: characters of one request line read at all: a request names files, it never carries a volume
MAX_LINE = 64 * 1024
#: characters of an ``id``
MAX_ID = 200
#: the JSON types each option accepts (the values themselves are checked by SegmentationOptions)
_OPTION_TYPES: Dict[str, Tuple[type, ...]] = {
    "depth": (int, str, type(None)),
    "device": (str,),
    "batch_size": (int,),
    "axis": (int, str, type(None)),
    "probabilities": (str, type(None)),
    "overwrite": (bool,),
    "largest_component": (bool,),
    "classification_guidance": (bool,),
    "backend": (str,),
    "precision": (str,),
    "threads": (int, type(None)),
    "slice_workers": (int, type(None)),
    "spacing": (str,),
    "crop": (bool,),
    "review_list": (str, type(None)),
}
_JSON_NAMES = {int: "an integer", str: "a string", bool: "true or false", type(None): "null"}
RequestId = Union[str, int, None]


class RequestRefused(UserError):
    """A request line that cannot be run as written; ``request_id`` is its ``id`` when one could be read."""

    def __init__(self, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    """One request, read and checked (paths are not opened here: the run checks them as predict does)."""

    id: RequestId
    type: str
    input: Optional[str] = None
    output: Optional[str] = None
    checkpoint: str = BUNDLED_SHORT_NAME
    options: SegmentationOptions = DEFAULTS
    series: Optional[str] = None
    slices: Optional[str] = None
    request: RequestId = None  # cancel: the id of the request to stop
    refine: Optional[Dict[str, Any]] = None  # a refinement request's fields beside id and type (engine/sessions.py reads them)

    @property
    def segments(self) -> bool:
        return self.type in (SEGMENT, SEGMENT_SLICES)

    @property
    def refines(self) -> bool:
        return self.type in REFINE_TYPES


def parse_request(line: str) -> Request:
    """The :class:`Request` on ``line``, or :class:`RequestRefused` saying what is wrong with it."""
    if len(line) > MAX_LINE:
        raise RequestRefused(f"a request line is at most {MAX_LINE} characters (volumes pass by file); this one has {len(line)}")
    try:
        fields = json.loads(line)
    except ValueError as error:
        raise RequestRefused(f"a request is one JSON object per line; this line is not JSON ({error})") from None
    if not isinstance(fields, dict):
        raise RequestRefused("a request is one JSON object per line, e.g. {\"id\": \"r1\", \"type\": \"ping\"}")
    request_id = _request_id(fields.get("id"))
    kind = fields.get("type")
    if kind not in FIELDS:
        raise RequestRefused(f"unknown request type {str(kind)[:40]!r}; give one of {', '.join(TYPES)}", request_id)
    required, optional = FIELDS[kind]
    unknown = sorted(set(fields) - {"id", "type", *required, *optional})
    if unknown:
        raise RequestRefused(f"{kind}: unknown field {unknown[0][:40]!r}; a {kind} request takes {', '.join(('id', 'type') + required + optional)}", request_id)
    missing = [name for name in required if fields.get(name) in (None, "")]
    if missing:
        raise RequestRefused(f"{kind}: missing {missing[0]!r}", request_id)
    try:
        return _built(fields, kind, request_id)
    except RequestRefused:
        raise
    except UserError as error:  # a bad option value, in SegmentationOptions' words
        raise RequestRefused(f"{kind}: {error}", request_id) from None


def _request_id(value: Any) -> RequestId:
    if value is None:
        raise RequestRefused("a request needs an \"id\" (a string or an integer) that its events will carry")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or len(str(value)) > MAX_ID:
        raise RequestRefused(f"\"id\" must be a string or an integer of at most {MAX_ID} characters")
    return value


def _built(fields: Mapping[str, Any], kind: str, request_id: RequestId) -> Request:
    if kind in REFINE_TYPES:
        return Request(request_id, kind, refine={name: value for name, value in fields.items() if name not in ("id", "type")})
    texts = {}
    for name in ("input", "output", "checkpoint", "series", "slices"):
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            raise RequestRefused(f"{kind}: {name!r} must be a string, got {type(value).__name__}", request_id)
        if value is not None:
            texts[name] = value
    target = fields.get("request")
    if kind == CANCEL:
        target = _request_id(target)
    return Request(request_id, kind, options=options_from(fields.get("options") or {}), request=target, **texts)


def options_from(fields: Any) -> SegmentationOptions:
    """The :class:`SegmentationOptions` of a request's ``options`` object (its field names; defaults for
    those left out); an unknown name or a value of the wrong JSON type is a :class:`UserError`."""
    if not isinstance(fields, dict):
        raise UserError("'options' must be an object of option names and values, e.g. {\"depth\": 2}")
    for name, value in fields.items():
        if name not in _OPTION_TYPES:
            raise UserError(f"unknown option {str(name)[:40]!r}; options are {', '.join(_OPTION_TYPES)}")
        accepted = _OPTION_TYPES[name]
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            names = " or ".join(_JSON_NAMES[t] for t in accepted)
            raise UserError(f"option {name!r} must be {names}, got {json.dumps(value)[:40]}")
    return SegmentationOptions(**fields)


def options_fields(options: SegmentationOptions) -> Dict[str, Any]:
    """The ``options`` object of a request for ``options``: the fields that differ from the defaults,
    as JSON values (what :func:`options_from` reads back to equal options)."""
    fields = {}
    for field in dataclasses.fields(SegmentationOptions):
        value = getattr(options, field.name)
        if value != getattr(DEFAULTS, field.name):
            fields[field.name] = str(value) if isinstance(value, Path) else value
    return fields


def request_line(kind: str, request_id: RequestId, **fields: Any) -> str:
    """One request line (no newline) of ``kind`` with ``fields``; ``options`` may be a
    :class:`SegmentationOptions` (written as :func:`options_fields`); paths become strings."""
    if isinstance(fields.get("options"), SegmentationOptions):
        fields["options"] = options_fields(fields["options"])
    plain = {name: str(value) if isinstance(value, Path) else value for name, value in fields.items() if value is not None}
    return json.dumps({"id": request_id, "type": kind, **plain}, ensure_ascii=False)

"""The JSON-lines event schema that every long-running ``unetseg`` command speaks (``--progress json``).

One JSON object per line on stdout, nothing else on that stream. Every object has ``"event"``:

``start``
    ``{"event": "start", "version": 1, "command": "predict", "total": 120, "unit": "slice", ...}``:
    the schema :data:`VERSION`, the command (``predict``, ``train``, ``evaluate``), how much work there
    is (``total`` of ``unit``: ``slice``, ``step``, ``case`` or ``click``), and what the command wants to say about
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

The payloads are typed once, here, as ``TypedDict`` s (what the writers build and the readers may rely
on): :class:`StartEvent`, :class:`ProgressEvent`, :class:`MessageEvent` (log, warning, error) and
:class:`DoneEvent`, with each command's own fields in :data:`START_PAYLOADS`, :data:`PROGRESS_PAYLOADS`
and :data:`DONE_PAYLOADS` (``predict``, ``train``, ``evaluate``, ``predict-cohort``, ``refine``). The wire format is
plain JSON as before (:data:`VERSION` 1): a field listed here keeps its name, type and meaning; a
command may add fields, and readers ignore what they do not know. :func:`check_event` says where an
event departs from its schema (the tests run every command through it).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, TypedDict, Union, get_args, get_origin, get_type_hints

#: the schema's version, sent in every ``start`` event; raise it when a field changes meaning
VERSION = 1
START, PROGRESS, LOG, WARNING, DONE, ERROR = "start", "progress", "log", "warning", "done", "error"
KINDS = (START, PROGRESS, LOG, WARNING, DONE, ERROR)
UNITS = ("slice", "step", "case", "click")
#: the commands that speak the protocol, as their ``start`` event names them
PREDICT, TRAIN, EVALUATE, COHORT = "predict", "train", "evaluate", "predict-cohort"
REFINE = "refine"  # unetseg refine (interactive/refine_file.py)

Event = Dict[str, Any]


# --- the events every command sends -------------------------------------------------------------------


class StartEvent(TypedDict):
    """``start``: the schema's version, the command, and how much work there is (``total`` ``unit`` s)."""

    event: str
    version: int
    command: str
    total: int
    unit: str


class ProgressEvent(TypedDict):
    """``progress``: ``done`` of ``total``; ``eta_s`` None until a rate is known."""

    event: str
    done: int
    total: int
    unit: str
    rate_per_s: float
    eta_s: Optional[float]


class MessageEvent(TypedDict):
    """``log``, ``warning`` and ``error``: one message in words."""

    event: str
    message: str


class DoneEvent(TypedDict):
    """``done``: the command's summary (its fields: :data:`DONE_PAYLOADS`)."""

    event: str


# --- each command's own fields (optional in the type: a command may leave one out where it does not apply)


class _Resumable(StartEvent, total=False):
    initial: int  # units done before this process (a resumed training, a cohort's cases done before)


class PredictStart(_Resumable, total=False):
    device: str
    arch: str
    depth: Union[int, str, None]
    classes: List[str]
    geometry: str
    backend: str
    precision: str
    threads: int
    workers: int
    resolution: str
    body_share: float


class TrainStart(_Resumable, total=False):
    arch: str
    classes: List[str]
    parameters: int
    device: str
    epochs: int
    steps_per_epoch: int
    crop: List[int]
    loss: str
    training_slices: int
    validation_slices: int
    spacing: Optional[List[float]]
    slice_distance: Optional[float]
    amp: Optional[str]
    base: Optional[str]
    unlabelled_classes: List[str]


class EvaluateStart(_Resumable, total=False):
    arch: str
    device: str
    depths: List[str]
    cases: List[str]
    backend: str
    precision: str
    threads: int


class CohortStart(_Resumable, total=False):
    arch: str
    cases: int
    skipped: int
    executor: str
    workers: int
    manifest: str


class TrainProgress(ProgressEvent, total=False):
    epoch: int
    epochs: int
    loss: float
    lr: float
    val_dice: Optional[float]


class EvaluateProgress(ProgressEvent, total=False):
    case: str
    depth: str


class CohortProgress(ProgressEvent, total=False):
    case: str
    status: str
    slices_per_s: Optional[float]


class ReviewItem(TypedDict):
    """One slice of the review ranking: most uncertain first."""

    slice: int
    axis: str
    score: float


class PredictDone(DoneEvent, total=False):
    output: str
    probabilities: Optional[str]
    depth: Union[int, str, None]
    precision: str  # what computed the labels (int8 may have fallen back to fp32)
    timings: Dict[str, float]
    scan_flags: List[str]
    review: List[ReviewItem]
    volumes_ml: Dict[str, float]


class TrainDone(DoneEvent, total=False):
    """A finished run (``checkpoint`` ...) or one stopped by ``--stop-after`` (``stopped``, ``epoch``, ``state``)."""

    checkpoint: str
    log: str
    best_epoch: int
    validation: Optional[Dict[str, Any]]
    depth_metrics: Dict[str, Any]
    recommended_depth: Optional[int]
    seconds: float
    stopped: bool
    epoch: int
    state: str


class EvaluateDone(DoneEvent, total=False):
    summary: Dict[str, Dict[str, Optional[float]]]  # depth → mean of each metric, ms/slice, ...
    outputs: List[str]


class CohortDone(DoneEvent, total=False):
    cases: int
    done: int
    failed: int
    skipped: int
    ran: int
    manifest: str
    qc_report: Optional[str]
    flagged: Optional[int]
    seconds: float


class RefineStart(StartEvent, total=False):
    slices: int
    resolution: str
    model_grid: List[int]  # rows, columns of a slice on the model grid
    target: Optional[str]  # the segment of INITIAL refined (None: from nothing)


class RefineDone(DoneEvent, total=False):
    output: str
    clicks: int
    click_latency_ms: List[float]  # each click's own slice(s), in order
    propagate_ms: List[float]  # the propagation after each click
    changed_slices: List[int]
    object_voxels: int
    seconds: float


class RefineAnswer(DoneEvent, total=False):
    """The warm engine's answer to a refinement request (engine/sessions.py): the changed slices' masks,
    on the input's grid, in a ``.npy`` file (uint8 ``(len(slices), ...)``, each the input array's slice
    along numpy ``axis``); ``refine_accept`` adds ``output`` (when it wrote one) and ``changed_slices``."""

    session: str
    axis: int
    slices: List[int]
    masks: Optional[str]
    ms: float
    clicks: int
    undo: int
    output: Optional[str]
    changed_slices: List[int]


START_PAYLOADS = {PREDICT: PredictStart, TRAIN: TrainStart, EVALUATE: EvaluateStart, COHORT: CohortStart, REFINE: RefineStart}
PROGRESS_PAYLOADS = {PREDICT: ProgressEvent, TRAIN: TrainProgress, EVALUATE: EvaluateProgress, COHORT: CohortProgress, REFINE: ProgressEvent}
DONE_PAYLOADS = {PREDICT: PredictDone, TRAIN: TrainDone, EVALUATE: EvaluateDone, COHORT: CohortDone, REFINE: RefineDone}
_COMMON = {START: StartEvent, PROGRESS: ProgressEvent, LOG: MessageEvent, WARNING: MessageEvent, ERROR: MessageEvent, DONE: DoneEvent}


def schema_of(kind: str, command: Optional[str] = None) -> type:
    """The ``TypedDict`` of a ``kind`` event of ``command`` (None or unknown: the fields every command sends)."""
    table = {START: START_PAYLOADS, PROGRESS: PROGRESS_PAYLOADS, DONE: DONE_PAYLOADS}.get(kind, {})
    return table.get(command) or _COMMON[kind]


def check_event(event: Any, command: Optional[str] = None) -> List[str]:
    """What in ``event`` departs from its schema (``[]``: nothing): an unknown kind, a missing required
    field, a listed field of the wrong type. Unlisted fields are allowed (a command may add fields).
    ``command``: the run's command (its ``start`` event's); a ``start`` event names its own."""
    if not isinstance(event, dict) or event.get("event") not in KINDS:
        return [f"not an event of the schema: {str(event)[:80]}"]
    kind = event["event"]
    if kind == START:
        command = event.get("command")
    problems = [f"{kind}: {problem}" for problem in check_nested(event, schema_of(kind, command))]
    if kind == START and event.get("unit") not in UNITS:
        problems.append(f"start: unit {event.get('unit')!r} is none of {', '.join(UNITS)}")
    return problems


def _matches(value: Any, expected: Any) -> bool:
    """Whether a JSON ``value`` fits the annotation ``expected`` (ints count as floats, bools as neither)."""
    if expected is Any:
        return True
    origin = get_origin(expected)
    if origin is Union:
        return any(_matches(value, option) for option in get_args(expected))
    if origin is list:
        (item,) = get_args(expected)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        _, item = get_args(expected)
        return isinstance(value, dict) and all(isinstance(k, str) and _matches(v, item) for k, v in value.items())
    if expected is type(None):
        return value is None
    if isinstance(expected, type) and hasattr(expected, "__required_keys__"):  # a nested TypedDict
        return isinstance(value, dict) and not check_nested(value, expected)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def check_nested(value: dict, schema: type) -> List[str]:
    """Problems of a payload against ``schema`` (an event's, or a nested one such as a :class:`ReviewItem`):
    missing required or mistyped fields (:func:`check_event` prefixes each with the event's kind)."""
    hints = get_type_hints(schema)
    missing = [f"missing {name!r}" for name in sorted(schema.__required_keys__) if name not in value]
    return missing + [f"{name!r} is {v!r}, not {_name(hints[name])}" for name, v in value.items() if name in hints and not _matches(v, hints[name])]


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")



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

"""The Segment Editor effect's side of a refinement session on the warm engine: requests in order, answers
polled by a GUI timer, never a wait.

Why one request at a time: a session's edits build on each other (a click re-segments the slice as the
previous click left it; undo takes back the last edit), so a click made while the engine still answers
the previous one waits in :attr:`RefineClient.queue` and goes when that one is done. :attr:`busy` is
what the effect's busy indicator shows.

Why the session may need opening again: when the engine dies (a crash, the out-of-memory killer), the
:class:`~UNetSegmentationLib.engine.client.EngineClient` says so in the open request's ``error`` and
starts a new engine on the next request, which knows no session. Any failed session request therefore
closes the session here (:attr:`session` None, the queue dropped): the effect opens a new one on the
next click, from what its preview shows by then, so the user's accepted-so-far work is the new start.
Nothing is applied here: an answer is a proposal the effect previews; Apply is the user's.

The requests' names and fields are written in one place, :data:`REQUESTS` and :meth:`RefineClient._line`
(the engine's ``refine_*`` requests, ``engine/requests.py``); volumes and masks pass by file. Torch-,
numpy- and Slicer-free.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

from UNetSegmentationLib.protocol.events import DONE, ERROR, WARNING, Event

#: the session requests, by what the effect asks
OPEN, CLICK, SCRIBBLE, UNDO, PROPAGATE, ACCEPT, CANCEL = "open", "click", "scribble", "undo", "propagate", "accept", "cancel"
REQUESTS: Dict[str, str] = {OPEN: "refine_open", CLICK: "refine_click", SCRIBBLE: "refine_scribble", UNDO: "refine_undo",
                            PROPAGATE: "refine_propagate", ACCEPT: "refine_accept", CANCEL: "refine_cancel"}
#: requests whose answer is the changed slices' masks (a proposal for the preview)
ANSWERING = (CLICK, SCRIBBLE, UNDO, PROPAGATE)
#: the folder prefix of a session's files (the volume and the initial mask the effect exports)
FOLDER_PREFIX = "UNetSegmentation-refine-"

Point = Tuple[float, float, float]


@dataclass(frozen=True)
class RefineAnswer:
    """The engine's answer to a click, scribble, undo or propagation: the ``.npy`` file of the changed
    slices' masks (``(len(slices), ...)`` along numpy axis ``axis`` of the input's [k, j, i] array; the
    engine's, in its session folder: read it at once, the engine removes older answers), None when no
    slice changed; ``latency_ms`` what the edit took in the engine."""

    kind: str
    slices: Tuple[int, ...]
    axis: int
    masks: Optional[Path]
    latency_ms: Optional[float] = None


@dataclass(frozen=True)
class RefineFailure:
    """A session request that failed, in the engine's words; the session is closed (the next click opens one)."""

    kind: str
    message: str


@dataclass
class _Pending:
    kind: str
    fields: Dict[str, Any] = field(default_factory=dict)


class RefineClient:
    """One refinement session at a time on a warm engine.

    Args:
        engine: gives the :class:`~UNetSegmentationLib.engine.client.EngineClient` to use (the session's
            warm engine, ``SESSION_ENGINE``; started by it on the first request).
        checkpoint: the interactive model (None: the engine's bundled one).
        temp_root: where the session's folder goes (Slicer's temporary folder; default the system's).
    """

    def __init__(self, engine: Callable[[], Any], checkpoint: Union[str, Path, None] = None, temp_root: Union[str, Path, None] = None) -> None:
        self.engine = engine
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.temp_root = None if temp_root is None else str(temp_root)
        self.session: Optional[str] = None
        self.queue: Deque[_Pending] = deque()
        self.warnings: List[str] = []
        self.opened_count = 0  # sessions opened so far (a failure closes one; the next click opens another)
        self._folder: Optional[Path] = None
        self._request: Optional[Tuple[Any, Any, _Pending]] = None  # (engine client, request id, what it was)
        self._outcomes: List[Union[RefineAnswer, RefineFailure]] = []  # said before the next poll

    # -- what the effect asks ----------------------------------------------------------------------

    @property
    def folder(self) -> Path:
        """The session's own temporary folder (made on first use; removed by :meth:`close`)."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=self.temp_root))
        return self._folder

    @property
    def busy(self) -> bool:
        """A request is with the engine or waiting for it."""
        return self._request is not None or bool(self.queue)

    @property
    def opened(self) -> bool:
        """A session is open, or its opening is under way."""
        return self.session is not None or any(p.kind == OPEN for p in self._all_pending())

    def open(self, input_path: Path, initial_path: Optional[Path] = None) -> None:
        """Open a session on the volume file (and the target segment as a 0/1 label map on its grid)."""
        self.queue.clear()
        self.opened_count += 1
        self._add(OPEN, input=str(input_path), initial=None if initial_path is None else str(initial_path),
                  checkpoint=self.checkpoint)

    def click(self, ijk: Sequence[float], positive: bool) -> None:
        """A click at the input's continuous voxel index ``ijk`` (i, j, k)."""
        self._add(CLICK, click={"ijk": [float(v) for v in ijk], "positive": bool(positive)})

    def scribble(self, points: Sequence[Sequence[float]], positive: bool) -> None:
        """A scribble: a polyline of voxel indices (i, j, k)."""
        self._add(SCRIBBLE, scribble={"ijk": [[float(v) for v in p] for p in points], "positive": bool(positive)})

    def undo(self) -> None:
        self._add(UNDO)

    def propagate(self) -> None:
        self._add(PROPAGATE)

    def finish(self, accepted: bool) -> None:
        """End the session (``refine_accept`` or ``refine_cancel``): what waits is dropped; the engine
        forgets the session. The effect applies (or not) from its own preview, never from this."""
        self.queue.clear()
        if self.session is not None or self._request is not None:
            self._add(ACCEPT if accepted else CANCEL)

    def poll(self) -> List[Union[RefineAnswer, RefineFailure]]:
        """The answers that came since the last poll; sends the next waiting request. Never blocks."""
        outcomes, self._outcomes = self._outcomes, []
        while True:
            if self._request is None and not self._send_next(outcomes):
                return outcomes
            client, request_id, pending = self._request
            for event in client.poll_request(request_id):
                outcome = self._read(event, pending)
                if outcome is not None:
                    outcomes.append(outcome)
            if self._request is not None:
                return outcomes

    def close(self) -> None:
        """Cancel the session (if any) and remove its folder; for a closing effect or scene."""
        if self._request is not None:
            client, request_id, _ = self._request
            client.cancel(request_id)
        if self.session is not None:
            self.queue.clear()
            self._request = None
            self._add(CANCEL)  # sent at once: nothing is with the engine
        self._request, self.session = None, None
        self.queue.clear()
        folder, self._folder = self._folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    # -- the requests ------------------------------------------------------------------------------

    def _all_pending(self) -> List[_Pending]:
        return ([self._request[2]] if self._request is not None else []) + list(self.queue)

    def _add(self, kind: str, **fields: Any) -> None:
        """Queue a request; it goes at once when the engine is not answering another one (no wait for a tick)."""
        self.queue.append(_Pending(kind, {name: value for name, value in fields.items() if value is not None}))
        if self._request is None:
            self._send_next(self._outcomes)

    def _send_next(self, outcomes: List[Union[RefineAnswer, RefineFailure]]) -> bool:
        """Send the first waiting request that can go; False when none is left."""
        while self.queue:
            pending = self.queue.popleft()
            if pending.kind != OPEN and self.session is None:
                if pending.kind in (ACCEPT, CANCEL):
                    continue  # nothing open to end
                outcomes.append(RefineFailure(pending.kind, "no refinement session is open"))
                self.queue.clear()
                return False
            client = self.engine()
            request_id = client.submit(REQUESTS[pending.kind], **self._line(pending))
            self._request = (client, request_id, pending)
            return True
        return False

    def _line(self, pending: _Pending) -> Dict[str, Any]:
        """A request's fields, with the session's name (the engine writes an answer's masks into the session's own folder)."""
        fields = dict(pending.fields)
        if pending.kind != OPEN:
            fields["session"] = self.session
        return fields

    def _read(self, event: Event, pending: _Pending) -> Union[RefineAnswer, RefineFailure, None]:
        kind = event.get("event")
        if kind == WARNING:
            self.warnings.append(str(event.get("message")))
        if kind not in (DONE, ERROR):
            return None
        self._request = None
        if kind == ERROR:
            self.session = None  # a dead engine knows no session; a refused one is gone too
            self.queue.clear()
            return RefineFailure(pending.kind, str(event.get("message")))
        if pending.kind == OPEN:
            self.session = str(event.get("session"))
            return None
        if pending.kind in (ACCEPT, CANCEL):
            self.session = None
            return None
        return _answer(pending.kind, event)


def _answer(kind: str, event: Event) -> Union[RefineAnswer, RefineFailure]:
    """The done event of a click, scribble, undo or propagation as an answer (a malformed one fails)."""
    try:
        slices = tuple(int(s) for s in event.get("slices") or ())
        axis, masks = int(event["axis"]), event.get("masks")
        if slices and not isinstance(masks, str):
            raise ValueError("no masks file")
    except (KeyError, TypeError, ValueError):
        return RefineFailure(kind, f"the engine's answer to the {kind} lacks its slices, axis or masks")
    latency = event.get("ms")
    return RefineAnswer(kind, slices, axis, Path(masks) if slices else None, float(latency) if isinstance(latency, (int, float)) else None)

"""The effect's client of a refinement session on the warm engine (``panel/refine_client.py``), against a
stand-in engine client that answers as it is told: one request at a time and in order (a click waits
for the previous one), never a wait (each poll only reads what came), answers as proposals, a failed
request closes the session (a dead engine knows none) so the next click opens a new one, and the end of
a session drops what still waits. Numpy-free, as the Slicer GUI process needs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

from UNetSegmentationLib.panel import refine_client
from UNetSegmentationLib.panel.refine_client import RefineAnswer, RefineClient, RefineFailure


class StandInEngine:
    """``submit`` records the request; ``answer`` makes its last event come on a later poll."""

    def __init__(self) -> None:
        self.sent: List[Tuple[str, Dict[str, Any]]] = []
        self.events: Dict[str, List[dict]] = {}
        self.cancelled: List[str] = []

    def submit(self, kind: str, outputs=(), **fields: Any) -> str:
        request_id = f"r{len(self.sent) + 1}"
        self.sent.append((kind, fields))
        self.events[request_id] = []
        return request_id

    def poll_request(self, request_id: str) -> List[dict]:
        events, self.events[request_id] = self.events[request_id], []
        return events

    def answer(self, request_id: str, **fields: Any) -> None:
        self.events[request_id].append({"event": "done", "id": request_id, **fields})

    def fail(self, request_id: str, message: str) -> None:
        self.events[request_id].append({"event": "error", "id": request_id, "message": message})

    def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)


def opened(tmp_path: Path) -> Tuple[StandInEngine, RefineClient]:
    engine = StandInEngine()
    client = RefineClient(lambda: engine, temp_root=tmp_path)
    client.open(tmp_path / "volume.nrrd", tmp_path / "initial.nrrd")
    assert client.poll() == [] and client.busy
    engine.answer("r1", session="s1")
    assert client.poll() == [] and client.session == "s1" and not client.busy
    return engine, client


def test_a_session_opens_on_the_volume_and_its_segment(tmp_path):
    engine, client = opened(tmp_path)
    kind, fields = engine.sent[0]
    assert kind == "refine_open" and fields == {"input": str(tmp_path / "volume.nrrd"), "initial": str(tmp_path / "initial.nrrd")}


def test_clicks_go_one_at_a_time_in_order_and_come_back_as_proposals(tmp_path):
    engine, client = opened(tmp_path)
    client.click((10.0, 20.5, 3.0), positive=True)
    client.click((11.0, 20.0, 3.0), positive=False)
    assert client.poll() == [] and len(engine.sent) == 2, "the second click waits for the first one's answer"
    kind, fields = engine.sent[1]
    assert kind == "refine_click" and fields["session"] == "s1" and fields["click"] == {"ijk": [10.0, 20.5, 3.0], "positive": True}
    assert set(fields) == {"session", "click"}, "the engine's refine_click takes these fields only"

    engine.answer("r2", slices=[3, 4], axis=0, masks=str(tmp_path / "answer-1.npy"), ms=42.0)
    answers = client.poll()
    assert answers == [RefineAnswer("click", (3, 4), 0, tmp_path / "answer-1.npy", 42.0)]
    assert len(engine.sent) == 3 and engine.sent[2][1]["click"]["positive"] is False and client.busy
    engine.answer("r3", slices=[], axis=0, masks=None)
    assert client.poll() == [RefineAnswer("click", (), 0, None, None)] and not client.busy, "a click that changed nothing"


def test_undo_propagate_and_scribble_are_session_requests(tmp_path):
    engine, client = opened(tmp_path)
    client.scribble([(1, 2, 3), (4, 5, 3)], positive=False)
    client.poll()
    engine.answer("r2", slices=[3], axis=0, masks="a.npy")
    client.undo()
    client.poll()
    engine.answer("r3", slices=[3], axis=0, masks="b.npy")
    client.propagate()
    client.poll()
    engine.answer("r4", slices=[1, 2, 4, 5], axis=0, masks="c.npy")
    client.poll()
    assert [k for k, _ in engine.sent] == ["refine_open", "refine_scribble", "refine_undo", "refine_propagate"]
    assert engine.sent[1][1]["scribble"] == {"ijk": [[1.0, 2.0, 3.0], [4.0, 5.0, 3.0]], "positive": False}


def test_a_failure_closes_the_session_and_the_next_click_needs_a_new_one(tmp_path):
    """The engine died under a click: its error is said once, what waited is dropped, and the session
    is closed, so that the effect opens a new one (on a new engine) at the next click."""
    engine, client = opened(tmp_path)
    client.click((1, 1, 1), True)
    client.click((2, 2, 2), True)
    client.poll()
    engine.fail("r2", "the warm engine process ended (exit code -9); the next request starts a new engine")
    assert client.poll() == [RefineFailure("click", "the warm engine process ended (exit code -9); the next request starts a new engine")]
    assert client.session is None and not client.busy and not client.opened and len(engine.sent) == 2
    client.click((3, 3, 3), True)
    assert client.poll() == [RefineFailure("click", "no refinement session is open")]
    client.open(tmp_path / "volume.nrrd", tmp_path / "preview.nrrd")
    client.click((3, 3, 3), True)
    assert client.opened and client.poll() == [] and engine.sent[-1][0] == "refine_open"


def test_a_malformed_answer_is_a_failure(tmp_path):
    engine, client = opened(tmp_path)
    client.click((1, 1, 1), True)
    client.poll()
    engine.answer("r2", slices=[1])
    assert client.poll() == [RefineFailure("click", "the engine's answer to the click lacks its slices, axis or masks")]


def test_finishing_drops_what_waits_and_ends_the_session(tmp_path):
    engine, client = opened(tmp_path)
    client.click((1, 1, 1), True)
    client.poll()
    client.click((2, 2, 2), True)
    client.finish(accepted=False)
    engine.answer("r2", slices=[1], axis=0, masks="a.npy")
    assert [type(o) for o in client.poll()] == [RefineAnswer]
    assert engine.sent[-1][0] == "refine_cancel" and engine.sent[-1][1] == {"session": "s1"}
    engine.answer("r3")
    client.poll()
    assert client.session is None and not client.busy
    client.finish(accepted=True)
    client.poll()
    assert len(engine.sent) == 3, "nothing to end when no session is open"


def test_close_cancels_and_removes_the_session_folder(tmp_path):
    engine, client = opened(tmp_path)
    client.click((1, 1, 1), True)
    client.poll()
    folder = client.folder
    client.close()
    assert engine.cancelled == ["r2"] and engine.sent[-1][0] == "refine_cancel"
    assert not folder.exists() and client.session is None and not client.busy


def test_the_client_is_numpy_free():
    code = "import sys; import UNetSegmentationLib.panel.refine_client; print(sorted(m for m in ('numpy', 'torch', 'SimpleITK', 'slicer', 'qt') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(Path(refine_client.__file__).parents[2]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

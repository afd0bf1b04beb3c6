"""Refinement sessions in the warm engine (engine/sessions.py): ``refine_open``, ``refine_click``,
``refine_scribble``, ``refine_undo``, ``refine_propagate``, ``refine_accept``, ``refine_cancel`` on the real
slicerio chest CT. Each answers with one ``done`` naming the changed slices and a ``.npy`` file of their
masks on the input's grid (the same masks a session in this process gives); a bad click is one ``error``
and the session goes on; nothing is written that the user did not accept; a session closed, cancelled or
lost with its engine is named in one message; a dead engine is replaced on the next request.

The in-process tests run the engine's loop with a stub network (Testing/refine_support.py); the child
process test runs ``unetseg serve`` with an (untrained) interactive checkpoint, as the Slicer effect will."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from refine_support import StubModel, left_lung, write_tiny_interactive_checkpoint
from support import alive, leftovers
from UNetSegmentationLib.engine.client import EngineClient
from UNetSegmentationLib.engine.model_cache import ModelCache
from UNetSegmentationLib.engine.request_reporter import EventWriter
from UNetSegmentationLib.engine.requests import REFINE_TYPES, RequestRefused, parse_request
from UNetSegmentationLib.engine.server import WarmEngine, request_lines
from UNetSegmentationLib.engine.sessions import FOLDER_PREFIX, Sessions, remove_abandoned_folders
from UNetSegmentationLib.interactive.click_points import parse_click
from UNetSegmentationLib.interactive.session import RefineSession, read_session_input
from UNetSegmentationLib.protocol.events import DONE, ERROR, RefineAnswer, check_nested

ENGINE_TIMEOUT_S = 180
CLICK = {"ijk": [40, 64, 17], "positive": False}


def run_engine(lines: list, checkpoint: Path) -> dict:
    """The engine's loop in this process on ``lines`` (dicts), a stub network behind every checkpoint;
    each request's events by id."""
    out = io.StringIO()
    engine = WarmEngine(EventWriter(out), ModelCache(1))
    engine.sessions = Sessions(loader=lambda path: StubModel())
    text = "".join(json.dumps({"checkpoint": str(checkpoint), **line} if line["type"] == "refine_open" else line) + "\n" for line in lines)
    assert engine.serve(request_lines(io.StringIO(text))) == 0
    by_id: dict = {}
    for event in (json.loads(line) for line in out.getvalue().splitlines()):
        by_id.setdefault(event["id"], []).append(event)
    assert engine.sessions.names == []  # the engine stopped: every session is given up
    return by_id


def answer(events: list) -> dict:
    """A request's one last event, a ``done`` in the schema of a refinement answer."""
    assert len(events) == 1 and events[0]["event"] == DONE, events
    assert check_nested(events[0], RefineAnswer) == []
    return events[0]


@pytest.fixture
def fake_checkpoint(tmp_path) -> Path:
    path = tmp_path / "interactive.safetensors"  # stands for a checkpoint: the stub loader never reads it
    path.write_bytes(b"stub")
    return path


def test_a_session_answers_each_edit_with_the_masks_a_session_in_this_process_gives(chest_ct_path, chest_segmentation_path, fake_checkpoint, tmp_path):
    lines = [
        {"id": "o", "type": "refine_open", "input": str(chest_ct_path), "initial": str(chest_segmentation_path), "segment": "left lung"},
        {"id": "c1", "type": "refine_click", "session": "o", "click": CLICK},
        {"id": "s1", "type": "refine_scribble", "session": "o", "scribble": {"ijk": [[30, 60, 20], [40, 60, 20]], "positive": True}},
        {"id": "p1", "type": "refine_propagate", "session": "o"},
        {"id": "u1", "type": "refine_undo", "session": "o"},
        {"id": "a", "type": "refine_accept", "session": "o", "output": str(tmp_path / "refined.seg.nrrd")},
        {"id": "late", "type": "refine_click", "session": "o", "click": CLICK},
    ]
    by_id = run_engine(lines, fake_checkpoint)
    opened = answer(by_id["o"])
    assert opened["session"] == "o" and opened["slice_count"] == 34 and opened["target"] == "left lung"
    clicked = answer(by_id["c1"])
    assert clicked["slices"] == [17] and clicked["axis"] == 0 and clicked["clicks"] == 1 and clicked["undo"] == 1
    assert answer(by_id["s1"])["slices"] == [20] and answer(by_id["p1"])["slices"] and answer(by_id["u1"])["undo"] == 2
    image = read_session_input(chest_ct_path)
    session = RefineSession.open(image, StubModel(), left_lung(chest_segmentation_path, chest_ct_path))
    local = session.add(parse_click(CLICK))
    assert not Path(clicked["masks"]).exists()  # the session's folder went with it
    accepted = answer(by_id["a"])
    assert accepted["output"] == str(tmp_path / "refined.seg.nrrd") and 17 in accepted["changed_slices"]
    assert [e["event"] for e in by_id["late"]] == [ERROR] and "no refinement session 'o'" in by_id["late"][0]["message"]
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "refined.seg.nrrd")))
    assert written.shape == (34, 128, 128) and local.masks.shape == (1, 128, 128)


def test_the_masks_file_holds_the_changed_slices_on_the_input_grid(chest_ct_path, fake_checkpoint, tmp_path, monkeypatch):
    kept = []
    monkeypatch.setattr(Sessions, "_close", lambda self, name: kept.append(self._open.pop(name)))  # keep the folder to read it
    by_id = run_engine([{"id": "o", "type": "refine_open", "input": str(chest_ct_path)},
                        {"id": "c", "type": "refine_click", "session": "o", "click": {"ijk": [45, 64, 17], "positive": True}}], fake_checkpoint)
    clicked = answer(by_id["c"])
    masks = np.load(clicked["masks"])
    session = RefineSession.open(read_session_input(chest_ct_path), StubModel())
    local = session.add(parse_click({"ijk": [45, 64, 17], "positive": True}))
    assert masks.dtype == np.uint8 and np.array_equal(masks.astype(bool), local.masks)
    assert [p.name for p in kept[0].folder.iterdir()] == ["answer-1.npy"]  # whole files only, no partial one left
    for opened in kept:
        import shutil

        shutil.rmtree(opened.folder)


def test_bad_requests_are_one_error_each_and_the_session_goes_on(chest_ct_path, fake_checkpoint, tmp_path):
    existing = tmp_path / "keep.nrrd"
    existing.write_bytes(b"keep")
    lines = [
        {"id": "o", "type": "refine_open", "input": str(chest_ct_path)},
        {"id": "outside", "type": "refine_click", "session": "o", "click": {"ijk": [500, 0, 0]}},
        {"id": "form", "type": "refine_click", "session": "o", "click": {"ijk": [[1, 2, 3], [4, 5, 6]]}},
        {"id": "nothing", "type": "refine_undo", "session": "o"},
        {"id": "who", "type": "refine_click", "session": "x", "click": CLICK},
        {"id": "over", "type": "refine_accept", "session": "o", "output": str(existing)},
        {"id": "ok", "type": "refine_click", "session": "o", "click": CLICK},
        {"id": "cancel", "type": "refine_cancel", "session": "o"},
        {"id": "missing", "type": "refine_open", "input": str(tmp_path / "none.nrrd")},
        {"id": "seg", "type": "refine_open", "input": str(chest_ct_path), "segment": "ribs"},
    ]
    by_id = run_engine(lines, fake_checkpoint)
    errors = {rid: events[0]["message"] for rid, events in by_id.items() if events[-1]["event"] == ERROR}
    assert set(errors) == {"outside", "form", "nothing", "who", "over", "missing", "seg"}
    assert "outside the volume" in errors["outside"] and "scribble" in errors["form"] and "nothing to undo" in errors["nothing"]
    assert "no refinement session 'x'" in errors["who"] and "exists" in errors["over"] and "give 'initial'" in errors["seg"]
    assert answer(by_id["ok"])["slices"] == [17] and answer(by_id["cancel"])["cancelled"] is True
    assert existing.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["interactive.safetensors", "keep.nrrd"]


def test_refinement_requests_are_read_by_the_request_schema():
    for kind in REFINE_TYPES:
        assert kind.startswith("refine_")
    request = parse_request(json.dumps({"id": 3, "type": "refine_click", "session": "o", "click": CLICK}))
    assert request.refines and request.refine == {"session": "o", "click": CLICK}
    with pytest.raises(RequestRefused, match="missing 'click'"):
        parse_request('{"id": 1, "type": "refine_click", "session": "o"}')
    with pytest.raises(RequestRefused, match="unknown field 'colour'"):
        parse_request('{"id": 1, "type": "refine_undo", "session": "o", "colour": 1}')


@pytest.mark.slow
@pytest.mark.child_process
def test_a_real_engine_refines_and_a_dead_one_is_replaced_on_the_next_click(chest_ct_path, tmp_path):
    checkpoint = write_tiny_interactive_checkpoint(tmp_path / "interactive.safetensors")
    output = tmp_path / "object.nrrd"

    def last(kind, **fields):
        events = client.run(kind, timeout_s=ENGINE_TIMEOUT_S, **fields)
        return events[-1]

    with EngineClient() as client:
        opened = last("refine_open", input=str(chest_ct_path), checkpoint=str(checkpoint))
        assert opened["event"] == DONE, opened
        clicked = last("refine_click", session=opened["session"], click=CLICK)
        assert clicked["event"] == DONE and clicked["slices"] == [17] and np.load(clicked["masks"]).shape == (1, 128, 128)
        killed = client.pid
        os.kill(killed, signal.SIGKILL)
        assert not alive(killed)
        lost = last("refine_click", session=opened["session"], click=CLICK)  # a new engine, which no longer has the session
        assert lost["event"] == ERROR and "open it again" in lost["message"] and client.starts == 2
        assert not Path(clicked["masks"]).parent.exists()  # the dead engine's session folder: removed by the new one
        again = last("refine_open", input=str(chest_ct_path), checkpoint=str(checkpoint))
        assert last("refine_click", session=again["session"], click=CLICK)["event"] == DONE
        accepted = last("refine_accept", session=again["session"], output=str(output))
        assert accepted["event"] == DONE and accepted["changed_slices"] == [17]
    assert sitk.ReadImage(str(output)).GetSize() == (128, 128, 34) and leftovers(tmp_path) == []


def test_the_folders_of_engines_no_longer_running_are_removed_and_only_those(tmp_path):
    dead, alive_folder, other = tmp_path / f"{FOLDER_PREFIX}999999999-abc", tmp_path / f"{FOLDER_PREFIX}{os.getpid()}-def", tmp_path / "unetseg-other"
    for folder in (dead, alive_folder, other):
        folder.mkdir()
        (folder / "answer-1.npy").write_bytes(b"x")
    assert remove_abandoned_folders(tmp_path) == [dead]
    assert not dead.exists() and alive_folder.exists() and other.exists()

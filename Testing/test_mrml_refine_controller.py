"""The "UNet refine" effect's flow on a real MRML scene (slicer-core): clicks to the warm engine's session,
answers into the preview, Apply and Cancel (``UNetSegmentationSlicer/refine_controller.py``).

First against a stand-in engine that answers as a session would (a click's slice gets a disk added or
removed around it; its files are real: the volume and the initial segment it is sent, the ``.npy``
masks it answers), so the flow is checked exactly: the session opens on the first click from the
selected segment, an answer changes only the preview, Apply applies what the preview shows and nothing
that came later, a dead engine's session is opened again from the preview on the next click, a click
outside the volume is refused before anything is sent. Then once with the real warm engine (a child
process) and a real, tiny interactive checkpoint, killed in the middle.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

import mrml_support

pytestmark = pytest.mark.mrml
mrml = mrml_support.mrml

TARGET = "Segment_5"  # right lung


class SessionEngine:
    """A stand-in warm engine client whose sessions answer at once: a positive click adds a disk of radius
    5 voxels around it on its slice (k), a negative one removes it; propagation changes nothing; undo
    puts the last click's slice back. ``fail_next`` makes the next request fail (a dead engine)."""

    def __init__(self) -> None:
        self.sent: List[tuple] = []
        self.events: Dict[str, List[dict]] = {}
        self.sessions: Dict[str, Any] = {}
        self.fail_next: Optional[str] = None
        self.folder: Optional[Path] = None

    def submit(self, kind: str, outputs=(), **fields: Any) -> str:
        import SimpleITK as sitk

        request_id = f"r{len(self.sent) + 1}"
        self.sent.append((kind, fields))
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            self.sessions.clear()
            self.events[request_id] = [{"event": "error", "id": request_id, "message": message}]
            return request_id
        answer: Dict[str, Any] = {"event": "done", "id": request_id}
        if kind == "refine_open":
            image = sitk.ReadImage(fields["input"])
            shape = image.GetSize()[::-1]
            initial = sitk.GetArrayFromImage(sitk.ReadImage(fields["initial"])).astype(bool) if "initial" in fields else np.zeros(shape, bool)
            self.sessions[request_id] = {"mask": initial, "undo": [], "folder": Path(fields["input"]).parent}
            answer.update(session=request_id, axis=0, slices=[])
        elif fields.get("session") not in self.sessions:
            answer = {"event": "error", "id": request_id, "message": f"no refinement session {fields.get('session')!r} is open in this engine"}
        elif kind == "refine_click":
            answer.update(self._click(self.sessions[fields["session"]], fields["click"], request_id))
        elif kind == "refine_undo":
            session = self.sessions[fields["session"]]
            k, before = session["undo"].pop()
            session["mask"][k] = before
            answer.update(self._answer(session, k, request_id))
        elif kind in ("refine_accept", "refine_cancel"):
            del self.sessions[fields["session"]]
        else:
            answer.update(axis=0, slices=[], masks=None)
        self.events[request_id] = [answer]
        return request_id

    def _click(self, session, click, request_id) -> dict:
        i, j, k = (int(round(v)) for v in click["ijk"])
        rows, columns = np.ogrid[: session["mask"].shape[1], : session["mask"].shape[2]]
        disk = (rows - j) ** 2 + (columns - i) ** 2 <= 25
        session["undo"].append((k, session["mask"][k].copy()))
        session["mask"][k] = (session["mask"][k] | disk) if click["positive"] else (session["mask"][k] & ~disk)
        return self._answer(session, k, request_id)

    def _answer(self, session, k, request_id) -> dict:
        path = session["folder"] / f"answer-{request_id}.npy"
        np.save(path, session["mask"][k : k + 1].astype(np.uint8))
        return {"axis": 0, "slices": [k], "masks": str(path), "ms": 12.5}

    def poll_request(self, request_id: str) -> List[dict]:
        events, self.events[request_id] = self.events.get(request_id, []), []
        return events

    def cancel(self, request_id: str) -> None:
        pass


def kinds(engine) -> List[str]:
    return [kind for kind, _ in engine.sent]


def chest_scene(mrml):
    volume, segmentation, editor_node = mrml_support.chest_segment_editor(mrml, TARGET)
    editor_node.SetOverwriteMode(editor_node.OverwriteNone)
    return volume, segmentation, editor_node


def ras_of(volume, ijk) -> list:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return list(matrix.MultiplyPoint(list(ijk) + [1.0])[:3])


def click_and_answer(controller, volume) -> None:
    """A positive click outside the right lung, inside the body, on slice 15, then the ticks that carry
    it through the engine (open, click, propagate)."""
    controller.click(ras_of(volume, (20, 60, 15)), positive=True)
    for _ in range(4):
        controller.tick()


@pytest.fixture
def flow(mrml, tmp_path):
    volume, segmentation, editor_node = chest_scene(mrml)
    engine = SessionEngine()
    logic = mrml.layer("refine_logic")
    controller = mrml.layer("refine_controller").RefineController(logic.EditorLogicEditing(editor_node), lambda: engine, temp_root=tmp_path)
    assert controller.begin(segmentation, TARGET, volume)
    yield controller, engine, volume, segmentation, logic
    controller.close()


def test_a_click_opens_a_session_from_the_segment_and_its_answer_is_previewed(flow):
    controller, engine, volume, segmentation, logic = flow
    before = logic.segment_array(segmentation, TARGET, volume)
    assert controller.click(ras_of(volume, (20, 60, 15)), positive=True)  # outside the right lung, inside the body
    assert controller.busy and controller.message == "Refining\u2026"
    open_fields = engine.sent[0][1]
    assert kinds(engine) == ["refine_open"], "one request at a time: the click waits for the session"
    import SimpleITK as sitk

    initial = sitk.GetArrayFromImage(sitk.ReadImage(open_fields["initial"]))
    assert (initial == before).all(), "the session starts from the selected segment (the automatic result is refined)"
    assert sitk.ReadImage(open_fields["input"]).GetSize() == (128, 128, 34)

    for _ in range(4):
        controller.tick()
    assert kinds(engine) == ["refine_open", "refine_click", "refine_propagate"] and not controller.busy
    assert engine.sent[1][1]["click"] == {"ijk": pytest.approx([20.0, 60.0, 15.0]), "positive": True}
    preview = logic.segment_array(controller.logic.preview_node, TARGET, volume)
    assert preview[15, 60, 20] == 1 and preview[15].sum() > before[15].sum()
    assert (logic.segment_array(segmentation, TARGET, volume) == before).all(), "nothing applied yet"
    assert controller.latencies_ms == [12.5] and controller.message.startswith("Click on the segment")


def test_apply_applies_the_preview_and_ends_the_session(flow):
    controller, engine, volume, segmentation, logic = flow
    before = logic.segment_array(segmentation, TARGET, volume)
    click_and_answer(controller, volume)
    applied = controller.apply()
    controller.tick()
    after = logic.segment_array(segmentation, TARGET, volume)
    assert applied.slices == [15] and after[15, 60, 20] == 1 and (after[:15] == before[:15]).all()
    assert kinds(engine)[-1] == "refine_accept" and not engine.sessions
    assert controller.logic.preview_node is None and controller.message.startswith("Applied: 1 slice")
    assert logic.corrected_slices(segmentation, volume) == "15"
    assert controller.logic.target_array()[15, 60, 20] == 1, "the next refinement starts from the applied segment"


def test_undo_in_the_session_restores_the_preview(flow):
    controller, engine, volume, segmentation, logic = flow
    before = logic.segment_array(segmentation, TARGET, volume)
    click_and_answer(controller, volume)
    controller.undo()
    controller.tick()
    assert kinds(engine)[-1] == "refine_undo"
    assert (logic.segment_array(controller.logic.preview_node, TARGET, volume) == before).all()
    assert controller.apply().slices == [], "nothing left to apply"


def test_what_comes_after_apply_is_not_applied_and_cancel_changes_nothing(flow):
    controller, engine, volume, segmentation, logic = flow
    before = logic.segment_array(segmentation, TARGET, volume)
    controller.click(ras_of(volume, (20, 60, 15)), positive=True)
    assert controller.busy, "the session's opening is with the engine, the click waits: nothing shown yet"
    assert controller.apply().slices == [] and controller.message == "Nothing to apply."
    for _ in range(3):
        controller.tick()
    assert (logic.segment_array(segmentation, TARGET, volume) == before).all(), "an answer the user never saw is not applied"
    assert controller.logic.preview_node is None and kinds(engine) == ["refine_open", "refine_accept"], "the waiting click was dropped"

    click_and_answer(controller, volume)
    assert controller.logic.preview_node is not None
    controller.cancel()
    controller.tick()
    assert (logic.segment_array(segmentation, TARGET, volume) == before).all() and controller.logic.preview_node is None
    assert kinds(engine)[-1] == "refine_cancel" and logic.corrected_slices(segmentation, volume) == ""


def test_a_dead_engine_is_replaced_on_the_next_click_from_the_preview(flow):
    """The engine died after the first click: the next click's request fails, and the click is sent again
    to a new session that starts from the preview (the first click's disk is in its initial segment)."""
    import SimpleITK as sitk

    controller, engine, volume, segmentation, logic = flow
    click_and_answer(controller, volume)
    engine.fail_next = "the warm engine process ended (exit code -9); the next request starts a new engine"
    controller.click(ras_of(volume, (20, 60, 16)), positive=True)
    for _ in range(6):
        controller.tick()
    assert kinds(engine)[3:] == ["refine_click", "refine_open", "refine_click", "refine_propagate"]
    initial = sitk.GetArrayFromImage(sitk.ReadImage(engine.sent[4][1]["initial"]))
    assert initial[15, 60, 20] == 1, "the new session starts from what the preview showed"
    preview = logic.segment_array(controller.logic.preview_node, TARGET, volume)
    assert preview[15, 60, 20] == 1 and preview[16, 60, 20] == 1 and not controller.failed


def test_a_click_outside_the_volume_is_refused_before_anything_is_sent(flow):
    controller, engine, volume, segmentation, logic = flow
    assert not controller.click(ras_of(volume, (20, 60, 50)), positive=True)
    assert controller.failed and controller.message == "The click is outside the volume 'CTChest4'."
    assert engine.sent == []


def test_nothing_to_refine_without_a_selected_segment(mrml, tmp_path):
    volume, segmentation, editor_node = chest_scene(mrml)
    logic = mrml.layer("refine_logic")
    controller = mrml.layer("refine_controller").RefineController(logic.EditorLogicEditing(editor_node), lambda: None, temp_root=tmp_path)
    assert not controller.begin(segmentation, None, volume)
    assert controller.failed and controller.message == "Select the segment to refine."
    assert not controller.click([0, 0, 0], True)


# --- the real warm engine ------------------------------------------------------------------------------


def wait_for(controller, condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {controller.message}"
        controller.tick()
        time.sleep(0.05)


def test_the_real_warm_engine_refines_and_is_restarted_after_it_died(mrml, tmp_path):
    """``unetseg serve`` as a child process with a tiny (untrained) interactive checkpoint: a click comes
    back as a preview; the engine killed, the next click starts a new engine and a new session."""
    pytest.importorskip("UNetSegmentationLib.engine.sessions")
    refine_support = pytest.importorskip("refine_support")
    from UNetSegmentationLib.engine.client import EngineClient

    checkpoint = refine_support.write_tiny_interactive_checkpoint(tmp_path / "interactive.safetensors")
    volume, segmentation, editor_node = chest_scene(mrml)
    logic = mrml.layer("refine_logic")
    with EngineClient(python=sys.executable, env={"OMP_NUM_THREADS": "1"}) as engine:
        controller = mrml.layer("refine_controller").RefineController(logic.EditorLogicEditing(editor_node), lambda: engine,
                                                                       temp_root=tmp_path, checkpoint=checkpoint)
        assert controller.begin(segmentation, TARGET, volume)
        controller.click(ras_of(volume, (40, 64, 15)), positive=True)
        wait_for(controller, lambda: not controller.busy)
        assert not controller.failed, controller.message
        assert controller.latencies_ms and engine.starts == 1

        os.kill(engine.pid, signal.SIGKILL)
        time.sleep(0.5)
        controller.click(ras_of(volume, (40, 64, 16)), positive=False)
        wait_for(controller, lambda: not controller.busy)
        assert not controller.failed, controller.message
        assert engine.starts == 2 and controller.client.opened_count == 2
        controller.cancel()
        wait_for(controller, lambda: not controller.busy)
        controller.close()

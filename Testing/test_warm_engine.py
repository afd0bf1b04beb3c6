"""The warm engine (``unetseg serve``) and its client: requests as JSON lines, answers in predict's events
carrying the request's id, models kept loaded, cancel and crashes that leave nothing behind.

The slow tests start a real engine process with the bundled model on the slicerio chest CT, as the
Slicer panel will."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import alive, leftovers, run_cli

from UNetSegmentationLib.engine.client import EngineClient, WarmRequest
from UNetSegmentationLib.engine.model_cache import ModelCache
from UNetSegmentationLib.engine.requests import SEGMENT, RequestRefused, options_fields, options_from, parse_request, request_line
from UNetSegmentationLib.engine.server import serve
from UNetSegmentationLib.inference.body import BodyBoxes
from UNetSegmentationLib.inference.layout import VolumeLayout
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.inference.resolution import ModelGrid
from UNetSegmentationLib.inference.slice_subset import only_slices
from UNetSegmentationLib.protocol.events import DONE, ERROR, PREDICT, PROGRESS, WARNING, check_event
from UNetSegmentationLib.protocol.runner import CANCELLED, RUNNING
from UNetSegmentationLib.protocol.runner import DONE as FINISHED

ENGINE_TIMEOUT_S = 180


def labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def last(events: list) -> dict:
    return events[-1]


def events_interrupted_after_first_batch(client: EngineClient, request, interrupt) -> list:
    """``request``'s events, calling ``interrupt()`` when its first batch's progress arrives (batch size 1)."""
    events = []
    for event in client.events(request, ENGINE_TIMEOUT_S):
        events.append(event)
        if event["event"] == PROGRESS and event["done"] == 1:
            interrupt()
    return events


# --- requests: read and refused in one place ---------------------------------------------------------------


@pytest.mark.parametrize(
    "line, request_id, phrase",
    [
        ("not json", None, "not JSON"),
        ("[1, 2]", None, "one JSON object"),
        ('{"type": "ping"}', None, "needs an \"id\""),
        ('{"id": true, "type": "ping"}', None, "string or an integer"),
        ('{"id": "a", "type": "teleport"}', "a", "unknown request type 'teleport'"),
        ('{"id": "b", "type": "ping", "volume": [1, 2, 3]}', "b", "unknown field 'volume'"),
        ('{"id": "c", "type": "segment", "input": "ct.nrrd"}', "c", "missing 'output'"),
        ('{"id": "d", "type": "segment", "input": "ct.nrrd", "output": "l.nrrd", "options": {"dpeth": 2}}', "d", "unknown option 'dpeth'"),
        ('{"id": "e", "type": "segment", "input": "ct.nrrd", "output": "l.nrrd", "options": {"overwrite": "yes"}}', "e", "'overwrite' must be true or false"),
        ('{"id": 7, "type": "segment", "input": "ct.nrrd", "output": "l.nrrd", "options": {"batch_size": 0}}', 7, "--batch-size must be a positive integer"),
        ('{"id": "f", "type": "segment_slices", "input": "ct.nrrd", "output": "l.nrrd"}', "f", "missing 'slices'"),
        ('{"id": "g", "type": "cancel"}', "g", "missing 'request'"),
        ('{"id": "h", "type": "segment", "input": 3, "output": "l.nrrd"}', "h", "'input' must be a string"),
    ],
)
def test_a_bad_request_is_one_message_naming_the_problem_and_keeps_its_id(line, request_id, phrase):
    with pytest.raises(RequestRefused) as refused:
        parse_request(line)
    assert refused.value.request_id == request_id
    assert phrase in str(refused.value)


def test_a_request_line_longer_than_the_limit_is_refused_unread():
    with pytest.raises(RequestRefused, match="volumes pass by file"):
        parse_request('{"id": "x", "type": "ping", "pad": "' + "x" * 70_000 + '"}')


def test_options_travel_as_the_fields_that_differ_from_predicts_defaults():
    options = SegmentationOptions(depth="accurate", axis="k", probabilities="p.nrrd", largest_component=True, backend="torch", batch_size=2)
    fields = options_fields(options)
    assert fields == {"depth": "accurate", "axis": 2, "probabilities": "p.nrrd", "largest_component": True, "backend": "torch", "batch_size": 2}
    assert options_from(json.loads(json.dumps(fields))) == options
    line = json.loads(request_line(SEGMENT, "r1", input=Path("ct.nrrd"), output="l.nrrd", options=options))
    assert parse_request(json.dumps(line)).options == options


def test_the_client_imports_no_numpy_torch_or_slicer():
    code = "import sys; import UNetSegmentationLib.engine.client; print(sorted(m for m in ('numpy', 'torch', 'SimpleITK', 'slicer', 'qt') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent / "UNetSegmentation")
    assert out.stdout.strip() == "[]"


# --- the engine loop in this process: bad requests answered once, the engine goes on ------------------------


def test_the_engine_answers_each_bad_request_with_one_error_and_goes_on(tmp_path):
    lines = [
        "not json",
        '{"id": "u", "type": "segment", "input": "a.nrrd", "output": "b.nrrd", "colour": "red"}',
        json.dumps({"id": "missing", "type": "segment", "input": str(tmp_path / "nope.nrrd"), "output": str(tmp_path / "out.nrrd")}),
        '{"id": "c", "type": "cancel", "request": "nothing"}',
        '{"id": "p", "type": "ping"}',
    ]
    out = io.StringIO()
    assert serve(io.StringIO("\n".join(lines) + "\n"), out, models=1) == 0  # the end of the input: what was asked is answered
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    by_id = {}
    for event in events:
        by_id.setdefault(event["id"], []).append(event)
    assert [e["event"] for e in by_id[None]] == [ERROR]
    assert [e["event"] for e in by_id["u"]] == [ERROR] and "unknown field 'colour'" in by_id["u"][0]["message"]
    assert [e["event"] for e in by_id["missing"]] == [ERROR] and "not found" in by_id["missing"][0]["message"]
    assert [e["event"] for e in by_id["c"]] == [ERROR] and "no request 'nothing'" in by_id["c"][0]["message"]
    assert [e["event"] for e in by_id["p"]] == [DONE] and by_id["p"][0]["models"] == []
    assert not list(tmp_path.iterdir())


def test_shutdown_cancels_what_waits_and_reads_nothing_after_it(tmp_path):
    volume = tmp_path / "ct.nrrd"
    segment = {"type": "segment", "input": str(volume), "output": str(tmp_path / "labels.nrrd")}
    lines = [json.dumps({"id": f"r{n}", **segment}) for n in range(3)] + ['{"id": "s", "type": "shutdown"}', '{"id": "after", "type": "ping"}']
    out = io.StringIO()
    assert serve(io.StringIO("\n".join(lines) + "\n"), out) == 0
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["id"], e["event"]) for e in events if e["id"] in ("s", "after")] == [("s", DONE)]  # nothing is read after shutdown
    for n in range(3):  # each request ends once: not found (it ran), or cancelled (it waited)
        assert [e["event"] for e in events if e["id"] == f"r{n}"] == [ERROR]
    assert not list(tmp_path.iterdir())


# --- what stays loaded ---------------------------------------------------------------------------------------


def test_the_model_key_follows_the_checkpoints_content_and_the_run_options(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"first")
    cache = ModelCache(capacity=1)
    key = cache.key(checkpoint, SegmentationOptions())
    assert cache.key(checkpoint, SegmentationOptions()) == key
    assert cache.key(checkpoint, SegmentationOptions(depth=2)) != key
    assert cache.key(checkpoint, SegmentationOptions(backend="torch")) != key
    assert cache.key(checkpoint, SegmentationOptions(overwrite=True)) == key  # not a property of the model
    cache.put(key, "model")
    checkpoint.write_bytes(b"second, longer")  # a fine-tuned model saved under the same name
    changed = cache.key(checkpoint, SegmentationOptions())
    assert changed != key and cache.get(changed) is None
    cache.put(changed, "new model")
    assert cache.get(key) is None and cache.get(changed) == "new model"  # one model kept: the oldest went


def test_a_slice_range_runs_the_whole_runs_batches_that_hold_it():
    boxes = np.tile(np.array([2, 30, 3, 40]), (20, 1))
    boxes[:3] = 0  # no body in the first three slices
    layout = VolumeLayout(ModelGrid((1.0, 1.0)), BodyBoxes(boxes), 1.0, 0.0)
    restricted = only_slices(layout, [9, 10], batch_size=4, slice_count=20)
    # the whole run's batches: 3-6, 7-10, 11-14, 15-18, 19; slices 9 and 10 are in 7-10
    assert restricted.bodies.slices_with_body.tolist() == [7, 8, 9, 10]
    assert (restricted.bodies.boxes[7:11] == boxes[7:11]).all()
    assert only_slices(layout, None, 4, 20) is layout


# --- a real engine process ---------------------------------------------------------------------------------


def assert_events_follow_the_schema(events: list) -> None:
    problems = [problem for event in events for problem in check_event(event, PREDICT)]
    assert problems == []
    assert all("id" in event for event in events)


@pytest.mark.slow
@pytest.mark.child_process
def test_a_second_request_pays_no_model_load_and_segments_as_predict_does(chest_ct_path, tmp_path):
    reference = tmp_path / "predict.nrrd"
    assert run_cli("predict", "--progress", "none", chest_ct_path, reference).code == 0
    with EngineClient() as client:
        first = list(client.events(client.segment(chest_ct_path, tmp_path / "first.nrrd"), ENGINE_TIMEOUT_S))
        second = list(client.events(client.segment(chest_ct_path, tmp_path / "second.nrrd"), ENGINE_TIMEOUT_S))
        pid = client.pid
    for events in (first, second):
        assert last(events)["event"] == DONE, events[-3:]
        assert_events_follow_the_schema(events)
    assert last(first)["model"] == "loaded" and last(second)["model"] == "cached"
    assert last(second)["timings"]["load_model_s"] < 0.05
    assert last(second)["timings"]["load_model_s"] < last(first)["timings"]["load_model_s"]
    assert np.array_equal(labels(tmp_path / "first.nrrd"), labels(reference))
    assert np.array_equal(labels(tmp_path / "second.nrrd"), labels(reference))
    assert not alive(pid)  # closed with the client


@pytest.mark.slow
@pytest.mark.child_process
def test_cancel_in_the_middle_leaves_no_output_no_lock_and_the_engine_answers_the_next_request(chest_ct_path, tmp_path):
    output = tmp_path / "labels.nrrd"
    with EngineClient() as client:
        request = client.segment(chest_ct_path, output, SegmentationOptions(batch_size=1))
        events = events_interrupted_after_first_batch(client, request, lambda: client.cancel(request))
        assert last(events) == {"event": ERROR, "id": request, "message": "cancelled"}
        assert last([e for e in events if e["event"] == PROGRESS])["done"] < 34
        assert not output.exists() and leftovers(tmp_path) == []
        pid = client.pid
        after = list(client.events(client.segment(chest_ct_path, output, SegmentationOptions(batch_size=1)), ENGINE_TIMEOUT_S))  # the same output: its lock was released
        assert last(after)["event"] == DONE and last(after)["model"] == "cached"
        assert client.pid == pid and client.starts == 1
    assert output.exists() and leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.child_process
@pytest.mark.parametrize("request_at", ["after its death", "while it dies"])
def test_an_engine_killed_between_requests_is_reported_once_and_replaced(chest_ct_path, tmp_path, request_at):
    """Killed, then a request: written after the engine is gone, or while it is still dying (the line may
    never be read): either way the request runs on a new engine, and the death is said once, before it."""
    with EngineClient() as client:
        assert last(list(client.events(client.segment(chest_ct_path, tmp_path / "a.nrrd"), ENGINE_TIMEOUT_S)))["event"] == DONE
        killed = client.pid
        os.kill(killed, signal.SIGKILL)
        if request_at == "after its death":
            assert not alive(killed)
        events = list(client.events(client.segment(chest_ct_path, tmp_path / "b.nrrd"), ENGINE_TIMEOUT_S))
        reports = [e for e in events if e["event"] in (WARNING, ERROR) and "killed by SIGKILL" in e.get("message", "")]
        assert len(reports) == 1 and reports[0]["event"] == WARNING
        assert last(events)["event"] == DONE and last(events)["model"] == "loaded"
        assert client.pid != killed and client.starts == 2
        again = list(client.events(client.segment(chest_ct_path, tmp_path / "c.nrrd"), ENGINE_TIMEOUT_S))
        assert not [e for e in again if "SIGKILL" in e.get("message", "")]  # said once, not again
    assert np.array_equal(labels(tmp_path / "a.nrrd"), labels(tmp_path / "b.nrrd"))
    assert leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.child_process
def test_an_engine_killed_during_a_request_fails_that_request_once_and_leaves_nothing(chest_ct_path, tmp_path):
    output = tmp_path / "labels.nrrd"
    with EngineClient() as client:
        request = client.segment(chest_ct_path, output, SegmentationOptions(batch_size=1))
        events = events_interrupted_after_first_batch(client, request, lambda: os.kill(client.pid, signal.SIGKILL))
        assert [e["event"] for e in events if e["event"] == ERROR] == [ERROR] and "killed by SIGKILL" in last(events)["message"]
        assert not output.exists() and leftovers(tmp_path) == []
        after = list(client.events(client.segment(chest_ct_path, output), ENGINE_TIMEOUT_S))
        assert last(after)["event"] == DONE and not [e for e in after if "SIGKILL" in e.get("message", "")]


@pytest.mark.slow
@pytest.mark.child_process
def test_a_hung_engine_is_stopped_reported_once_and_the_next_request_runs_on_a_new_one(chest_ct_path, tmp_path):
    """The engine stops answering in the middle of a request (here: the process is stopped, SIGSTOP): the client
    does not wait for ever. After ``stall_s`` seconds without an event it ends the engine, the request ends with
    one error saying so, nothing is left of its outputs, and the next request starts a new engine."""
    output = tmp_path / "labels.nrrd"
    with EngineClient() as client:
        request = client.segment(chest_ct_path, output, SegmentationOptions(batch_size=1))
        hung = []

        def hang() -> None:
            hung.append(client.pid)
            os.kill(client.pid, signal.SIGSTOP)
            client.stall_s = 3.0  # from here on (a busy test machine may take longer than that to start)

        started = time.monotonic()
        events = events_interrupted_after_first_batch(client, request, hang)
        assert time.monotonic() - started < ENGINE_TIMEOUT_S
        errors = [e for e in events if e["event"] == ERROR]
        assert errors == [last(events)] and "sent nothing for 3 s and was stopped" in last(events)["message"]
        assert not output.exists() and leftovers(tmp_path) == []
        assert not alive(hung[0], settle_s=10)
        client.stall_s = 300.0
        after = list(client.events(client.segment(chest_ct_path, output), ENGINE_TIMEOUT_S))
        assert last(after)["event"] == DONE and client.starts == 2 and client.pid != hung[0], after
        assert not [e for e in after if "sent nothing" in e.get("message", "")]  # said once
    assert output.exists() and leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.child_process
def test_a_bad_input_is_one_message_and_the_engine_stays_up(chest_ct_path, tmp_path):
    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(chest_ct_path.read_bytes()[:2000])  # the header and a few voxels: a cut file
    with EngineClient() as client:
        answers = {
            "missing": list(client.events(client.segment(tmp_path / "nope.nrrd", tmp_path / "a.nrrd"), ENGINE_TIMEOUT_S)),
            "cut": list(client.events(client.segment(broken, tmp_path / "b.nrrd"), ENGINE_TIMEOUT_S)),
            "option": client.run(SEGMENT, ENGINE_TIMEOUT_S, input=str(chest_ct_path), output=str(tmp_path / "c.nrrd"), options={"depth": 9}),
            "field": client.run(SEGMENT, ENGINE_TIMEOUT_S, input=str(chest_ct_path), output=str(tmp_path / "d.nrrd"), colour="red"),
            "slices": list(client.events(client.segment(chest_ct_path, tmp_path / "e.nrrd", slices="30-40"), ENGINE_TIMEOUT_S)),
        }
        pid = client.pid
        ping = client.run("ping", ENGINE_TIMEOUT_S)
        good = list(client.events(client.segment(chest_ct_path, tmp_path / "f.nrrd"), ENGINE_TIMEOUT_S))
    for name, events in answers.items():
        assert [e["event"] for e in events if e["event"] != "log"] == [ERROR], (name, events)
    assert "not found" in last(answers["missing"])["message"]
    assert "unknown field 'colour'" in last(answers["field"])["message"]
    assert "beyond the volume's 34 slices" in last(answers["slices"])["message"]
    assert last(ping)["event"] == DONE and last(ping)["pid"] == pid
    assert last(good)["event"] == DONE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.nrrd", "f.nrrd"]


@pytest.mark.slow
@pytest.mark.child_process
def test_a_slice_range_gets_the_labels_a_whole_predict_gives_those_slices(chest_ct_path, tmp_path):
    whole = tmp_path / "whole.nrrd"
    assert run_cli("predict", "--progress", "none", chest_ct_path, whole).code == 0
    with EngineClient() as client:
        events = list(client.events(client.segment(chest_ct_path, tmp_path / "some.nrrd", slices="9-13,20"), ENGINE_TIMEOUT_S))
    assert last(events)["event"] == DONE
    assert_events_follow_the_schema(events)
    wanted = [9, 10, 11, 12, 13, 20]
    some, reference = labels(tmp_path / "some.nrrd"), labels(whole)
    assert some.shape == reference.shape
    assert np.array_equal(some[wanted], reference[wanted]) and reference[wanted].any()
    others = np.setdiff1d(np.arange(some.shape[0]), wanted)
    assert not some[others].any()
    assert last([e for e in events if e["event"] == PROGRESS])["done"] == 34


@pytest.mark.slow
@pytest.mark.child_process
def test_a_warm_request_is_driven_as_the_panel_drives_an_engine_child(chest_ct_path, tmp_path):
    """WarmRequest has the runner's start / poll / cancel / state: the panel's run needs no other change."""
    with EngineClient() as client:
        runs = [WarmRequest(client, chest_ct_path, tmp_path / f"{n}.seg.nrrd", SegmentationOptions(batch_size=1)) for n in range(2)]
        states = {n: [] for n in range(2)}
        for n, run in enumerate(runs):
            run.start()
            while run.state == RUNNING:
                events, state = run.poll()
                states[n].append(state)
                if n == 1 and any(e["event"] == PROGRESS for e in events):
                    run.cancel()
                time.sleep(0.02)
    assert runs[0].state == FINISHED and runs[0].done_event["output"] == str(tmp_path / "0.seg.nrrd")
    assert runs[1].state == CANCELLED and runs[1].error_message == "cancelled"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.seg.nrrd"]


def test_serve_refuses_a_model_count_below_one_in_one_line():
    result = run_cli("serve", "--models", "0")
    assert result.code == 2 and result.stderr.strip() == "unetseg: error: --models must be a positive integer, got 0"


@pytest.mark.slow
@pytest.mark.child_process
def test_sigterm_to_the_engine_cancels_its_request_and_leaves_nothing(chest_ct_path, tmp_path):
    """The engine ended as the runner ends a child: its running request is cancelled on the way out."""
    output = tmp_path / "labels.nrrd"
    with EngineClient() as client:
        request = client.segment(chest_ct_path, output, SegmentationOptions(batch_size=1))
        events = events_interrupted_after_first_batch(client, request, lambda: os.kill(client.pid, signal.SIGTERM))
        assert last(events) == {"event": ERROR, "id": request, "message": "cancelled"}
        assert not output.exists() and leftovers(tmp_path) == []

"""The process runner: a real child process, events in order, cancel that leaves nothing behind."""

from __future__ import annotations

import os
import time

import pytest

from support import process_group_alive
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.protocol.events import DONE as DONE_EVENT
from UNetSegmentationLib.protocol.events import LOG, PROGRESS, START, VERSION, WARNING
from UNetSegmentationLib.protocol.runner import CANCELLED, DONE, EXIT, FAILED, EngineProcess


def test_a_run_reports_start_progress_and_done_in_order(chest_ct_path, small_unetpp, tmp_path):
    output = tmp_path / "labels.seg.nrrd"
    run = EngineProcess(SegmentationOptions(batch_size=8).to_arguments(chest_ct_path, output, small_unetpp), outputs=[output]).start()
    events = []
    deadline = time.monotonic() + 120
    while run.state == "running" and time.monotonic() < deadline:
        new, _ = run.poll()
        events += new
        time.sleep(0.02)
    events += run.poll()[0]
    assert run.state == DONE, run.error_message
    kinds = [e["event"] for e in events if e["event"] not in (LOG, WARNING)]
    assert kinds == [START] + [PROGRESS] * 5 + [DONE_EVENT, EXIT]
    start = events[[e["event"] for e in events].index(START)]
    assert (start["version"], start["command"], start["total"], start["unit"]) == (VERSION, "predict", 34, "slice")
    assert [e["done"] for e in events if e["event"] == "progress"] == [8, 16, 24, 32, 34]
    assert output.exists() and run.done_event["output"] == str(output)


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
def test_cancel_mid_run_leaves_no_child_and_no_output(chest_ct_path, small_unetpp, tmp_path):
    output, probabilities = tmp_path / "labels.nrrd", tmp_path / "confidence.nrrd"
    arguments = SegmentationOptions(batch_size=1, probabilities=probabilities).to_arguments(chest_ct_path, output, small_unetpp)
    run = EngineProcess(arguments, outputs=[output, probabilities]).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events, state = run.poll()
        if any(e["event"] == PROGRESS for e in events) or state != "running":
            break
        time.sleep(0.02)
    assert run.state == "running", run.error_message
    run.cancel()
    assert run.state == CANCELLED
    assert not process_group_alive(run.pid)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_child_reports_its_own_message_and_leaves_no_output(small_unetpp, tmp_path):
    output = tmp_path / "labels.nrrd"
    run = EngineProcess(SegmentationOptions().to_arguments(tmp_path / "missing.nrrd", output, small_unetpp), outputs=[output]).start()
    assert run.wait(timeout=120) == FAILED
    assert run.error_message == f"input not found: {tmp_path / 'missing.nrrd'}"
    assert run.returncode == 2 and not output.exists()


def test_a_child_that_crashes_without_an_event_is_explained_from_its_stderr(tmp_path):
    run = EngineProcess(["no-such-command"]).start()
    assert run.wait(timeout=60) == FAILED
    assert "invalid choice" in run.error_message


def test_a_hung_child_is_stopped_after_the_idle_timeout(tmp_path):
    script = tmp_path / "UNetSegmentationLib"  # a fake package whose __main__ sleeps forever
    script.mkdir()
    (script / "__init__.py").write_text("")
    (script / "__main__.py").write_text("import time\ntime.sleep(600)\n")
    run = EngineProcess(["predict"], idle_timeout_s=1.0, env={"PYTHONPATH": str(tmp_path)})
    run.start()
    assert run.wait(timeout=30) == FAILED
    assert "stopped responding" in run.error_message
    assert not process_group_alive(run.pid)


def test_the_runner_reads_any_line_through_the_event_parser(tmp_path):
    """A child that prints a stray line and a log event: both arrive as log events, then the exit."""
    package = tmp_path / "UNetSegmentationLib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import json\nprint('a stray print')\nprint(json.dumps({'event': 'log', 'message': 'exporting the network'}))\n"
        "print(json.dumps({'event': 'done'}))\n"
    )
    run = EngineProcess(["predict"], env={"PYTHONPATH": str(tmp_path)}).start()
    events = []
    deadline = time.monotonic() + 60
    while run.state == "running" and time.monotonic() < deadline:
        events += run.poll()[0]
        time.sleep(0.02)
    assert run.state == DONE
    assert events == [
        {"event": LOG, "message": "a stray print"},
        {"event": LOG, "message": "exporting the network"},
        {"event": DONE_EVENT},
        {"event": EXIT, "returncode": 0},
    ]

"""The process runner: a real child process, events in order, cancel that leaves nothing behind."""

from __future__ import annotations

import os
import signal
import time

import pytest

from support import alive, events_until_finished, POSIX, process_group_alive, unusual_files, wait_for

from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.io.outputs import lock_path, temporary_path
from UNetSegmentationLib.protocol.events import DONE as DONE_EVENT
from UNetSegmentationLib.protocol.events import LOG, PROGRESS, START, VERSION, WARNING
from UNetSegmentationLib.protocol.runner import CANCELLED, DONE, EXIT, FAILED, EngineProcess


@pytest.mark.child_process
@pytest.mark.slow
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


@pytest.mark.child_process
@pytest.mark.slow
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


@pytest.mark.child_process
@pytest.mark.slow
def test_a_failing_child_reports_its_own_message_and_leaves_no_output(small_unetpp, tmp_path):
    output = tmp_path / "labels.nrrd"
    run = EngineProcess(SegmentationOptions().to_arguments(tmp_path / "missing.nrrd", output, small_unetpp), outputs=[output]).start()
    assert run.wait(timeout=120) == FAILED
    assert run.error_message == f"input not found: {tmp_path / 'missing.nrrd'}"
    assert run.returncode == 2 and not output.exists()


@pytest.mark.child_process
def test_a_child_that_crashes_without_an_event_is_explained_from_its_stderr(tmp_path):
    run = EngineProcess(["no-such-command"]).start()
    assert run.wait(timeout=60) == FAILED
    assert "invalid choice" in run.error_message


@pytest.mark.child_process
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


@pytest.mark.child_process
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
    events = events_until_finished(run)
    assert run.state == DONE
    assert events == [
        {"event": LOG, "message": "a stray print"},
        {"event": LOG, "message": "exporting the network"},
        {"event": DONE_EVENT},
        {"event": EXIT, "returncode": 0},
    ]


@pytest.mark.child_process
@pytest.mark.slow
def test_the_child_process_gets_non_ascii_paths_intact(small_unet_one_class, tmp_path):
    volume, checkpoint, output, _ = unusual_files(tmp_path, small_unet_one_class)
    run = EngineProcess(SegmentationOptions().to_arguments(volume, output, checkpoint), outputs=[output]).start()
    assert run.wait(timeout=180) == DONE, run.error_message
    assert run.done_event["output"] == str(output) and output.is_file()


@pytest.mark.child_process
@pytest.mark.slow
@pytest.mark.skipif(not POSIX, reason="signals and process groups are POSIX")
def test_a_child_killed_mid_run_is_reported_with_the_signal_and_leaves_nothing(small_unetpp, long_volume, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    output, confidence = folder / "labels.seg.nrrd", folder / "confidence.nrrd"
    arguments = SegmentationOptions(batch_size=1, probabilities=confidence).to_arguments(long_volume, output, small_unetpp)
    run = EngineProcess(arguments, outputs=[output, confidence]).start()
    wait_for(run, "progress")
    assert sorted(os.listdir(folder)) == sorted([lock_path(output).name, lock_path(confidence).name])
    os.kill(run.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    temporary_path(output, run.pid).write_bytes(b"half a file")  # as if it died while writing
    assert run.wait(timeout=60) == FAILED
    assert run.error_message == "the segmentation process was killed by SIGKILL; the machine may have run out of memory"
    assert os.listdir(folder) == [], "temporary file and locks of the killed child must be removed"
    assert not process_group_alive(run.pid)


@pytest.mark.child_process
@pytest.mark.skipif(not POSIX, reason="signals and process groups are POSIX")
def test_a_killed_child_leaves_no_orphan_grandchild(tmp_path):
    package = tmp_path / "UNetSegmentationLib"  # a fake engine that starts a worker and is then killed
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import json, os, signal, subprocess, sys, time\n"
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(json.dumps({'event': 'log', 'message': str(worker.pid)}), flush=True)\n"
        "time.sleep(0.3)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    run = EngineProcess(["predict"], env={"PYTHONPATH": str(tmp_path)}).start()
    events = events_until_finished(run)
    worker = int(next(e["message"] for e in events if e["event"] == "log"))
    assert run.state == FAILED and "SIGKILL" in run.error_message
    assert not alive(worker), "the child's worker must not outlive it"


# --- the child's environment: one builder for the runner, the self-test and Ray ------------------------------


def test_the_child_environment_puts_the_engine_first_once_and_speaks_utf8():
    from UNetSegmentationLib.protocol.child_environment import THREAD_VARIABLES, child_environment, engine_root

    root = str(engine_root())
    base = {"PYTHONPATH": os.pathsep.join(["", "/elsewhere", root, ""]), "LC_ALL": "C", "PATH": "/usr/bin"}
    environment = child_environment(base, threads=3, extra={"MKL_NUM_THREADS": "1"})
    assert environment["PYTHONPATH"] == os.pathsep.join([root, "/elsewhere"])  # no empty entry: not the child's working folder
    assert (environment["PYTHONIOENCODING"], environment["PYTHONUNBUFFERED"], environment["LC_ALL"]) == ("utf-8", "1", "C")
    assert [environment[name] for name in THREAD_VARIABLES] == ["3", "1", "3", "3", "3"]  # the caller's own variables win
    assert child_environment({})["PYTHONPATH"] == root and "OMP_NUM_THREADS" not in child_environment({})
    assert base["PYTHONPATH"].startswith(os.pathsep)  # the base is not changed


def test_every_child_process_is_started_with_the_one_environment_builder():
    """The runner, the Slicer self-test and Ray built the child's environment each in their own way
    (three copies of the PYTHONPATH rule, one with the UTF-8 streams): none may again."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "UNetSegmentation"
    copies = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "child_environment.py":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"os\.environ\.copy\(\)|dict\(os\.environ\)|\[\"PYTHONPATH\"\]\s*=\s*os\.pathsep", text):
            copies.append(path.relative_to(root).as_posix())
    assert copies == []
    users = {"UNetSegmentationLib/protocol/runner.py", "UNetSegmentationSlicer/selftest.py", "UNetSegmentationLib/cohort/ray_executor.py"}
    assert all("child_environment import" in (root / user).read_text(encoding="utf-8") for user in users)


def test_ray_workers_find_the_engine_on_their_path(monkeypatch):
    from UNetSegmentationLib.cohort import ray_executor
    from UNetSegmentationLib.protocol.child_environment import engine_root

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    ray_executor._share_package_path()
    ray_executor._share_package_path()  # twice: the engine is on the path once
    assert os.environ["PYTHONPATH"] == os.pathsep.join([str(engine_root()), "/elsewhere"])


@pytest.mark.child_process
@pytest.mark.slow
def test_a_child_under_the_c_locale_reports_non_ascii_names_intact(small_unet_one_class, tmp_path):
    """A GUI started under LANG=C (or after ITK's DICOM writer set LC_CTYPE to C): the child's events stay UTF-8."""
    volume, checkpoint, output, _ = unusual_files(tmp_path, small_unet_one_class)
    run = EngineProcess(SegmentationOptions().to_arguments(volume, output, checkpoint), outputs=[output], env={"LC_ALL": "C", "LANG": "C"}).start()
    assert run.wait(timeout=180) == DONE, run.error_message
    assert run.done_event["output"] == str(output) and output.is_file()

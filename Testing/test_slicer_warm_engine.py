"""The panel's "Segment this volume" on the Slicer session's warm engine (issue 25, item 3): a second
segmentation in the same session pays no start-up.

The panel's run class (``panel/run.SegmentationRun``) is driven as the Slicer module drives it, on a
real warm engine (``unetseg serve`` behind ``engine/client.EngineClient``, through
``panel/warm_engine``) wherever an engine is needed; a fake request only where the test is about which
path a run takes. The module's own click-to-scene run through the warm engine is in
``test_mrml_module.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import POSIX, process_group_alive

from UNetSegmentationLib.engine.client import EngineClient
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.panel.checkpoints import bundled_model_path
from UNetSegmentationLib.panel.run import CANCEL_TEXT, CANCELLED, FAILED, IMPORTING, SEGMENTING, RunOptions, SegmentationRun
from UNetSegmentationLib.panel.selftest_support import constant_checkpoint
from UNetSegmentationLib.panel.warm_engine import SessionEngine, warm_requests
from UNetSegmentationLib.protocol import runner

STARTING_TEXT = "Starting the segmentation (the first of a session starts the engine)\u2026"


# --- which path a run takes (a fake request) -------------------------------------------------------------


class FakeRequest:
    """A warm request that never runs: records its start and cancel."""

    python = "fake-python"

    def __init__(self, start_error: Exception | None = None) -> None:
        self.state, self.error_message, self.cancelled, self.start_error = runner.IDLE, None, False, start_error

    def start(self) -> "FakeRequest":
        if self.start_error is not None:
            raise self.start_error
        self.state = runner.RUNNING
        return self

    def poll(self):
        return [], self.state

    def cancel(self, grace_s: float = 5.0) -> None:
        self.cancelled, self.state = True, runner.CANCELLED


def exported_run(tmp_path: Path, options: RunOptions, **engines) -> SegmentationRun:
    run = SegmentationRun(options, temp_root=tmp_path, **engines)
    run.begin_exporting().write_bytes(b"volume")
    run.start_segmenting()
    return run


def test_a_run_goes_to_the_warm_engine_unless_its_checkpoint_is_a_plain_pytorch_file(tmp_path):
    requests, children = [], []

    def warm(*request):
        requests.append((request, FakeRequest()))
        return requests[-1][1]

    def child(arguments, outputs, python, idle_timeout_s):
        children.append(list(arguments))
        return FakeRequest()

    checkpoint = tmp_path / "model.safetensors"
    options = RunOptions(checkpoint, SegmentationOptions(batch_size=3, depth="2"), confidence_map=True)
    run = exported_run(tmp_path, options, warm_engine=warm, engine_factory=child)
    assert children == [] and len(requests) == 1 and run.engine is requests[0][1] and run.uses_warm_engine
    assert requests[0][0] == (run.input_path, run.output_path, replace(options.segmentation, probabilities=run.confidence_path), checkpoint)
    # progress from the first second: the state, its text and the Cancel button, before the engine says anything
    view = run.view()
    assert (view.state, view.progress_text, view.button_text, view.button_enabled) == (SEGMENTING, STARTING_TEXT, CANCEL_TEXT, True)
    run.cancel()
    assert requests[0][1].cancelled and run.state == CANCELLED and not run.folder.exists()

    plain = RunOptions(tmp_path / "model.pt", architecture="unet", classes="liver")
    run = exported_run(tmp_path, plain, warm_engine=warm, engine_factory=child)
    assert len(requests) == 1 and not run.uses_warm_engine
    assert children[-1][children[-1].index("--arch") + 1] == "unet" and "--classes" in children[-1]

    run = exported_run(tmp_path, options, engine_factory=child)  # no warm engine given: a child, as before
    assert len(requests) == 1 and len(children) == 2 and not run.uses_warm_engine
    assert run.view().progress_text == "Starting the segmentation (loading the model)\u2026"


def test_a_warm_engine_that_cannot_start_fails_the_run_with_the_reason(tmp_path):
    run = exported_run(tmp_path, RunOptions(tmp_path / "m.safetensors"), warm_engine=lambda *request: FakeRequest(OSError("No such file")))
    assert run.state == FAILED and run.message == "cannot start the segmentation process (fake-python): No such file"
    assert not run.folder.exists()


def test_the_session_keeps_one_client_per_engine_interpreter(tmp_path):
    session = SessionEngine()
    first = session.requests("python-a").args[0]
    assert session.requests("python-a").args[0] is first, "the same interpreter: the same engine"
    second = session.requests("python-b").args[0]
    assert second is not first and second.python == "python-b" and session.client is second
    session.close()
    assert session.client is None


# --- on a real warm engine --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def every_voxel_a(tmp_path_factory) -> Path:
    """A checkpoint made by ``unetseg create`` whose heads always choose class "a" (label 1)."""
    from support import create_checkpoint

    folder = tmp_path_factory.mktemp("warm-ckpt")
    untrained = create_checkpoint(folder / "untrained.safetensors", classes="a,b")
    return constant_checkpoint(untrained, folder / "every-voxel-a.safetensors", label_value=1)


def small_volume(path: Path, array: np.ndarray | None = None) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(4 * 24 * 24, dtype=np.int16).reshape(4, 24, 24) if array is None else array), str(path))
    return path


def long_volume(path: Path) -> Path:
    """160 slices of 48x48 at batch size 1: long enough to act while the engine segments it."""
    return small_volume(path, np.random.default_rng(0).normal(0, 300, (160, 48, 48)).astype(np.int16))


def start(client: EngineClient, volume: Path, options: RunOptions, temp_root: Path) -> SegmentationRun:
    """What a click does: a run on the client's engine, the volume exported, the request sent."""
    run = SegmentationRun(options, temp_root=temp_root, warm_engine=warm_requests(client))
    shutil.copyfile(volume, run.begin_exporting())
    run.start_segmenting()
    return run


def segment(client: EngineClient, volume: Path, options: RunOptions, temp_root: Path) -> SegmentationRun:
    run = start(client, volume, options, temp_root)
    run.wait(timeout_s=300)
    return run


def until_progress(run: SegmentationRun) -> None:
    deadline = time.monotonic() + 180
    while run.state == SEGMENTING and run.last_progress is None and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.02)
    assert run.state == SEGMENTING and run.last_progress, run.message


def engine_reports(run: SegmentationRun) -> list:
    """The run's log lines about the engine process (the scan check's warnings about the test volumes aside)."""
    return [line for line in run.log if line.startswith(("Warning", "Error", "Failed")) and "warm engine" in line]


def labels_of(run: SegmentationRun) -> np.ndarray:
    import slicerio

    return np.asarray(slicerio.read_segmentation(str(run.output_path))["voxels"])


@pytest.mark.slow
@pytest.mark.child_process
def test_a_second_segmentation_in_the_session_reuses_the_warm_engine_and_its_loaded_model(chest_ct_path, tmp_path):
    session = SessionEngine()
    options = RunOptions(bundled_model_path(), SegmentationOptions(batch_size=4), confidence_map=True)
    runs, labels, seconds = [], [], []
    for _ in range(2):
        started = time.monotonic()
        run = SegmentationRun(options, temp_root=tmp_path, warm_engine=session.requests(None))
        shutil.copyfile(chest_ct_path, run.begin_exporting())
        run.start_segmenting()
        assert run.view().progress_text == STARTING_TEXT and run.view().button_text == CANCEL_TEXT
        assert run.wait(timeout_s=300) == IMPORTING, run.message
        seconds.append(time.monotonic() - started)
        labels.append(labels_of(run))
        assert run.confidence_path.is_file()
        runs.append(run)
        run.finish()
        assert not run.folder.exists()
    first, second = runs
    assert "starting the warm engine" in first.log and "starting the warm engine" not in second.log
    assert first.done_event["model"] == "loaded"
    assert second.done_event["model"] == "cached" and second.done_event["timings"]["load_model_s"] == 0
    assert session.client.starts == 1
    np.testing.assert_array_equal(labels[0], labels[1])
    assert len(np.unique(labels[0])) > 2, "the bundled model finds its classes on the chest CT"
    print(f"panel on the warm engine, chest CT: first click {seconds[0]:.2f} s, second {seconds[1]:.2f} s")
    pid = session.client.pid
    session.close()  # what the module's cleanup does
    assert not process_group_alive(pid), "the engine ends with the session"


@pytest.mark.slow
@pytest.mark.child_process
def test_cancel_stops_the_request_not_the_engine_and_the_next_run_uses_the_same_engine(small_unetpp, tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    with EngineClient() as client:
        run = start(client, long_volume(tmp_path / "long.nrrd"), RunOptions(small_unetpp, SegmentationOptions(batch_size=1), confidence_map=True), temp)
        until_progress(run)
        pid, output = client.pid, run.output_path
        run.cancel()
        assert run.state == CANCELLED and run.log[-1] == "Cancelled by the user" and run.view().progress_value == 0
        assert not output.exists() and list(temp.iterdir()) == [], "no output, no temporary file, no lock"
        assert run.poll() == []
        assert process_group_alive(pid, settle_s=0), "the engine stays up"

        following = segment(client, small_volume(tmp_path / "small.nrrd"), RunOptions(small_unetpp, SegmentationOptions(batch_size=1)), temp)
        assert following.state == IMPORTING, following.message
        assert client.pid == pid and client.starts == 1 and following.done_event["model"] == "cached"
        assert engine_reports(following) == [] and not any(line.startswith(("Error", "Failed")) for line in following.log)


@pytest.mark.slow
@pytest.mark.child_process
@pytest.mark.skipif(not POSIX, reason="kills the engine's process group")
@pytest.mark.parametrize("wait_for_death", [True, False], ids=["after-its-death", "while-it-dies"])
def test_an_engine_killed_between_runs_is_reported_once_and_the_next_run_succeeds(every_voxel_a, tmp_path, wait_for_death):
    volume, options = small_volume(tmp_path / "v.nrrd"), RunOptions(every_voxel_a)
    with EngineClient() as client:
        assert segment(client, volume, options, tmp_path).state == IMPORTING
        pid = client.pid
        os.killpg(pid, signal.SIGKILL)
        if wait_for_death:
            assert not process_group_alive(pid)
        after = segment(client, volume, options, tmp_path)
        assert after.state == IMPORTING, after.message
        assert (labels_of(after) == 1).all()
        reports = engine_reports(after)
        assert len(reports) == 1 and "killed by SIGKILL" in reports[0] and "a new engine was started" in reports[0], after.log
        after.finish_imported(2, "v segmentation")
        assert after.message.endswith("(with warnings, see the log)")
        assert client.pid != pid and client.starts == 2
        last = segment(client, volume, options, tmp_path)
        assert last.state == IMPORTING and engine_reports(last) == [] and last.done_event["model"] == "cached" and client.starts == 2


@pytest.mark.slow
@pytest.mark.child_process
@pytest.mark.skipif(not POSIX, reason="kills the engine's process group")
def test_an_engine_killed_during_a_run_fails_that_run_once_and_the_next_click_starts_a_new_engine(small_unetpp, every_voxel_a, tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    with EngineClient() as client:
        run = start(client, long_volume(tmp_path / "long.nrrd"), RunOptions(small_unetpp, SegmentationOptions(batch_size=1), confidence_map=True), temp)
        until_progress(run)
        pid = client.pid
        os.killpg(pid, signal.SIGKILL)
        assert run.wait(timeout_s=60) == FAILED
        assert "killed by SIGKILL" in run.message and run.message.endswith("the next request starts a new engine")
        assert [line for line in run.log if line.startswith("Failed")] == [f"Failed: {run.message}"]
        assert list(temp.iterdir()) == []
        following = segment(client, small_volume(tmp_path / "v.nrrd"), RunOptions(every_voxel_a), temp)
        assert following.state == IMPORTING and engine_reports(following) == [], "the death was said once, by the run it ended"
        assert client.starts == 2 and client.pid != pid


@pytest.mark.slow
@pytest.mark.child_process
@pytest.mark.parametrize("bad", ["checkpoint", "volume"])
def test_a_bad_input_is_one_message_and_the_engine_stays_up(every_voxel_a, tmp_path, bad):
    volume, options = small_volume(tmp_path / "v.nrrd"), RunOptions(every_voxel_a)
    with EngineClient() as client:
        assert segment(client, volume, options, tmp_path).state == IMPORTING
        pid = client.pid
        if bad == "checkpoint":
            broken = tmp_path / "bad.safetensors"
            broken.write_bytes(b"this is not a checkpoint at all")
            run = segment(client, volume, RunOptions(broken), tmp_path)
            message = f"{broken} is not a checkpoint: neither a safetensors file nor a PyTorch file (unknown magic bytes b'this')"
        else:
            nan = np.zeros((4, 8, 8), dtype=np.float32)
            nan[1, 2, 3] = np.nan
            run = segment(client, small_volume(tmp_path / "nan.nrrd", nan), options, tmp_path)
            message = None
        assert run.state == FAILED and (message is None or run.message == message), run.message
        assert message is not None or "contains NaN or infinite voxels" in run.message
        assert run.log == [f"Error: {run.message}", f"Failed: {run.message}"], "the panel words it as for a child"
        assert run.view().progress_text == f"Failed: {run.message}" and not run.folder.exists()
        assert segment(client, volume, options, tmp_path).state == IMPORTING
        assert client.pid == pid and client.starts == 1

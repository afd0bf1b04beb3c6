"""The run's state machine behind the Slicer panel (UNetSegmentationLib.panel.run), with the real
process runner and a real engine child: what the button and progress bar show in each state, events
in order, progress that only rises, cancel that leaves no child and no file, failures that show the
child's own message, temporary files removed in every outcome."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import make_volume, POSIX, process_group_alive, write

from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.panel import run as panel_run
from UNetSegmentationLib.panel.checkpoints import segment_id
from UNetSegmentationLib.panel.log_lines import describe_event, format_duration, format_eta, progress_text
from UNetSegmentationLib.panel.run import (
    APPLY_TEXT,
    CANCEL_TEXT,
    CANCELLED,
    DONE,
    EXPORTING,
    FAILED,
    IDLE,
    IMPORTING,
    INSTALLING,
    SEGMENTING,
    RunOptions,
    SegmentationRun,
    panel_view,
)
from UNetSegmentationLib.panel.selftest_support import constant_checkpoint, lps_from_ras, oblique_ijk_to_ras, sample_volume_array
from UNetSegmentationLib.protocol import runner
from UNetSegmentationLib.protocol.runner import EngineProcess
from UNetSegmentationLib.protocol.runner import RUNNING


def write_oblique_volume(path: Path, shape_kji=(10, 28, 32)) -> np.ndarray:
    """The volume of the Slicer self-test: oblique direction, anisotropic spacing; returns its IJK→RAS."""
    ijk_to_ras = oblique_ijk_to_ras()
    ijk_to_lps = lps_from_ras(ijk_to_ras)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(sample_volume_array(shape_kji))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((ijk_to_lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    sitk.WriteImage(image, str(path))
    return ijk_to_ras


def export(run: SegmentationRun, source: Path) -> None:
    """What the Slicer layer does with slicer.util.exportNode."""
    shutil.copyfile(source, run.begin_exporting())


# --- formatting and the view of each state ---------------------------------------------------------


def test_durations_and_eta_read_naturally():
    assert format_duration(0.4) == "0 s"
    assert format_duration(7.4) == "7 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3725) == "1 h 02 min"
    assert format_eta(None) == "estimating time left"
    assert format_eta(0.3) == "less than 1 s left"
    assert format_eta(42) == "about 42 s left"
    assert format_eta(61) == "about 1 min 01 s left"
    assert progress_text(8, 120, 31.25, 3.6) == "Segmenting: 8 of 120 slices, about 4 s left (31.2 slices/s)"
    assert progress_text(120, 120, 30.0, 0.0).startswith("Segmenting: 120 of 120 slices, finishing")


@pytest.mark.parametrize(
    "state, text, enabled, settings",
    [
        (IDLE, APPLY_TEXT, True, True),
        (INSTALLING, CANCEL_TEXT, False, False),
        (EXPORTING, CANCEL_TEXT, False, False),
        (SEGMENTING, CANCEL_TEXT, True, False),
        (IMPORTING, CANCEL_TEXT, False, False),
        (DONE, APPLY_TEXT, True, True),
        (FAILED, APPLY_TEXT, True, True),
        (CANCELLED, APPLY_TEXT, True, True),
    ],
)
def test_the_button_is_apply_when_idle_and_cancel_while_running(state, text, enabled, settings):
    view = panel_view(state, 50, "x")
    assert (view.button_text, view.button_enabled, view.settings_enabled, view.running) == (text, enabled, settings, not settings)
    assert view.progress_maximum == 100


def test_the_button_is_disabled_with_the_reason_until_the_inputs_allow_a_run():
    view = panel_view(IDLE, ready=False, reason="Select an input volume.")
    assert not view.button_enabled and view.button_tooltip == "Select an input volume." and view.progress_text == "Select an input volume."
    run = SegmentationRun(RunOptions(checkpoint=Path("x.safetensors")))
    assert run.view(ready=False, reason="Choose a model file").button_enabled is False
    assert run.view().progress_text == "Ready" and run.view().button_text == APPLY_TEXT


def test_state_texts_say_what_happens(tmp_path):
    run = SegmentationRun(RunOptions(checkpoint=tmp_path / "c.safetensors"), temp_root=tmp_path)
    run.begin_installing()
    assert run.view().progress_text.startswith("Installing dependencies")
    run.begin_exporting()
    assert run.view().progress_text == "Exporting the volume\u2026"
    values = [run.view().progress_value]
    assert values[0] == panel_run.PROGRESS_AT[EXPORTING]
    run.cancel()
    assert run.view().progress_text == "Cancelled" and run.view().progress_value == 0


def test_transitions_outside_the_diagram_are_refused(tmp_path):
    run = SegmentationRun(RunOptions(checkpoint=tmp_path / "c.safetensors"), temp_root=tmp_path)
    with pytest.raises(RuntimeError, match="cannot go from idle to importing"):
        run._enter(IMPORTING)
    with pytest.raises(RuntimeError):
        run.finish()
    run.begin_exporting()
    with pytest.raises(RuntimeError, match="exporting to installing"):
        run.begin_installing()
    run.fail("boom")
    run.fail("second failure is ignored")
    run.cancel()
    assert run.state == FAILED and run.message == "boom"


def test_arguments_follow_the_options(tmp_path):
    segmentation = SegmentationOptions(depth="2", device="cpu", batch_size=3, axis="k", largest_component=True)
    run = SegmentationRun(RunOptions(tmp_path / "m.safetensors", segmentation, confidence_map=True), temp_root=tmp_path)
    arguments = run.arguments()
    assert arguments[:3] == ["predict", "--checkpoint", str(tmp_path / "m.safetensors")]
    for flag, value in (("--depth", "2"), ("--device", "cpu"), ("--batch-size", "3"), ("--axis", "k"), ("--probabilities", str(run.confidence_path))):
        assert arguments[arguments.index(flag) + 1] == value
    assert "--largest-component" in arguments
    assert arguments[-2:] == [str(run.input_path), str(run.output_path)]
    assert run.output_path.name.endswith(".seg.nrrd") and run.input_path.parent == run.output_path.parent
    plain = SegmentationRun(RunOptions(tmp_path / "w.pt", architecture="unet", classes="liver, spleen"), temp_root=tmp_path)
    arguments = plain.arguments()
    assert "--axis" not in arguments and "--depth" not in arguments and "--probabilities" not in arguments and "--largest-component" not in arguments
    assert arguments[arguments.index("--arch") + 1] == "unet" and arguments[arguments.index("--classes") + 1] == "liver, spleen"
    run.cleanup()
    plain.cleanup()


def test_event_log_lines():
    assert describe_event({"event": "start", "version": 1, "command": "predict", "total": 34, "unit": "slice", "device": "cpu", "arch": "unetplusplus", "depth": 2, "geometry": "slices along k"}) == (
        "Segmenting 34 slices on cpu with unetplusplus at depth 2; slices along k"
    )
    assert describe_event({"event": "warning", "message": "spacing differs"}) == "Warning: spacing differs"
    assert describe_event({"event": "progress", "done": 1, "total": 2, "unit": "slice", "rate_per_s": 1.0, "eta_s": 1.0}) is None
    assert describe_event({"event": "done", "timings": {"network_s": 1.25, "total_s": 2.0}}) == "Segmentation computed in 2.0 s (network 1.2 s)"
    assert describe_event({"event": "log", "message": "exporting the network to ONNX (first run)"}) == "exporting the network to ONNX (first run)"


@pytest.mark.parametrize(
    "event, line",
    [
        ({"event": "start", "version": 1, "command": "train", "total": 300, "unit": "step", "device": "cuda", "arch": "unet"}, "Training 300 steps on cuda with unet"),
        ({"event": "start", "version": 1, "command": "evaluate", "total": 1, "unit": "case"}, "Evaluating 1 case"),
        ({"event": "start", "version": 2, "command": "export", "total": 4, "unit": "depth"}, "Running export: 4 depths"),
        ({"event": "start"}, "Segmenting slices"),
    ],
)
def test_start_events_of_any_command_get_a_line(event, line):
    assert describe_event(event) == line


def test_slicer_python_is_found_on_the_path():
    assert panel_run.slicer_python(lambda name: f"/opt/Slicer/bin/{name}") == "/opt/Slicer/bin/PythonSlicer"
    assert panel_run.slicer_python(lambda name: None) is None


# --- with a scripted engine (the Engine seam) ------------------------------------------------------------


class ScriptedEngine:
    """An engine child that hands over prepared events, one batch per poll, then ends in ``final_state``."""

    python = "scripted-python"

    def __init__(self, batches, final_state=runner.DONE, final_message=None):
        self.batches, self.final_state, self.final_message = list(batches), final_state, final_message
        self.state, self.error_message, self.cancelled = runner.IDLE, None, False

    def start(self):
        self.state = runner.RUNNING
        return self

    def poll(self):
        events = self.batches.pop(0) if self.batches else []
        if not self.batches and self.state == runner.RUNNING:
            self.state, self.error_message = self.final_state, self.final_message
        return events, self.state

    def cancel(self, grace_s=5.0):
        self.cancelled, self.state = True, runner.CANCELLED


def scripted_run(tmp_path, engine, lines):
    run = SegmentationRun(RunOptions(tmp_path / "m.safetensors"), temp_root=tmp_path, on_log=lines.append, engine_factory=lambda *spec: engine)
    run.begin_exporting().write_bytes(b"volume")
    run.start_segmenting()
    return run


def test_log_events_of_the_engine_reach_the_panel_log(tmp_path):
    start = {"event": "start", "version": 1, "command": "predict", "total": 4, "unit": "slice", "device": "cpu", "arch": "unet"}
    log = {"event": "log", "message": "exporting the network to ONNX (first run, about 10 s)"}
    progress = {"event": "progress", "done": 2, "total": 4, "unit": "slice", "rate_per_s": 2.0, "eta_s": 1.0}
    done = {"event": "done", "timings": {"total_s": 3.0}}
    lines = []
    run = scripted_run(tmp_path, ScriptedEngine([[start, log], [progress], [done, {"event": "exit", "returncode": 0}]]), lines)
    while run.state == SEGMENTING:
        run.poll()
        if run.last_progress and run.state == SEGMENTING:
            assert run.view().progress_text == "Segmenting: 2 of 4 slices, about 1 s left (2.0 slices/s)"
    assert run.state == IMPORTING
    assert lines == ["Segmenting 4 slices on cpu with unet", "exporting the network to ONNX (first run, about 10 s)", "Segmentation computed in 3.0 s"]
    run.cleanup()


def test_a_failing_engine_fails_the_run_with_its_message_and_cancel_reaches_the_engine(tmp_path):
    message = "out of memory: try a smaller --batch-size"
    failing = ScriptedEngine([[{"event": "error", "message": message}]], final_state=runner.FAILED, final_message=message)
    lines = []
    run = scripted_run(tmp_path, failing, lines)
    run.poll()
    assert run.state == FAILED and run.message == message
    assert lines == [f"Error: {message}", f"Failed: {message}"]
    endless = ScriptedEngine([[], [], []])
    run = scripted_run(tmp_path, endless, [])
    run.cancel()
    assert endless.cancelled and run.state == CANCELLED and not run.folder.exists()


class Timer:
    def __init__(self):
        self.active = False

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def test_one_controller_drives_a_run_through_its_child_the_step_after_and_the_end(tmp_path):
    from UNetSegmentationLib.panel.run_controller import RunController

    done = {"event": "done", "timings": {"total_s": 1.0}}
    after, finished = [], []
    controller = RunController(Timer(), panel_run.panel_view, after_child=lambda run: (after.append(run.state), run.finish_imported(2, "CT segmentation")),
                               on_finished=finished.append)
    assert controller.view(False, "Select an input volume.").progress_text == "Select an input volume."
    assert not controller.press_cancels(), "no run: the button starts one"
    run = SegmentationRun(RunOptions(tmp_path / "m.safetensors"), temp_root=tmp_path, engine_factory=lambda *spec: ScriptedEngine([[done]]))
    controller.start(run, lambda run: (run.begin_exporting().write_bytes(b"volume"), run.start_segmenting()))
    assert controller.timer.active and controller.running
    while controller.timer.active:
        controller.tick()
    assert after == [IMPORTING], "the step after the child ran once, in its state"
    assert finished == [run] and run.state == DONE and run.message.endswith("2 segment(s) in 'CT segmentation'")
    controller.tick()
    assert finished == [run], "the end is reported once"
    controller.forget()  # the scene closed
    assert controller.run is None and controller.view(True, "").progress_text == "Ready"


def test_the_controller_fails_a_run_whose_start_or_after_step_raises_and_cancels_an_active_one(tmp_path):
    from UNetSegmentationLib.panel.run_controller import RunController

    def run_of(engine):
        return SegmentationRun(RunOptions(tmp_path / "m.safetensors"), temp_root=tmp_path, engine_factory=lambda *spec: engine)

    def broken_start(run):
        raise RuntimeError("the volume 'CT' could not be written to a temporary file")

    finished = []
    controller = RunController(Timer(), panel_run.panel_view, on_finished=finished.append)
    controller.start(run_of(ScriptedEngine([[]])), broken_start)
    assert controller.failed and controller.run.message == "the volume 'CT' could not be written to a temporary file" and not controller.timer.active
    assert finished == [controller.run]

    def broken_import(run):
        raise RuntimeError("the input volume was removed from the scene during the segmentation")

    controller = RunController(Timer(), panel_run.panel_view, after_child=broken_import)
    controller.start(run_of(ScriptedEngine([[{"event": "done"}]])), lambda run: (run.begin_exporting().write_bytes(b"v"), run.start_segmenting()))
    while controller.timer.active:
        controller.tick()
    assert controller.failed and "removed from the scene" in controller.run.message

    endless = ScriptedEngine([[], [], [], []])
    controller = RunController(Timer(), panel_run.panel_view)
    controller.start(run_of(endless), lambda run: (run.begin_exporting().write_bytes(b"v"), run.start_segmenting()))
    assert controller.press_cancels(), "while running, the button is Cancel"
    assert endless.cancelled and controller.cancelled and not controller.timer.active and not controller.run.folder.exists()


# --- with a real engine child ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def every_voxel_a(tmp_path_factory) -> Path:
    """A checkpoint made by ``unetseg create`` whose heads always choose class "a" (label 1)."""
    from support import create_checkpoint

    folder = tmp_path_factory.mktemp("run-ckpt")
    untrained = create_checkpoint(folder / "untrained.safetensors", classes="a,b")
    return constant_checkpoint(untrained, folder / "every-voxel-a.safetensors", label_value=1)


class OneEventPerPoll(EngineProcess):
    """The engine child, handing over one event per ``poll()`` (its state follows the last one handed over).

    The engine on a cached ONNX export segments these 10 small slices in a fraction of a second, so
    a real poll often sees every event at once; this makes the test independent of that speed, as a
    GUI timer that fires between any two of the child's events.
    """

    def __init__(self, *arguments, **options) -> None:
        super().__init__(*arguments, **options)
        self._backlog = []

    def poll(self):
        events, state = super().poll()
        self._backlog.extend(events)
        if len(self._backlog) > 1:
            return [self._backlog.pop(0)], RUNNING
        delivered, self._backlog = self._backlog, []
        return delivered, state


def one_event_per_poll(arguments, outputs, python, idle_timeout_s) -> EngineProcess:
    return OneEventPerPoll(arguments, outputs=outputs, python=python, idle_timeout_s=idle_timeout_s)


@pytest.mark.child_process
@pytest.mark.slow
def test_a_run_goes_through_every_state_with_rising_progress(every_voxel_a, tmp_path):
    import slicerio

    from UNetSegmentationLib.model.header import read_metadata

    volume = tmp_path / "oblique.nrrd"
    ijk_to_ras = write_oblique_volume(volume)
    lines = []
    options = RunOptions(every_voxel_a, SegmentationOptions(batch_size=2, largest_component=True), confidence_map=True)
    run = SegmentationRun(options, temp_root=tmp_path, on_log=lines.append, engine_factory=one_event_per_poll)
    views = [run.view()]
    run.begin_installing()  # as after a confirmed installation
    views.append(run.view())
    export(run, volume)
    views.append(run.view())
    run.start_segmenting()
    assert run.state == SEGMENTING and isinstance(run.engine, OneEventPerPoll) and run.engine.pid
    deadline = time.monotonic() + 180
    while run.state == SEGMENTING and time.monotonic() < deadline:
        run.poll()
        views.append(run.view())
        time.sleep(0.02)
    assert run.state == IMPORTING, run.message
    views.append(run.view())

    # events in order: start, progress (done rising to the total), done, exit
    kinds = [e["event"] for e in run.events if e["event"] not in ("log", "warning")]
    assert kinds[0] == "start" and kinds[-2:] == ["done", "exit"] and set(kinds[1:-2]) == {"progress"}
    done = [e["done"] for e in run.events if e["event"] == "progress"]
    assert done == sorted(done) and done[-1] == run.start_event["total"] == 10
    # the bar only rises, and the text counts slices while segmenting
    values = [v.progress_value for v in views]
    assert values == sorted(values), values
    assert any(panel_run.PROGRESS_AT[SEGMENTING] < v < panel_run.PROGRESS_AT[IMPORTING] for v in values)
    assert any(v.progress_text.startswith("Segmenting: ") and " of 10 slices" in v.progress_text for v in views)
    assert [v.button_text for v in views if v.state == SEGMENTING][0] == CANCEL_TEXT
    assert views[-1].state == IMPORTING and views[-1].progress_text == "Importing the segmentation\u2026"
    assert any(line.startswith("Segmenting 10 slices on cpu with unetplusplus") for line in lines)

    # what the Slicer layer imports: names, colours, ids and the input's exact geometry
    assert run.output_path.is_file() and run.confidence_path.is_file()
    metadata = read_metadata(every_voxel_a)
    segmentation = slicerio.read_segmentation(str(run.output_path))
    segments = {s["name"]: s for s in segmentation["segments"]}
    assert list(segments) == ["a", "b"]
    for info in metadata.classes:
        assert segments[info.name]["id"] == segment_id(info.value)
        assert segments[info.name]["labelValue"] == info.value
        np.testing.assert_allclose(segments[info.name]["color"], info.color)
    voxels = np.asarray(segmentation["voxels"])
    assert voxels.shape == (32, 28, 10) and (voxels == 1).all()
    np.testing.assert_allclose(segmentation["ijkToLPS"], lps_from_ras(ijk_to_ras), atol=1e-5)

    folder = run.folder
    run.finish()
    assert run.state == DONE and run.view().progress_value == 100 and run.view().button_text == APPLY_TEXT
    assert run.view().progress_text.startswith("Done in ")
    assert not folder.exists(), "temporary files must be removed after a run"


@pytest.mark.child_process
@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
def test_cancel_mid_run_leaves_no_child_and_no_output(small_unetpp, tmp_path):
    volume = tmp_path / "long.nrrd"
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 300, (160, 48, 48)).astype(np.int16))
    sitk.WriteImage(image, str(volume))
    run = SegmentationRun(RunOptions(small_unetpp, SegmentationOptions(batch_size=1), confidence_map=True), temp_root=tmp_path / "temp")
    (tmp_path / "temp").mkdir()
    export(run, volume)
    run.start_segmenting()
    deadline = time.monotonic() + 180
    while run.state == SEGMENTING and run.last_progress is None and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.02)
    assert run.state == SEGMENTING and run.last_progress, run.message
    assert run.view().button_enabled and run.view().button_text == CANCEL_TEXT
    pid, folder = run.engine.pid, run.folder
    run.cancel()
    assert run.state == CANCELLED
    assert not process_group_alive(pid), "the child (and its process group) must be gone"
    assert not folder.exists() and list((tmp_path / "temp").iterdir()) == []
    view = run.view()
    assert (view.button_text, view.button_enabled, view.progress_value, view.progress_text) == (APPLY_TEXT, True, 0, "Cancelled")
    assert run.log[-1] == "Cancelled by the user"
    assert run.poll() == []  # nothing more happens


@pytest.mark.child_process
def test_a_failing_child_shows_its_own_message(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a checkpoint at all")
    volume = tmp_path / "v.nrrd"
    write_oblique_volume(volume, (4, 16, 16))
    run = SegmentationRun(RunOptions(checkpoint=bad), temp_root=tmp_path)
    export(run, volume)
    run.start_segmenting()
    assert run.wait(timeout_s=120) == FAILED
    assert run.message == f"{bad} is not a checkpoint: neither a safetensors file nor a PyTorch file (unknown magic bytes b'this')"
    view = run.view()
    assert view.progress_text == f"Failed: {run.message}" and view.button_text == APPLY_TEXT and view.button_enabled
    assert run.log[-1] == f"Failed: {run.message}"
    assert not run.folder.exists()


@pytest.mark.child_process
def test_no_exported_volume_fails_before_starting_a_child(tmp_path):
    run = SegmentationRun(RunOptions(checkpoint=tmp_path / "c.safetensors"), temp_root=tmp_path)
    run.begin_exporting()  # the export wrote nothing
    run.start_segmenting()
    assert run.state == FAILED and run.engine is None
    assert run.message == "the volume was not exported (no input file was written)"


@pytest.mark.child_process
def test_an_interpreter_that_cannot_start_is_reported(tmp_path):
    volume = tmp_path / "v.nrrd"
    write_oblique_volume(volume, (4, 16, 16))
    run = SegmentationRun(RunOptions(checkpoint=tmp_path / "c.safetensors"), python=str(tmp_path / "no-such-python"), temp_root=tmp_path)
    export(run, volume)
    run.start_segmenting()
    assert run.state == FAILED and run.message.startswith("cannot start the segmentation process")
    assert not run.folder.exists()


@pytest.mark.child_process
@pytest.mark.skipif(os.name == "nt", reason="uses a script with a #! line as the interpreter")
def test_wait_with_a_timeout_stops_a_hung_child(tmp_path):
    hung = tmp_path / "hung-python"
    hung.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    hung.chmod(hung.stat().st_mode | stat.S_IXUSR)
    volume = tmp_path / "v.nrrd"
    write_oblique_volume(volume, (4, 16, 16))
    run = SegmentationRun(RunOptions(checkpoint=tmp_path / "c.safetensors"), python=str(hung), temp_root=tmp_path)
    export(run, volume)
    run.start_segmenting()
    pid = run.engine.pid
    polled = []
    assert run.wait(timeout_s=0.5, interval_s=0.05, on_poll=lambda: polled.append(1)) == FAILED
    assert run.message.startswith("the segmentation did not finish within") and run.message.endswith("and was stopped")
    assert polled and not process_group_alive(pid) and not run.folder.exists()


@pytest.mark.child_process
@pytest.mark.skipif(not POSIX, reason="uses scripts with a #! line as the interpreter")
@pytest.mark.parametrize("how", ["cancel", "fail"])
@pytest.mark.parametrize("state", [panel_run.IDLE, panel_run.INSTALLING, panel_run.EXPORTING, panel_run.SEGMENTING, panel_run.IMPORTING])
def test_cancel_or_failure_in_every_state_of_the_panel_run_ends_cleanly(tmp_path, state, how):
    """The state machine of the panel: in every state, cancel (or a failure) stops any child, removes
    the temporary folder, and leaves the panel ready for the next run."""
    hung = tmp_path / "hung-python"  # a child that never answers (segmenting)
    hung.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    finished = tmp_path / "finished-python"  # a child that reports a result at once (then: importing)
    finished.write_text(f"#!{sys.executable}\nimport json\nprint(json.dumps({{'event': 'done', 'output': 'x'}}))\n")
    for script in (hung, finished):
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    volume = write(make_volume(size=(8, 8, 2)), tmp_path / "v.nrrd")
    temp_root = tmp_path / "temp"
    temp_root.mkdir()
    run = SegmentationRun(RunOptions(checkpoint=tmp_path / "c.safetensors"), python=str(hung if state == panel_run.SEGMENTING else finished), temp_root=temp_root)

    order = [panel_run.INSTALLING, panel_run.EXPORTING, panel_run.SEGMENTING, panel_run.IMPORTING]
    for step in order[: order.index(state) + 1] if state != panel_run.IDLE else []:
        if step == panel_run.INSTALLING:
            run.begin_installing()
        elif step == panel_run.EXPORTING:
            shutil.copyfile(volume, run.begin_exporting())
        elif step == panel_run.SEGMENTING:
            run.start_segmenting()
        else:
            while run.state == panel_run.SEGMENTING:
                run.poll()
                time.sleep(0.02)
            run.output_path.write_bytes(b"result being imported")
    assert run.state == state, run.message
    pid = run.engine.pid if run.engine else None

    if how == "cancel":
        run.cancel()
        assert run.state == CANCELLED and run.message == "Cancelled"
        expected_text = "Cancelled"
    else:
        run.fail("the import failed: no segmentation in the file")
        assert run.state == FAILED
        expected_text = "Failed: the import failed: no segmentation in the file"
    view = run.view()
    assert (view.button_text, view.button_enabled, view.settings_enabled, view.running) == (panel_run.APPLY_TEXT, True, True, False)
    assert view.progress_text == expected_text
    assert list(temp_root.iterdir()) == [], "the temporary folder must go in every outcome"
    if pid is not None:
        assert not process_group_alive(pid)
    final = run.state
    run.cancel()  # a second cancel (or a late poll) changes nothing
    assert run.poll() == [] and run.state == final

"""The bad-input and failure matrix (docs/hardening.md): every case ends in one clear message naming
the problem, a non-zero exit (or a failed/cancelled state of the panel's run), no partial output,
nothing of the user's overwritten and no process left behind — or, where the case is valid input,
in a correct result. Cases already covered elsewhere (test_bad_input.py, test_runner.py,
test_slicer_run.py, test_training.py, ...) are only named in the table, not repeated here."""

from __future__ import annotations

import builtins
import csv
import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from support import assert_refused, create_checkpoint, leftovers, make_volume, process_group_alive, write_dicom_series
from test_bad_input import rewrite_metadata
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.inference.predict_file import predict_file
from UNetSegmentationLib.io import outputs
from UNetSegmentationLib.panel import run as slicer_run
from UNetSegmentationLib.io import volumes as volume_io
from UNetSegmentationLib.errors import EXIT_USER_ERROR, UserError
from UNetSegmentationLib.backends.memory import MemoryGuard, is_out_of_memory
from UNetSegmentationLib.io.outputs import lock_path, temporary_path
from UNetSegmentationLib.protocol.runner import CANCELLED, DONE, FAILED, EngineProcess
from UNetSegmentationLib.panel.run import RunOptions, SegmentationRun
from UNetSegmentationLib.protocol.reporters import Reporter
from UNetSegmentationLib.io.volumes import MAX_SLICE_PIXELS, check_slice_size
from UNetSegmentationLib.backends.torch_predictor import SlicePredictor

POSIX = os.name != "nt"


# --- helpers ---------------------------------------------------------------------------------------


def assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def with_array(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    return image


def alive(pid: int, settle_s: float = 3.0) -> bool:
    """Whether process ``pid`` still runs (zombies count as gone), after ``settle_s`` for the system to reap it."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            with open(f"/proc/{pid}/stat") as file:
                running = file.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            running = False
        except OSError:
            try:
                os.kill(pid, 0)
                running = True
            except ProcessLookupError:
                running = False
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.05)


def wait_for(run: EngineProcess, kind: str, timeout_s: float = 120, starting: str = "") -> list:
    """Poll until an event of ``kind`` arrives (with a ``message`` starting with ``starting``, when given);
    returns all events so far; fails if the run ends first."""
    events = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new, state = run.poll()
        events += new
        if any(e.get("event") == kind and str(e.get("message", "")).startswith(starting) for e in new):
            return events
        assert state == "running", (state, run.error_message, events)
        time.sleep(0.02)
    raise AssertionError(f"no {kind} event within {timeout_s} s")


@pytest.fixture
def predict(cli, small_unet_one_class, tmp_path):
    """``unetseg predict`` into ``tmp_path/out/labels.nrrd`` with the small one-class U-Net."""
    output = tmp_path / "out" / "labels.nrrd"
    output.parent.mkdir()

    def run(input_path, *extra, checkpoint=small_unet_one_class, progress="none"):
        return cli("predict", "--checkpoint", checkpoint, "--progress", progress, *extra, input_path, output), output

    return run


@pytest.fixture
def long_volume(tmp_path) -> Path:
    """60 slices of 48x48: long enough, at batch size 1, to act on a child while it runs."""
    path = tmp_path / "long.nrrd"
    write(sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 300, (60, 48, 48)).astype(np.int16)), path)
    return path


# --- inputs ----------------------------------------------------------------------------------------


def test_an_empty_volume_is_refused(predict, tmp_path):
    header = tmp_path / "empty.mha"  # a valid MetaImage header with 0 slices
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 8 8 0\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    assert_refused(*predict(header), "is empty", "(8, 8, 0)")
    nrrd = tmp_path / "empty.nrrd"  # NRRD refuses a zero size in its own reader
    nrrd.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 0\nencoding: raw\n\n")
    assert_refused(*predict(nrrd), "cannot read", "size is zero")


@pytest.mark.parametrize("extension", [".nrrd", ".nii.gz"])
def test_a_one_slice_volume_is_segmented(predict, tmp_path, extension):
    path = write(make_volume(size=(40, 36, 1)), tmp_path / f"one-slice{extension}")
    result, output = predict(path, progress="json")
    assert result.code == 0, result.stderr
    assert result.events[0]["event"] == "start" and result.events[0]["total"] == 1
    assert_same_grid(sitk.ReadImage(str(path)), sitk.ReadImage(str(output)))


@pytest.mark.parametrize("norm", ["ct:-1000,1000", "mr"])
def test_a_constant_volume_is_segmented_with_a_warning(cli, tmp_path, norm):
    checkpoint = create_checkpoint(tmp_path / f"{norm[:2]}.safetensors", arch="unet", classes="liver", features="4,8,16", extra=("--norm", norm))
    like = make_volume(size=(24, 20, 3))
    path = write(with_array(np.full((3, 20, 24), -1000, np.int16), like), tmp_path / "air.nrrd")
    output = tmp_path / "labels.nrrd"
    result = cli("predict", "--checkpoint", checkpoint, "--progress", "json", path, output)
    assert result.code == 0, result.stderr
    warnings = [e["message"] for e in result.events if e["event"] == "warning"]
    assert any("input is constant (every voxel is -1000)" in w for w in warnings), warnings
    assert_same_grid(like, sitk.ReadImage(str(output)))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_every_scalar_voxel_type_is_segmented(predict, tmp_path, dtype):
    like = make_volume(size=(24, 20, 4), dtype=np.float64)
    array = sitk.GetArrayFromImage(like)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = np.clip(array + (1024 if info.min == 0 else 0), info.min, info.max)  # unsigned: CT stored with an offset
    path = write(with_array(array.astype(dtype), like), tmp_path / f"volume-{np.dtype(dtype).name}.nrrd")
    result, output = predict(path)
    assert result.code == 0, result.stderr
    written = sitk.ReadImage(str(output))
    assert_same_grid(like, written)
    assert written.GetPixelID() == sitk.sitkUInt8


def test_a_volume_with_infinite_voxels_is_refused(predict, tmp_path):
    like = make_volume(size=(24, 20, 4), dtype=np.float32)
    array = sitk.GetArrayFromImage(like)
    array[2, 3, 4] = np.inf
    array[1, 1, 1] = -np.inf
    assert_refused(*predict(write(with_array(array, like), tmp_path / "inf.nrrd")), "NaN or infinite", "2 Inf")


class NetworkMustNotRun:
    """A predictor stand-in that fails the test when any slice reaches it."""

    required_multiple = 16

    def __init__(self, metadata) -> None:
        self.metadata = metadata

    def __call__(self, batch):
        raise AssertionError(f"the network ran on a batch of shape {batch.shape}")


def network_must_not_run(checkpoint, plan, depth, classification_guidance):
    """A predictor factory (``predict_file``'s seam) whose predictor must never be called."""
    return NetworkMustNotRun(checkpoint.metadata), []


def test_slices_above_the_size_limit_are_refused_before_any_network_call(small_unet_one_class, tmp_path):
    path = write(sitk.Image([2049, 2048, 1], sitk.sitkUInt8), tmp_path / "huge.nrrd")  # 4.2 million pixels + one row
    output = tmp_path / "labels.nrrd"
    with pytest.raises(UserError) as refused:
        predict_file(path, output, small_unet_one_class, SegmentationOptions(), predictor_factory=network_must_not_run)
    for phrase in ("2048x2049 pixels", "more than the 4.2 million (2048x2048)", "resample", "UNETSEG_MAX_SLICE_PIXELS"):
        assert phrase in str(refused.value)
    assert not output.exists() and leftovers(tmp_path) == []


def test_the_slice_size_limit_is_2048_squared_and_can_be_raised(monkeypatch):
    monkeypatch.delenv("UNETSEG_MAX_SLICE_PIXELS", raising=False)
    assert MAX_SLICE_PIXELS == 2048 * 2048
    check_slice_size((2048, 2048))
    check_slice_size((1024, 4096))
    with pytest.raises(UserError, match="2048x2049 pixels"):
        check_slice_size((2048, 2049))
    monkeypatch.setenv("UNETSEG_MAX_SLICE_PIXELS", str(4096 * 4096))
    check_slice_size((4096, 4096))
    monkeypatch.setenv("UNETSEG_MAX_SLICE_PIXELS", "100")
    with pytest.raises(UserError, match="more than the 0.0 million one network call"):
        check_slice_size((10, 11))


def deny_reading(monkeypatch, module, path: Path) -> None:
    """``open`` in ``module`` refuses ``path`` as the operating system does for a file without read
    permission (tests run as root, who reads any file)."""
    real_open = builtins.open

    def denying_open(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(module, "open", denying_open, raising=False)


def test_an_unreadable_input_is_named_as_a_permission_problem(predict, tmp_path, monkeypatch):
    """Tests run as root, who reads any file: the refusal of the operating system is simulated."""
    path = write(make_volume(size=(16, 16, 2)), tmp_path / "secret.nrrd")
    deny_reading(monkeypatch, volume_io, path)
    assert_refused(*predict(path), "cannot read", "secret.nrrd", "permission denied", "read access")


@pytest.mark.skipif(not POSIX or os.geteuid() == 0, reason="root reads any file (the simulated test covers it)")
def test_an_unreadable_input_is_named_as_a_permission_problem_for_real(predict, tmp_path):
    path = write(make_volume(size=(16, 16, 2)), tmp_path / "secret.nrrd")
    path.chmod(0)
    assert_refused(*predict(path), "permission denied")


def test_an_unreadable_checkpoint_is_named_as_a_permission_problem(predict, oblique_volume_path, small_unet_one_class, monkeypatch):
    from UNetSegmentationLib.model import header as checkpoint_header

    deny_reading(monkeypatch, checkpoint_header, small_unet_one_class)
    assert_refused(*predict(oblique_volume_path), "cannot read checkpoint", "Permission denied")


def test_a_dicom_folder_with_two_series_is_refused_naming_both(predict, chest_ct_path, tmp_path):
    image = sitk.ReadImage(str(chest_ct_path))[:, :, :3]
    image.SetDirection([round(v) for v in image.GetDirection()])
    folder = tmp_path / "two series"
    folder.mkdir()
    write_dicom_series(image, folder, "1.2.826.0.1.3680043.2.1125.1.1", "a")
    write_dicom_series(image, folder, "1.2.826.0.1.3680043.2.1125.1.2", "b")
    assert_refused(*predict(folder), "holds 2 DICOM series", "1.2.826.0.1.3680043.2.1125.1.1", "1.2.826.0.1.3680043.2.1125.1.2", "folder of its own")


def test_a_folder_without_dicom_files_is_refused(predict, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")
    assert_refused(*predict(folder), "folder without a DICOM series")


UNUSUAL = "Patient Müller – 患者 ø"


def unusual_files(folder: Path, checkpoint: Path) -> tuple:
    """Volume, checkpoint, outputs in a folder whose path has spaces and non-ASCII characters."""
    folder = folder / UNUSUAL
    folder.mkdir()
    volume = write(make_volume(size=(24, 20, 3)), folder / "CT Thorax ü.nrrd")
    copy = folder / "Modell ß.safetensors"
    shutil.copyfile(checkpoint, copy)
    return volume, copy, folder / "Ergebnis é.seg.nrrd", folder / "Konfidenz ñ.nii.gz"


def test_paths_with_spaces_and_non_ascii_characters_work(cli, small_unet_one_class, tmp_path):
    import slicerio

    volume, checkpoint, output, confidence = unusual_files(tmp_path, small_unet_one_class)
    result = cli("predict", "--checkpoint", checkpoint, "--progress", "none", "--probabilities", confidence, volume, output)
    assert result.code == 0, result.stderr
    assert [s["name"] for s in slicerio.read_segmentation(str(output))["segments"]] == ["liver"]
    assert_same_grid(sitk.ReadImage(str(volume)), sitk.ReadImage(str(confidence)))
    assert leftovers(output.parent) == []


def test_the_child_process_gets_non_ascii_paths_intact(small_unet_one_class, tmp_path):
    volume, checkpoint, output, _ = unusual_files(tmp_path, small_unet_one_class)
    run = EngineProcess(SegmentationOptions().to_arguments(volume, output, checkpoint), outputs=[output]).start()
    assert run.wait(timeout=180) == DONE, run.error_message
    assert run.done_event["output"] == str(output) and output.is_file()


# --- checkpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, phrase",
    [
        (lambda m: m.update(architecture="unet"), "'architecture' must be {'name': str"),
        (lambda m: m["architecture"]["kwargs"].update(features="4,8,16"), "'features' must be a list"),
        (lambda m: m["architecture"]["kwargs"].update(features=[4, 10**40]), "'features' must be a list"),
        (lambda m: m["architecture"]["kwargs"].update(bogus=1), "does not take argument(s) bogus"),
        (lambda m: m["architecture"]["kwargs"].update(dropout="lots"), "cannot build architecture 'unet'"),
        (lambda m: m.update(format_version="1"), "no integer format_version"),
        (lambda m: m["normalization"].update(window=[1000, -1000]), "two increasing finite numbers"),
        (lambda m: m.update(normalization={"kind": "pet"}), "normalization must be"),
        (lambda m: m["classes"][0].update(value=0), "label value must be an integer in 1..65535"),
        (lambda m: m["classes"][0].update(value=10**30), "label value must be an integer in 1..65535"),
        (lambda m: m["classes"][0].update(color="red"), "color must be three numbers in [0, 1]"),
        (lambda m: m["classes"][0].update(name=""), "name must be a non-empty string"),
        (lambda m: m.update(classes={"liver": 1}), "class list is empty"),
        (lambda m: m.update(training_spacing=[1, -2]), "training_spacing must be 2 or 3 positive numbers"),
        (lambda m: m.update(depth_metrics={"²": {"dice": 0.9}}), "depth_metrics"),
        (lambda m: m.update(recommended_depth=0), "recommended_depth must be a positive integer"),
        (lambda m: m.update(context=-1), "'context' must be an integer in 0..16"),
        (lambda m: m.update(context=True), "'context' must be an integer in 0..16"),
    ],
    ids=["architecture-not-object", "features-string", "features-huge", "unknown-kwarg", "kwarg-wrong-type", "version-string",
         "window-reversed", "normalization-kind", "label-zero", "label-huge", "colour-string", "name-empty", "classes-object",
         "spacing-negative", "depth-key-unicode-digit", "recommended-depth-zero", "context-negative", "context-bool"],
)
def test_more_broken_metadata_is_named(predict, oblique_volume_path, small_unet_one_class, tmp_path, change, phrase):
    checkpoint = rewrite_metadata(small_unet_one_class, tmp_path / "m.safetensors", change)
    assert_refused(*predict(oblique_volume_path, checkpoint=checkpoint), phrase)


def test_metadata_that_is_not_json_or_absent_is_named(predict, oblique_volume_path, small_unet_one_class, tmp_path):
    import struct

    data = small_unet_one_class.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])

    def with_header(name, metadata):
        header["__metadata__"] = metadata
        encoded = json.dumps(header).encode()
        path = tmp_path / name
        path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size :])
        return path

    assert_refused(*predict(oblique_volume_path, checkpoint=with_header("a.safetensors", {"unetseg": "{not json"})), "metadata is not valid JSON")
    assert_refused(*predict(oblique_volume_path, checkpoint=with_header("b.safetensors", {"other": "x"})), "without UNetSegmentation metadata")
    too_long = tmp_path / "c.safetensors"
    too_long.write_bytes(struct.pack("<Q", 10**9) + data[8:])
    assert_refused(*predict(oblique_volume_path, checkpoint=too_long), "truncated or corrupt", "header says 1000000000 bytes")


def test_metadata_asking_for_a_huge_network_is_refused_without_building_it(predict, oblique_volume_path, small_unet_one_class, tmp_path, monkeypatch):
    """The shapes are compared on the meta device first: no memory goes to a network the weights cannot fill."""
    from UNetSegmentationLib.model import checkpoint as checkpoint_module

    devices = []
    real_build = checkpoint_module.build_network

    def recording_build(name, kwargs):
        devices.append(str(torch.get_default_device()))
        return real_build(name, kwargs)

    monkeypatch.setattr(checkpoint_module, "build_network", recording_build)
    checkpoint = rewrite_metadata(small_unet_one_class, tmp_path / "huge.safetensors", lambda m: m["architecture"]["kwargs"].update(features=[4, 8, 2048]))
    assert_refused(*predict(oblique_volume_path, checkpoint=checkpoint), "do not match architecture 'unet'", "wrong shape")
    assert devices == ["meta"]


# --- runs: outputs -------------------------------------------------------------------------------------


def test_an_output_folder_without_write_permission_is_refused_before_any_work(predict, tmp_path, monkeypatch):
    """Neither the input nor the checkpoint exists: a run that looked at either first would name them instead."""
    real_access = os.access
    denied = []

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).name == "out":
            denied.append(path)
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)  # the operating system's answer (tests run as root, who may write anywhere)
    result, output = predict(tmp_path / "no such input.nrrd", checkpoint=tmp_path / "no such checkpoint.safetensors")
    assert_refused(result, output, "cannot write output", "no permission to write in")
    assert denied


def test_a_folder_that_becomes_unwritable_during_the_run_leaves_the_old_output(predict, oblique_volume_path, monkeypatch):
    result, output = predict(oblique_volume_path)
    assert result.code == 0
    before = output.read_bytes()

    def replace(source, target):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(outputs.os, "replace", replace)
    again, _ = predict(oblique_volume_path, "--overwrite")
    assert again.code == EXIT_USER_ERROR and again.stderr.strip() == f"unetseg: error: cannot write {output}: Permission denied"
    assert output.read_bytes() == before and leftovers(output.parent) == []


def half_written_then_disk_full(path, *args, **kwargs):
    """A writer that gets half a file out before the disk is full (as an OSError, like Python's writers)."""
    Path(path).write_bytes(b"NRRD0004\n# half a file")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize("extension", [".nrrd", ".seg.nrrd", ".nii.gz"])
def test_a_full_disk_during_the_write_keeps_the_old_output_and_leaves_no_temporary(cli, small_unet_one_class, oblique_volume_path, tmp_path, monkeypatch, extension):
    import slicerio

    output = tmp_path / f"labels{extension}"
    output.write_bytes(b"the user's earlier result")
    if extension == ".seg.nrrd":  # slicerio raises OSError
        monkeypatch.setattr(slicerio, "write_segmentation", half_written_then_disk_full)
    else:  # ITK reports a full disk as a RuntimeError naming the reason

        def itk_writer(image, path, *args, **kwargs):
            Path(path).write_bytes(b"half")
            raise RuntimeError(f"Exception thrown in SimpleITK WriteImage: ...\nitk::ERROR: could not write {path}: No space left on device")

        monkeypatch.setattr(sitk, "WriteImage", itk_writer)
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--overwrite", oblique_volume_path, output)
    assert result.code == EXIT_USER_ERROR, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"unetseg: error: cannot write {output}") and "No space left on device" in lines[0], lines
    assert ".partial" not in lines[0]
    assert output.read_bytes() == b"the user's earlier result"
    assert leftovers(tmp_path) == []


def test_a_full_disk_on_the_second_output_leaves_neither(cli, small_unet_one_class, oblique_volume_path, tmp_path, monkeypatch):
    output, confidence = tmp_path / "labels.nrrd", tmp_path / "confidence.nrrd"
    real_write = sitk.WriteImage

    def disk_full_on_the_confidence_map(image, path, *args, **kwargs):  # the labels are written, then the disk is full
        if "confidence" not in Path(path).name:
            return real_write(image, path, *args, **kwargs)
        Path(path).write_bytes(b"half")
        raise RuntimeError(f"Exception thrown in SimpleITK WriteImage: ...\nitk::ERROR: could not write {path}: No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", disk_full_on_the_confidence_map)
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--probabilities", confidence, oblique_volume_path, output)
    assert result.code == EXIT_USER_ERROR and "No space left on device" in result.stderr, result.stderr
    assert not output.exists() and not confidence.exists() and leftovers(tmp_path) == []


def test_an_output_that_would_replace_the_input_is_refused(cli, small_unet_one_class, oblique_volume_path):
    before = oblique_volume_path.read_bytes()
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--overwrite", oblique_volume_path, oblique_volume_path)
    assert result.code == EXIT_USER_ERROR and "would overwrite the input" in result.stderr
    assert oblique_volume_path.read_bytes() == before


@pytest.mark.skipif(not POSIX, reason="process groups are POSIX")
def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(cli, small_unetpp, long_volume, tmp_path):
    output = tmp_path / "out" / "labels.nrrd"
    output.parent.mkdir()
    first = EngineProcess(SegmentationOptions(batch_size=1).to_arguments(long_volume, output, small_unetpp), outputs=[output]).start()
    try:
        wait_for(first, "progress")
        assert lock_path(output).is_file()
        second = cli("predict", "--checkpoint", small_unetpp, "--progress", "none", "--overwrite", long_volume, output)
        assert second.code == EXIT_USER_ERROR, second.stderr
        assert f"is being written by another unetseg run (process {first.pid}); wait for it to finish" in second.stderr
        assert first.poll()[1] == "running", "the refused run must not disturb the first"
    finally:
        first.cancel()
    assert first.state == CANCELLED and os.listdir(output.parent) == []
    small = write(make_volume(size=(24, 20, 3)), tmp_path / "small.nrrd")
    third = cli("predict", "--checkpoint", small_unetpp, "--progress", "none", small, output)
    assert third.code == 0, third.stderr
    assert os.listdir(output.parent) == ["labels.nrrd"]


def test_a_lock_left_by_a_dead_run_is_taken_over_and_a_live_one_is_respected(predict, oblique_volume_path, tmp_path):
    host = socket.gethostname()
    output = tmp_path / "out" / "labels.nrrd"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(output).write_text(f"{live.pid} {host}\n")
        result, _ = predict(oblique_volume_path)
        assert result.code == EXIT_USER_ERROR and f"process {live.pid}" in result.stderr and str(lock_path(output)) in result.stderr
        assert lock_path(output).read_text() == f"{live.pid} {host}\n", "another run's lock is not ours to remove"
    finally:
        live.kill()
        live.wait()
    lock_path(output).write_text(f"{live.pid} {host}\n")  # its process is gone now: a stale lock
    result, _ = predict(oblique_volume_path)
    assert result.code == 0, result.stderr
    assert os.listdir(output.parent) == ["labels.nrrd"]


# --- runs: the child process -----------------------------------------------------------------------------


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
    events = []
    deadline = time.monotonic() + 60
    while run.state == "running" and time.monotonic() < deadline:
        events += run.poll()[0]
        time.sleep(0.02)
    worker = int(next(e["message"] for e in events if e["event"] == "log"))
    assert run.state == FAILED and "SIGKILL" in run.error_message
    assert not alive(worker), "the child's worker must not outlive it"


@pytest.mark.skipif(not POSIX, reason="uses scripts with a #! line as the interpreter")
@pytest.mark.parametrize("how", ["cancel", "fail"])
@pytest.mark.parametrize("state", [slicer_run.IDLE, slicer_run.INSTALLING, slicer_run.EXPORTING, slicer_run.SEGMENTING, slicer_run.IMPORTING])
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
    run = SegmentationRun(RunOptions(checkpoint=tmp_path / "c.safetensors"), python=str(hung if state == slicer_run.SEGMENTING else finished), temp_root=temp_root)

    order = [slicer_run.INSTALLING, slicer_run.EXPORTING, slicer_run.SEGMENTING, slicer_run.IMPORTING]
    for step in order[: order.index(state) + 1] if state != slicer_run.IDLE else []:
        if step == slicer_run.INSTALLING:
            run.begin_installing()
        elif step == slicer_run.EXPORTING:
            shutil.copyfile(volume, run.begin_exporting())
        elif step == slicer_run.SEGMENTING:
            run.start_segmenting()
        else:
            while run.state == slicer_run.SEGMENTING:
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
    assert (view.button_text, view.button_enabled, view.settings_enabled, view.running) == (slicer_run.APPLY_TEXT, True, True, False)
    assert view.progress_text == expected_text
    assert list(temp_root.iterdir()) == [], "the temporary folder must go in every outcome"
    if pid is not None:
        assert not process_group_alive(pid)
    final = run.state
    run.cancel()  # a second cancel (or a late poll) changes nothing
    assert run.poll() == [] and run.state == final


# --- runs: out of memory -----------------------------------------------------------------------------------


class RecordingReporter(Reporter):
    """A reporter that keeps every event it is given, as ``(kind, fields)``."""

    def __init__(self) -> None:
        super().__init__()
        self.events = []

    @property
    def warnings(self) -> list:
        return [fields["message"] for kind, fields in self.events if kind == "warning"]

    def start(self, command, total, unit="slice", **info) -> None:
        super().start(command, total, unit, **info)
        self.events.append(("start", {"command": command, "total": total, "unit": unit, **info}))

    def progress(self, done, **extra) -> dict:
        fields = super().progress(done, **extra)
        self.events.append(("progress", fields))
        return fields

    def log(self, message) -> None:
        self.events.append(("log", {"message": message}))

    def warning(self, message) -> None:
        self.events.append(("warning", {"message": message}))

    def done(self, **summary) -> None:
        self.events.append(("done", summary))

    def error(self, message) -> None:
        self.events.append(("error", {"message": message}))


class PretendGpu(SlicePredictor):
    """A real predictor (on the CPU) that claims to be on a GPU with room for ``fits`` slices per call."""

    def __init__(self, model, metadata, fits: int, depth=None) -> None:
        super().__init__(model, metadata, torch.device("cpu"), depth)
        self.device = torch.device("cuda")
        self.fits = fits
        self.calls = []

    def __call__(self, batch):
        self.calls.append(len(batch))
        if len(batch) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)")
        return super().__call__(batch)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from UNetSegmentationLib.model.checkpoint import build_model, load_checkpoint

    path = create_checkpoint(tmp_path_factory.mktemp("oom") / "m.safetensors", arch="unet", classes="a,b", features="4,8")
    checkpoint = load_checkpoint(path)
    return build_model(checkpoint), checkpoint.metadata


def test_gpu_out_of_memory_retries_with_smaller_batches(tiny_model):
    model, metadata = tiny_model
    batch = np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)
    expected = SlicePredictor(model, metadata, torch.device("cpu"), None)(batch)
    reporter = RecordingReporter()
    predictor = PretendGpu(model, metadata, fits=2)
    guard = MemoryGuard(predictor, reporter)
    torch.testing.assert_close(guard(batch), expected)
    assert predictor.calls == [8, 4, 2, 2, 2, 2]
    assert reporter.warnings == [
        "the GPU ran out of memory with a batch of 8 slices; continuing with batches of 4 (as --batch-size 4)",
        "the GPU ran out of memory with a batch of 4 slices; continuing with batches of 2 (as --batch-size 2)",
    ]
    predictor.calls.clear()
    guard(batch[:3])  # the smaller size holds for the rest of the volume
    assert predictor.calls == [2, 1]


def test_gpu_out_of_memory_with_one_slice_falls_back_to_the_cpu(tiny_model):
    model, metadata = tiny_model
    batch = np.random.default_rng(1).random((4, 3, 16, 16), dtype=np.float32)
    expected = SlicePredictor(model, metadata, torch.device("cpu"), None)(batch)
    reporter = RecordingReporter()
    guard = MemoryGuard(PretendGpu(model, metadata, fits=0), reporter)
    torch.testing.assert_close(guard(batch), expected)
    assert guard.predictor.device.type == "cpu" and guard.batch_limit is None
    assert reporter.warnings[-1] == "the GPU ran out of memory even with one slice at a time; continuing on the CPU (slower)"
    assert len(reporter.warnings) == 3  # 4 -> 2 -> 1 -> CPU


def test_cpu_out_of_memory_with_one_slice_is_a_clear_error():
    def exhausted(batch):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 8589934592 bytes.")

    guard = MemoryGuard(exhausted, RecordingReporter())  # a predictor without a device: the CPU
    with pytest.raises(UserError, match=r"out of memory on the CPU even with one slice \(16x16 pixels\)"):
        guard(np.zeros((2, 3, 16, 16), np.float32))


def test_errors_other_than_out_of_memory_are_not_swallowed():
    def broken(batch):
        raise RuntimeError("Given groups=1, weight of size [4, 3, 3, 3], expected input to have 3 channels")

    with pytest.raises(RuntimeError, match="expected input"):
        MemoryGuard(broken, RecordingReporter())(np.zeros((2, 3, 8, 8), np.float32))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory")) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(ValueError("out of memory"))


def test_predict_survives_gpu_out_of_memory_and_says_so(small_unet_one_class, oblique_volume_path, tmp_path):
    """``predict_file`` end to end with a PyTorch predictor on a pretend GPU (its predictor factory):
    first with room for every batch (the reference), then with room for none."""
    from UNetSegmentationLib.model.checkpoint import build_model

    made = []

    def on_pretend_gpu(fits):
        def factory(checkpoint, plan, depth, classification_guidance):
            made.append(PretendGpu(build_model(checkpoint), checkpoint.metadata, fits=fits, depth=depth))
            return made[-1], []

        return factory

    outputs = {}
    for fits in (64, 0):
        outputs[fits] = tmp_path / f"labels-{fits}.nrrd"
        reporter = RecordingReporter()
        predict_file(oblique_volume_path, outputs[fits], small_unet_one_class, SegmentationOptions(batch_size=4), reporter, predictor_factory=on_pretend_gpu(fits))
    assert reporter.warnings == [
        "the GPU ran out of memory with a batch of 4 slices; continuing with batches of 2 (as --batch-size 2)",
        "the GPU ran out of memory with a batch of 2 slices; continuing with batches of 1 (as --batch-size 1)",
        "the GPU ran out of memory even with one slice at a time; continuing on the CPU (slower)",
    ]
    assert made[1].calls[:3] == [4, 2, 1], "4, 2 and 1 slices tried on the GPU before the CPU"
    assert reporter.events[-1][0] == "done"
    reference, survived = (sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[fits]))) for fits in (64, 0))
    np.testing.assert_array_equal(survived, reference)


def test_out_of_memory_outside_the_batches_is_a_message_not_a_traceback(predict, oblique_volume_path, monkeypatch):
    """E.g. moving the model to a full GPU, or any allocation outside the guarded network call: PyTorch
    raises it as it would on a full GPU."""

    def full_gpu(module, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(torch.nn.Module, "to", full_gpu)
    assert_refused(*predict(oblique_volume_path, "--backend", "torch"), "out of memory (CUDA out of memory. Tried to allocate 20.00 MiB)", "--batch-size", "--device cpu")


# --- training --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not POSIX, reason="signals and process groups are POSIX")
def test_a_training_run_killed_mid_run_resumes_to_the_same_weights(cli, tmp_path):
    from support import write_tiny_case
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    data = write_tiny_case(tmp_path)
    common = ["--datalist", str(data / "datalist.json"), "--classes", "body,bone", "--val-slices", "0.25", "--val-blocks", "1",
              "--features", "4,8", "--crop", "32", "--batch-size", "2", "--steps-per-epoch", "3", "--seed", "7",
              "--threads", "1", "--device", "cpu", "--epochs", "4"]
    killed = tmp_path / "killed"
    killed.mkdir()
    run = EngineProcess(["train", *common, str(killed / "m.safetensors")]).start()
    wait_for(run, "log", timeout_s=180, starting="epoch")  # the first epoch is over: its checkpoint can be resumed
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait(timeout=60) == FAILED and "SIGKILL" in run.error_message
    assert [p.name for p in killed.iterdir() if ".partial" in p.name] == []
    resumed = cli("train", *common, "--progress", "none", "--resume", killed / "m.safetensors")
    assert resumed.code == 0, resumed.stderr
    straight = cli("train", *common, "--progress", "none", tmp_path / "straight.safetensors")
    assert straight.code == 0, straight.stderr
    a, b = load_checkpoint(killed / "m.safetensors").state_dict, load_checkpoint(tmp_path / "straight.safetensors").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(killed / "m.csv") as log:
        assert [int(row["step"]) for row in csv.DictReader(log)] == [3, 6, 9, 12]

"""Outputs: checked before any work, written under a temporary name and renamed only when complete,
never replacing the input or an existing file without --overwrite, one run per output at a time, and
nothing left behind when the disk fills or a folder becomes unwritable (docs/hardening.md)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import SimpleITK as sitk

from support import assert_refused, leftovers, make_volume, POSIX, wait_for, write

from UNetSegmentationLib.errors import EXIT_USER_ERROR
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.io import outputs
from UNetSegmentationLib.io.outputs import lock_path
from UNetSegmentationLib.protocol.runner import CANCELLED, EngineProcess


def test_an_existing_output_is_not_overwritten_without_overwrite(predict, oblique_volume_path):
    result, output = predict(oblique_volume_path)
    assert result.code == 0
    output.write_bytes(b"the user's file")
    again, _ = predict(oblique_volume_path)
    assert again.code == EXIT_USER_ERROR and "already exists" in again.stderr and "--overwrite" in again.stderr
    assert output.read_bytes() == b"the user's file"
    replaced, _ = predict(oblique_volume_path, "--overwrite")
    assert replaced.code == 0 and output.read_bytes() != b"the user's file"

def test_an_output_in_a_missing_folder_is_refused_before_any_work(cli, small_unetpp, oblique_volume_path, tmp_path):
    result = cli("predict", "--checkpoint", small_unetpp, "--progress", "json", oblique_volume_path, tmp_path / "no" / "such" / "dir.nrrd")
    assert result.code == EXIT_USER_ERROR
    assert [e["event"] for e in result.events] == ["error"] and "does not exist" in result.events[0]["message"]

def test_an_unsupported_output_type_is_refused(predict, oblique_volume_path, tmp_path, cli, small_unetpp):
    result = cli("predict", "--checkpoint", small_unetpp, "--progress", "none", oblique_volume_path, tmp_path / "labels.png")
    assert result.code == EXIT_USER_ERROR and "unsupported file type" in result.stderr

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
    output = tmp_path / f"labels{extension}"
    output.write_bytes(b"the user's earlier result")

    def itk_writer(image, path, *args, **kwargs):  # ITK (label maps and .seg.nrrd alike) reports a full disk as a RuntimeError
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

@pytest.mark.child_process
@pytest.mark.slow
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


# --- issue 23: every output of predict passes the one output gate ------------------------------------------


@pytest.mark.skipif(not POSIX, reason="FIFOs")
@pytest.mark.parametrize("option, name", [(None, "labels.nrrd"), ("--probabilities", "confidence.nrrd"), ("--review-list", "review.json")])
def test_no_output_of_predict_may_be_a_fifo_even_with_overwrite(cli, small_unet_one_class, oblique_volume_path, tmp_path, option, name):
    """A FIFO named as an output was replaced by a file (--overwrite) instead of being refused; it is never opened."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    output = tmp_path / "labels.nrrd" if option else fifo
    extra = [option, fifo] if option else []
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--overwrite", *extra, oblique_volume_path, output)
    assert result.code == EXIT_USER_ERROR and "FIFO" in result.stderr, result.stderr
    assert fifo.is_fifo() and leftovers(tmp_path) == []


def test_no_output_of_predict_may_be_the_checkpoint_in_use(cli, tmp_path, oblique_volume_path):
    """A checkpoint given a volume's name (any name is allowed) is protected as the input is."""
    from support import create_checkpoint

    checkpoint = create_checkpoint(tmp_path / "model.safetensors", arch="unet", classes="liver", features="4,8")
    disguised = tmp_path / "model.nrrd"
    os.link(checkpoint, disguised)
    before = disguised.read_bytes()
    for extra, output in (([], disguised), (["--probabilities", disguised], tmp_path / "labels.nrrd")):
        result = cli("predict", "--checkpoint", checkpoint, "--progress", "none", "--overwrite", *extra, oblique_volume_path, output)
        assert result.code == EXIT_USER_ERROR and "would overwrite the input or checkpoint" in result.stderr, result.stderr
    assert disguised.read_bytes() == before


def test_demo_output_dir_naming_a_file_is_one_message(cli, tmp_path):
    """``demo --output-dir`` naming a file was an internal error (``FileExistsError``); the folder passes the gate."""
    (tmp_path / "afile").write_text("mine")
    for folder, phrase in ((tmp_path / "afile", "is a file, not a folder"), (tmp_path / "afile" / "sub", "Not a directory")):
        result = cli("demo", "--output-dir", folder, "--progress", "none")
        assert result.code == EXIT_USER_ERROR and phrase in result.stderr and "internal error" not in result.stderr, result.stderr
    assert (tmp_path / "afile").read_text() == "mine"


def test_claims_belong_to_the_thread_that_opened_the_block(tmp_path):
    """A warm engine runs requests on a worker thread while its main thread reads the next lines: a claiming
    block is the thread's own, so an output checked on another thread is not claimed into it, and the block
    releases only what its thread claimed."""
    import threading

    from UNetSegmentationLib.io.locks import lock_path
    from UNetSegmentationLib.io.outputs import check_output_path, claiming_outputs

    inside, elsewhere = tmp_path / "inside.nrrd", tmp_path / "elsewhere.nrrd"
    seen = {}
    with claiming_outputs():
        check_output_path(inside, overwrite=False)
        worker = threading.Thread(target=lambda: seen.setdefault("path", check_output_path(elsewhere, overwrite=False)))
        worker.start()
        worker.join()
        assert lock_path(inside).exists() and not lock_path(elsewhere).exists()
    assert seen["path"] == elsewhere and not lock_path(inside).exists()

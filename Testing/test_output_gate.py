"""The one output gate (io/output_gate.py): what any file or folder the engine writes must be, checked
from the file system alone, before any work, without opening anything."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.bundled_files import bundled_files
from UNetSegmentationLib.io.output_gate import check_output
from UNetSegmentationLib.io.outputs import atomic_output, check_output_path
from UNetSegmentationLib.model.bundled import bundled_model_path, models_folder

POSIX = os.name != "nt"


def refused(*phrases: str, **call) -> str:
    with pytest.raises(UserError) as caught:
        check_output(**call)
    message = str(caught.value)
    for phrase in phrases:
        assert phrase in message, message
    assert "\n" not in message
    return message


def test_a_new_file_in_a_folder_passes_and_comes_back_resolved(tmp_path):
    assert check_output(tmp_path / "labels.nrrd", what="output", overwrite=False) == (tmp_path / "labels.nrrd").resolve()


def test_a_name_with_dot_dot_or_an_absolute_name_cannot_leave_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    refused("outside the folder", path=out / ".." / "x.nrrd", what="label map", overwrite=True, inside=out)
    refused("outside the folder", path=out / "/etc/x.nrrd", what="label map", overwrite=True, inside=out)  # an absolute case name
    refused("outside the folder", path=out / "a" / ".." / ".." / "x.nrrd", what="label map", overwrite=True, inside=out)
    assert check_output(out / "a" / ".." / "x.nrrd", what="label map", overwrite=False, inside=out) == (out / "x.nrrd").resolve()


@pytest.mark.skipif(not POSIX, reason="symbolic links")
def test_a_symbolic_link_cannot_lead_out_of_the_folder(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere)
    (out / "file.nrrd").symlink_to(elsewhere / "victim.nrrd")
    (elsewhere / "victim.nrrd").write_bytes(b"keep")
    refused("symbolic link", path=out / "sub" / "x.nrrd", what="label map", overwrite=True, inside=out)
    refused("symbolic link", path=out / "file.nrrd", what="label map", overwrite=True, inside=out)
    assert (elsewhere / "victim.nrrd").read_bytes() == b"keep"


@pytest.mark.skipif(not POSIX, reason="FIFOs")
def test_a_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "manifest.jsonl"
    os.mkfifo(fifo)
    result = {}
    thread = threading.Thread(target=lambda: result.update(message=refused("FIFO", path=fifo, what="manifest", overwrite=True)), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the gate opened the FIFO and hung"
    assert "manifest" in result["message"]


@pytest.mark.skipif(not POSIX, reason="devices and sockets")
def test_devices_sockets_and_links_to_them_are_refused(tmp_path):
    refused("character device", path="/dev/null", what="output", overwrite=True)
    (tmp_path / "null.nrrd").symlink_to("/dev/null")
    refused("character device", path=tmp_path / "null.nrrd", what="output", overwrite=True)
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(tmp_path / "s.nrrd"))
        refused("socket", path=tmp_path / "s.nrrd", what="output", overwrite=True)
    finally:
        listener.close()


@pytest.mark.skipif(not POSIX, reason="symbolic links")
def test_a_broken_link_is_refused_a_write_through_it_would_land_anywhere(tmp_path):
    (tmp_path / "m.jsonl").symlink_to(tmp_path / "nowhere" / "m.jsonl")
    refused("broken symbolic link", path=tmp_path / "m.jsonl", what="manifest", overwrite=True)


def test_a_folder_is_no_file_and_a_file_no_folder(tmp_path):
    refused("is a folder", path=tmp_path, what="output", overwrite=True)
    (tmp_path / "qc").write_text("x")
    refused("is a file, not a folder", path=tmp_path / "qc", what="QC folder", overwrite=True, kind="folder")
    assert check_output(tmp_path, what="QC folder", overwrite=False, kind="folder") == tmp_path.resolve()  # an existing folder is written into
    (tmp_path / "parent-file").write_text("x")
    refused("Not a directory", path=tmp_path / "parent-file" / "x.nrrd", what="output", overwrite=True)


def test_the_bundled_model_and_its_shipped_files_are_refused_even_with_overwrite():
    files = bundled_files()
    assert bundled_model_path() in files
    if not bundled_model_path().exists():
        pytest.skip("no bundled model in this checkout")
    assert any(f.name.endswith(".shipped.onnx") for f in files)
    for path in files:
        refused("bundled model", path=path, what="checkpoint", overwrite=True)
    refused("bundled models' folder", path=models_folder(), what="QC folder", overwrite=True, kind="folder")


@pytest.mark.skipif(not POSIX, reason="symbolic and hard links")
def test_the_bundled_model_is_refused_through_a_link(tmp_path):
    if not bundled_model_path().exists():
        pytest.skip("no bundled model in this checkout")
    (tmp_path / "link.safetensors").symlink_to(bundled_model_path())
    refused("bundled model", path=tmp_path / "link.safetensors", what="checkpoint", overwrite=True)


def test_inputs_and_the_checkpoint_in_use_are_refused(tmp_path):
    scan, checkpoint, series = tmp_path / "scan.nrrd", tmp_path / "model.safetensors", tmp_path / "series"
    scan.write_bytes(b"scan")
    checkpoint.write_bytes(b"model")
    series.mkdir()
    (series / "1.dcm").write_bytes(b"dicom")
    protected = [scan, checkpoint, series]
    refused("would overwrite the input or checkpoint", path=scan, what="manifest", overwrite=True, protected=protected)
    refused("would overwrite the input or checkpoint", path=checkpoint, what="manifest", overwrite=True, protected=protected)
    refused("of the input folder", path=series / "1.dcm", what="label map", overwrite=True, protected=protected)
    if POSIX:
        os.link(scan, tmp_path / "hard.nrrd")
        refused("would overwrite the input or checkpoint", path=tmp_path / "hard.nrrd", what="label map", overwrite=True, protected=protected)
    assert check_output(series / "new.nrrd", what="label map", overwrite=False, protected=protected)  # a new file beside the slices


def test_an_existing_file_is_replaced_only_with_overwrite(tmp_path):
    (tmp_path / "labels.nrrd").write_bytes(b"old")
    refused("already exists; pass --overwrite", path=tmp_path / "labels.nrrd", what="output", overwrite=False)
    assert check_output(tmp_path / "labels.nrrd", what="output", overwrite=True)


def test_predicts_output_check_and_the_atomic_writer_both_ask_the_gate(tmp_path):
    """Every writer goes through check_output_path or atomic_output: both refuse what the gate refuses."""
    if POSIX:
        os.mkfifo(tmp_path / "f.nrrd")
        with pytest.raises(UserError, match="FIFO"):
            check_output_path(tmp_path / "f.nrrd", overwrite=True)
        with pytest.raises(UserError, match="FIFO"):
            with atomic_output([tmp_path / "f.nrrd"], overwrite=True):
                pass
    if bundled_model_path().exists():
        with pytest.raises(UserError, match="bundled model"):
            with atomic_output([bundled_model_path()], overwrite=True):
                pass
    with pytest.raises(UserError, match="outside the folder"):
        check_output_path(tmp_path / ".." / "x.nrrd", overwrite=True, inside=tmp_path)

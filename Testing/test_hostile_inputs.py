"""Hostile and unlucky inputs (issue 13): memory bombs, files cut short, inputs that would block, symbolic
link loops, geometry the reader would change without a word, and what the messages then say.

Each refusal happens from the file system and the input's header, before a voxel is allocated and
before any output lock is taken; each ends in one ``unetseg: error:`` line, exit 2, no output and no
leftovers (``support.assert_refused``). The cases that could exhaust the machine or hang run in a
child process (``engine_child.run_unetseg``) under an address-space limit and a time limit.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from engine_child import run_unetseg
from support import assert_refused, leftovers, make_volume, rotation_matrix, write_dicom_series

POSIX = os.name == "posix"
MB = 1_000_000
#: the issue's limit for the peak memory of a refused memory bomb
BOMB_PEAK_LIMIT = 200 * MB


def nrrd_header(sizes, type_="short", encoding="raw", extra="") -> bytes:
    return (
        f"NRRD0004\ntype: {type_}\ndimension: {len(sizes)}\nspace: left-posterior-superior\nsizes: {' '.join(map(str, sizes))}\n"
        f"space directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nendian: little\nencoding: {encoding}\n"
        f"space origin: (0,0,0)\n{extra}\n"
    ).encode()


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- 1. memory bombs: refused from the header, in a small process ------------------------------------------------


def raw_bomb(folder: Path) -> Path:
    """The issue's 309-byte raw NRRD whose header claims 2048×2048×2000 int16 voxels (16.8 GB)."""
    header = nrrd_header((2048, 2048, 2000))
    return write_bytes(folder / "bomb.nrrd", header + bytes(309 - len(header)))


def claiming_gzip_bomb(folder: Path) -> Path:
    """A gzip NRRD whose header claims 2048×2048×500 int16 (4.2 GB) over a few kB of compressed zeros."""
    return write_bytes(folder / "claims.nrrd", nrrd_header((2048, 2048, 500), encoding="gzip") + gzip.compress(bytes(1 << 22)))


def real_gzip_bomb(folder: Path) -> Path:
    """A real gzip bomb: 2 MB of concatenated gzip members that truly decode to the 2.1 GB of uint8 its header claims."""
    member = gzip.compress(bytes(1 << 24), compresslevel=9)  # 16 MiB of zeros in ~16 kB
    with open(folder / "real-bomb.nrrd", "wb") as file:
        file.write(nrrd_header((1024, 1024, 2048), type_="uchar", encoding="gzip"))
        for _ in range(128):
            file.write(member)
    return folder / "real-bomb.nrrd"


@pytest.mark.skipif(not POSIX, reason="address-space limits and getrusage are POSIX")
@pytest.mark.parametrize(
    "bomb, phrases",
    [
        (raw_bomb, ("truncated or corrupt", "16.8 GB of voxel data", "the file holds")),
        (claiming_gzip_bomb, ("truncated or corrupt", "4.2 GB of voxel data", "can hold at most")),
        (real_gzip_bomb, ("of memory (at its peak", "input 2.1 GB", "to segment, but only", "is available")),
    ],
    ids=["raw-309-bytes-claiming-16.8GB", "gzip-claiming-4.2GB", "real-gzip-bomb-2.1GB"],
)
def test_a_memory_bomb_is_refused_from_its_header_in_under_200_mb(small_unet_one_class, tmp_path, bomb, phrases):
    """On a machine (here: an address-space limit) of 3 GB; peak resident memory of the refusing process < 200 MB."""
    path = bomb(tmp_path)
    output = tmp_path / "out" / "labels.nrrd"
    output.parent.mkdir()
    run = run_unetseg("predict", "--checkpoint", small_unet_one_class, "--progress", "none", path, output, address_space=3 << 30, timeout=120)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.code == 2 and len(lines) == 1 and lines[0].startswith("unetseg: error: "), (run.code, run.stderr[-2000:])
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert run.peak_bytes < BOMB_PEAK_LIMIT, f"peak resident memory {run.peak_mb:.0f} MB"
    assert not output.exists() and leftovers(output.parent) == []
    print(f"{bomb.__name__}: peak {run.peak_mb:.0f} MB; {lines[0]}")


def test_the_memory_refusal_states_what_the_run_needs_and_what_the_machine_has(small_unet_one_class, tmp_path):
    from UNetSegmentationLib.errors import UserError
    from UNetSegmentationLib.inference.options import SegmentationOptions
    from UNetSegmentationLib.inference.predict_file import predict_file

    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(make_volume(size=(64, 64, 50)), str(path))  # 410 kB of int16 voxels
    output = tmp_path / "labels.nrrd"
    with pytest.raises(UserError) as refused:
        predict_file(path, output, small_unet_one_class, SegmentationOptions(), memory_available=lambda: 300 * MB)
    message = str(refused.value)
    assert "needs about" in message and "to segment, but" in message and "only 300.0 MB is available" in message, message
    assert "input 409.6 kB" in message and "crop or resample" in message, message
    assert not output.exists() and leftovers(tmp_path) == []


# --- 2. truncated and corrupt inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, compressed", [("cut.nii", False), ("cut.nii.gz", True), ("cut.nrrd", False), ("cut-gz.nrrd", True), ("cut.mha", False), ("cut-z.mha", True)])
def test_an_input_cut_to_60_percent_is_refused_as_truncated(predict, tmp_path, name, compressed):
    path = tmp_path / name
    sitk.WriteImage(make_volume(), str(path), useCompression=compressed)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    assert_refused(*predict(path), "truncated or corrupt", "voxel data", name)


@pytest.mark.parametrize("name, phrase", [("bad.nrrd", "compressed voxel data is corrupt"), ("bad.mha", "compressed voxel data is corrupt"), ("bad.nii.gz", "cannot read")])
def test_compressed_voxel_data_that_is_corrupt_is_refused(predict, tmp_path, name, phrase):
    """ITK reads such NRRD and MetaImage files without a word (a late part of the voxels is garbage); its NIfTI reader refuses them itself."""
    path = tmp_path / name
    sitk.WriteImage(make_volume(), str(path), useCompression=True)
    data = bytearray(path.read_bytes())
    late = len(data) * 9 // 10  # the header and most voxels decode; a late part does not
    data[late:late + 64] = bytes((b * 7 + 13) % 256 for b in data[late:late + 64])
    path.write_bytes(bytes(data))
    assert_refused(*predict(path), phrase)


# --- 7. inputs that are no regular file ------------------------------------------------------------------------


@pytest.mark.skipif(not POSIX, reason="FIFOs and /dev/zero are POSIX")
def test_a_fifo_as_input_is_refused_at_once_without_taking_a_lock(small_unet_one_class, tmp_path):
    fifo = tmp_path / "volume.nrrd"
    os.mkfifo(fifo)
    output = tmp_path / "labels.nrrd"
    run = run_unetseg("predict", "--checkpoint", small_unet_one_class, "--progress", "none", fifo, output, timeout=60)
    assert run.code == 2 and "is a FIFO (named pipe), not a volume file" in run.stderr, run.stderr
    assert not output.exists() and leftovers(tmp_path) == []


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_device_as_input_is_refused(predict):
    assert_refused(*predict(Path("/dev/zero")), "/dev/zero is a character device", "regular file")


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_a_socket_as_input_is_refused(predict, tmp_path):
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(tmp_path / "s.nrrd"))
        assert_refused(*predict(tmp_path / "s.nrrd"), "is a socket")
    finally:
        server.close()


@pytest.mark.skipif(not POSIX, reason="FIFOs are POSIX")
def test_a_dicom_folder_holding_a_fifo_is_refused_before_the_scan(small_unet_one_class, tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    write_dicom_series(make_volume(size=(16, 16, 3)), folder, "1.2.826.0.1.3680043.2.1125.1")
    os.mkfifo(folder / "stuck.dcm")
    output = tmp_path / "labels.nrrd"
    run = run_unetseg("predict", "--checkpoint", small_unet_one_class, "--progress", "none", folder, output, timeout=60)
    assert run.code == 2 and "holds stuck.dcm, which is a FIFO (named pipe)" in run.stderr, run.stderr
    assert not output.exists() and leftovers(tmp_path) == []


# --- 11. what the messages name -------------------------------------------------------------------------------


@pytest.mark.skipif(not POSIX, reason="symbolic links")
def test_a_symbolic_link_loop_is_named_as_such_not_as_missing(predict, tmp_path):
    os.symlink(tmp_path / "b.nrrd", tmp_path / "a.nrrd")
    os.symlink(tmp_path / "a.nrrd", tmp_path / "b.nrrd")
    assert_refused(*predict(tmp_path / "a.nrrd"), "symbolic link loop")
    os.symlink(tmp_path / "gone.nrrd", tmp_path / "dangling.nrrd")
    assert_refused(*predict(tmp_path / "dangling.nrrd"), "symbolic link to", "which does not exist")


def test_a_truncated_mha_is_not_called_a_missing_file(predict, tmp_path):
    path = tmp_path / "cut.mha"
    sitk.WriteImage(make_volume(), str(path))
    path.write_bytes(path.read_bytes()[:-1000])
    message = assert_refused(*predict(path), "truncated")
    assert "No such file or directory" not in message


def test_running_out_of_memory_while_reading_says_so_and_not_batch_size(predict, oblique_volume_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError()

    from UNetSegmentationLib.io import mapped_voxels

    monkeypatch.setattr(mapped_voxels, "MAPS_RAW_FILES", False)  # read into a buffer (mapped, a raw NRRD allocates none)
    monkeypatch.setattr(sitk, "ReadImage", no_memory)  # as the allocation of the voxel buffer fails
    message = assert_refused(*predict(oblique_volume_path), "out of memory while reading", "oblique.nrrd", "40x36x12")
    assert "batch" not in message


def test_running_out_of_memory_outside_reading_and_the_batches_does_not_blame_the_batch_size(predict, oblique_volume_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(sitk, "WriteImage", no_memory)
    message = assert_refused(*predict(oblique_volume_path), "out of memory")
    assert "batch" not in message and "available" in message


@pytest.mark.parametrize("value", ["abc", "1e6", "4.2 million", "-5", "0", "٤٠٠"])
def test_a_slice_limit_that_is_no_positive_whole_number_is_refused(predict, oblique_volume_path, monkeypatch, value):
    monkeypatch.setenv("UNETSEG_MAX_SLICE_PIXELS", value)
    assert_refused(*predict(oblique_volume_path), "UNETSEG_MAX_SLICE_PIXELS must be a positive whole number", repr(value))


# --- 8. geometry the reader would change without a word ----------------------------------------------------------


def sheared_nifti(path: Path) -> Path:
    """A NIfTI file whose qform is the rigid grid and whose sform is sheared (x grows with j)."""
    image = make_volume(size=(24, 20, 6), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0))
    sitk.WriteImage(image, str(path))
    data = bytearray(path.read_bytes())
    srow = list(struct.unpack("<12f", data[280:328]))
    srow[1] = 0.5  # srow_x[1]: half a millimetre of x per row
    data[280:328] = struct.pack("<12f", *srow)
    path.write_bytes(bytes(data))
    return path


def test_a_nifti_with_a_sheared_sform_is_segmented_with_a_warning_naming_the_transforms(predict, tmp_path):
    result, output = predict(sheared_nifti(tmp_path / "sheared.nii"), progress="json")
    assert result.code == 0, result.stderr
    warnings = [e["message"] for e in result.events if e["event"] == "warning"]
    assert any("NIfTI transforms disagree" in w and "sform" in w and "sheared by 26.6 degrees" in w and "read with its qform" in w and "mm" in w for w in warnings), warnings
    assert output.exists()


def test_a_nifti_with_only_a_sheared_sform_is_refused_naming_the_shear(predict, tmp_path):
    path = sheared_nifti(tmp_path / "sform-only.nii")
    data = bytearray(path.read_bytes())
    data[252:254] = struct.pack("<h", 0)  # qform_code 0: no rigid alternative
    path.write_bytes(bytes(data))
    assert_refused(*predict(path), "sform is sheared by 26.6 degrees", "no qform")


def test_a_dicom_series_with_a_30_mm_gap_is_refused_naming_the_gap(predict, tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    image = make_volume(size=(16, 16, 8), spacing=(1.0, 1.0, 5.0), direction=rotation_matrix(0.2, 0.0, 0.3))
    write_dicom_series(image, folder, "1.2.826.0.1.3680043.2.1125.7")
    for k in range(5, 8):  # slices 5..7 move 30 mm further along the normal: a gap after slice 4
        name = folder / f"{k:03d}.dcm"
        moved = sitk.ReadImage(str(name))
        shifted = np.array(image.TransformIndexToPhysicalPoint((0, 0, k))) + 30.0 * np.array(image.GetDirection()).reshape(3, 3)[:, 2]
        moved.SetOrigin(tuple(shifted))
        moved.SetMetaData("0020|0032", "\\".join(map(str, shifted)))
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(name))
        writer.Execute(moved)
    assert_refused(*predict(folder), "uneven slice spacing", "slices 4 and 5", "35.00 mm apart where the others are 5.00 mm")


def test_the_slice_stack_check_finds_duplicates_and_a_tilted_gantry():
    from UNetSegmentationLib.io.geometry_checks import dicom_stack_problem

    axial = (1, 0, 0, 0, 1, 0)
    names = [f"{k}.dcm" for k in range(4)]
    even = [(0, 0, 2.5 * k) for k in range(4)]
    assert dicom_stack_problem("s", names, even, [axial] * 4) is None
    assert "at the same position" in dicom_stack_problem("s", names, [(0, 0, 0), (0, 0, 2.5), (0, 0, 2.5), (0, 0, 5)], [axial] * 4)
    tilted = [(0, 0.8 * k, 2.5 * k) for k in range(4)]
    assert "shifted sideways by up to 0.80 mm" in dicom_stack_problem("s", names, tilted, [axial] * 4)
    assert "do not share one orientation" in dicom_stack_problem("s", names, even, [axial] * 3 + [(0, 1, 0, 1, 0, 0)])

"""A compressed input is decoded once (issue 25): the reader decodes it, and the stream's own checksum
(gzip's CRC-32 and length, zlib's Adler-32) says whether what it decoded is all of it, unchanged.

Before, :mod:`UNetSegmentationLib.io.payload` decoded every compressed input a first time only to count
it (1 s of a 512 × 512 × 300 CT's 7 s, BENCHMARKS.md *Clinical CT speed*). A stream cut short or
corrupt is still refused with the same words (``test_hostile_inputs`` cuts and spoils each format);
these tests say that a sound file is not decoded a second time, and that where the checksum cannot
tell (several gzip members) the old count decides.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import make_volume
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io import payload as payload_module
from UNetSegmentationLib.io.payload import checksum_matches, describe_payload
from UNetSegmentationLib.io.volumes import inspect_input, read_volume, verify_data


@pytest.fixture
def decodes(monkeypatch):
    """How many times payload.py decoded a stream to count it."""
    calls = []
    original = payload_module.decoded_length

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(payload_module, "decoded_length", counted)
    return calls


@pytest.mark.parametrize("name", ["ct.nrrd", "ct.nii.gz", "ct.mha"])
@pytest.mark.parametrize("dtype", ["int16", "float32", "uint8"])
def test_a_sound_compressed_file_is_read_as_itk_reads_it_and_decoded_once(tmp_path, decodes, name, dtype):
    path = tmp_path / name
    sitk.WriteImage(make_volume(dtype=dtype), str(path), useCompression=True)
    header = verify_data(inspect_input(path))
    assert not header.data_verified  # only the bound its length allows: the rest as it is read
    image = read_volume(path, header)
    assert decodes == []  # counted by its checksum, not decoded a second time
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(sitk.ReadImage(str(path))))


def test_the_checksum_covers_a_nifti_header_before_the_voxels(tmp_path):
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(make_volume(), str(path), useCompression=True)
    voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    payload = describe_payload(path)
    assert payload.expected_bytes > voxels.nbytes  # the header's 352 decoded bytes come first
    assert checksum_matches(payload, voxels)
    voxels.reshape(-1)[7] += 1
    assert not checksum_matches(payload, voxels)


def test_several_gzip_members_are_counted_as_before_and_read(tmp_path, decodes):
    """A NRRD whose voxels are two concatenated gzip members (as some tools write): the last member's checksum
    cannot vouch for the whole, so the stream is decoded and counted, and the file is read."""
    volume = sitk.GetArrayFromImage(make_volume())
    raw = volume.astype("<i2").tobytes()
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 40 36 12\n"
        "space directions: (0.8,0,0) (0,1.1,0) (0,0,3.5)\nkinds: domain domain domain\nendian: little\nencoding: gzip\n"
        "space origin: (0,0,0)\n\n"
    ).encode()
    path = tmp_path / "members.nrrd"
    path.write_bytes(header + gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    image = read_volume(path, verify_data(inspect_input(path)))
    assert len(decodes) == 1
    assert np.array_equal(sitk.GetArrayViewFromImage(image), volume)


def _spoilt_gzip_nrrd(tmp_path: Path) -> Path:
    """A gzip NRRD whose deflate data decodes cleanly to other voxels than its CRC-32 was made of (a bit flipped
    in a stored block): ITK reads it without a word."""
    volume = sitk.GetArrayFromImage(make_volume()).astype("<i2")
    spoilt = volume.copy()
    spoilt.reshape(-1)[100] += 1
    member = bytearray(gzip.compress(volume.tobytes(), compresslevel=0))  # stored blocks: the voxels as they are
    stored = gzip.compress(spoilt.tobytes(), compresslevel=0)
    member[:-8] = stored[:-8]  # the spoilt voxels under the sound voxels' CRC-32 and length
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 40 36 12\n"
        "space directions: (0.8,0,0) (0,1.1,0) (0,0,3.5)\nkinds: domain domain domain\nendian: little\nencoding: gzip\n"
        "space origin: (0,0,0)\n\n"
    ).encode()
    path = tmp_path / "spoilt.nrrd"
    path.write_bytes(header + bytes(member))
    assert zlib.crc32(spoilt.tobytes()) != int.from_bytes(member[-8:-4], "little")
    return path


def test_a_stream_whose_checksum_does_not_match_its_voxels_is_refused(tmp_path):
    """The checksum refuses what ITK read without a word."""
    path = _spoilt_gzip_nrrd(tmp_path)
    with pytest.raises(UserError) as refused:
        read_volume(path, verify_data(inspect_input(path)))
    assert "truncated or corrupt" in str(refused.value) and "incorrect data check" in str(refused.value)


def test_the_check_run_beside_the_caller_refuses_as_the_read_does_and_passes_a_sound_file(tmp_path, monkeypatch):
    """predict computes the checksum on a thread while it finds the body: for a sound gzip NRRD waiting for the
    check returns and the voxels are read_volume's; for one whose checksum does not match what ITK decoded (ITK's
    gzip reader checks the CRC itself where it reads to the stream's end, so the mismatch is simulated here) the
    image comes back and waiting raises what read_volume raises."""
    from UNetSegmentationLib.io import volumes
    from UNetSegmentationLib.io.volumes import read_voxels

    sound = tmp_path / "sound.nrrd"
    sitk.WriteImage(make_volume(), str(sound), useCompression=True)
    voxels = read_voxels(sound)
    voxels.wait()
    np.testing.assert_array_equal(voxels.volume, sitk.GetArrayFromImage(read_volume(sound)))

    monkeypatch.setattr(volumes, "checksum_matches", lambda payload, decoded: False)
    monkeypatch.setattr(volumes, "missing_data", lambda payload, decode=False: "its compressed voxel data is corrupt (simulated)" if decode else None)
    with pytest.raises(UserError) as read:
        read_volume(sound)
    voxels = read_voxels(sound)
    assert voxels.volume.shape == (12, 36, 40)
    with pytest.raises(UserError) as checked:
        voxels.wait()
    assert str(checked.value) == str(read.value) and "truncated or corrupt" in str(checked.value)


def test_a_file_cut_short_is_refused_before_it_is_read_when_its_length_cannot_hold_it(tmp_path):
    path = tmp_path / "cut.nrrd"
    sitk.WriteImage(make_volume(size=(200, 200, 40)), str(path), useCompression=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2000 + 400])
    with pytest.raises(UserError) as refused:
        verify_data(inspect_input(path))
    assert "can hold at most" in str(refused.value)


@pytest.mark.parametrize("name", ["labels.nrrd", "labels.nii.gz"])
def test_a_written_gzip_output_is_known_whole_by_its_trailer_and_a_cut_one_is_decoded_and_refused(tmp_path, decodes, name):
    """An output's check (io/verified_write) reads the gzip trailer's length instead of decoding the file; a file
    cut short does not end with it, and is then decoded and refused as before."""
    from UNetSegmentationLib.io.payload import ends_as_announced
    from UNetSegmentationLib.io.verified_write import verify_written

    path = tmp_path / name
    sitk.WriteImage(make_volume(size=(64, 64, 20), dtype="uint8"), str(path), useCompression=True)
    assert ends_as_announced(describe_payload(path))
    verify_written(path, path, volume=True)
    assert decodes == []
    path.write_bytes(path.read_bytes()[:-100])
    assert not ends_as_announced(describe_payload(path))
    with pytest.raises(UserError) as refused:
        verify_written(path, path, volume=True)
    assert "came out incomplete" in str(refused.value) and len(decodes) == 1

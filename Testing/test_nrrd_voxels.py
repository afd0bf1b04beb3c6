"""A NRRD's voxels are read without ITK's reader, exactly as it reads them (issue 25): raw voxels mapped from
the file, gzip voxels decoded by zlib-ng into the array the run keeps.

What ITK gives is the specification: the same voxels, type and grid for every voxel type, both encodings,
an oblique grid, a right-anterior-superior header, a header of odd length. What is not read exactly as
ITK reads it here (voxels in the other byte order, a detached data file, a byte skip, a gzip stream that
does not decode cleanly) goes to ITK's reader, and the refusals of a cut or corrupt file keep their words
(``test_decoded_once``, ``test_hostile_inputs``).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from support import make_volume
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io import nrrd_voxels as nrrd_voxels_module
from UNetSegmentationLib.io.nrrd_voxels import nrrd_voxels
from UNetSegmentationLib.io.payload import describe_payload
from UNetSegmentationLib.io.volumes import inspect_input, read_volume, read_voxels, verify_data

OBLIQUE = tuple(sitk.VersorTransform((0.3, -0.2, 0.9), 0.5).GetMatrix())


def _header(path: Path):
    return verify_data(inspect_input(path))


def _as_itk_reads(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def _assert_read_as_itk(voxels, path: Path) -> None:
    itk = _as_itk_reads(path)
    expected = sitk.GetArrayViewFromImage(itk)
    assert voxels.volume.dtype == expected.dtype and voxels.volume.shape == expected.shape
    np.testing.assert_array_equal(voxels.volume, expected)
    assert voxels.spacing == itk.GetSpacing() and voxels.direction == itk.GetDirection()
    assert voxels.reference.GetOrigin() == itk.GetOrigin() and voxels.reference.GetSpacing() == itk.GetSpacing()
    assert voxels.reference.GetDirection() == itk.GetDirection()


def _volume_of(dtype: str) -> sitk.Image:
    """The test CT in tenths of HU, shifted to be positive for unsigned types: within every type's range."""
    image = make_volume(dtype="float64")
    values = sitk.GetArrayFromImage(image) / 10 + (128 if dtype.startswith("u") else 0)
    typed = sitk.GetImageFromArray(values.astype(dtype))
    typed.CopyInformation(image)
    return typed


def _nrrd(path: Path, fields: str, body: bytes) -> Path:
    path.write_bytes(f"NRRD0004\n{fields}\n".encode() + body)
    return path


GRID_FIELDS = "dimension: 3\nspace: {space}\nsizes: 40 36 12\nspace directions: (0.8,0,0) (0,1.1,0) (0,0,3.5)\nkinds: domain domain domain\nspace origin: (1,2,3)\n"


class TestDecodedAsItkReadsIt:
    @pytest.mark.parametrize("compressed", [True, False], ids=["gzip", "raw"])
    @pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"])
    def test_every_voxel_type(self, tmp_path, dtype, compressed):
        path = tmp_path / "ct.nrrd"
        sitk.WriteImage(_volume_of(dtype), str(path), useCompression=compressed)
        voxels = read_voxels(path, _header(path))
        assert voxels.image is None  # read here, not by ITK
        _assert_read_as_itk(voxels, path)
        assert not voxels.volume.flags.writeable

    def test_raw_voxels_are_the_files_pages_even_at_an_odd_offset(self, tmp_path):
        """A header of odd length puts 16-bit voxels at odd addresses: read as they are, not copied."""
        volume = sitk.GetArrayFromImage(make_volume()).astype("<i2")
        fields = "type: short\n" + GRID_FIELDS.format(space="left-posterior-superior") + "endian: little\nencoding: raw\n"
        if (len("NRRD0004\n") + len(fields) + 1) % 2 == 0:
            fields += "#x\n"  # a comment of three bytes: the voxels start at an odd offset
        path = _nrrd(tmp_path / "odd.nrrd", fields, volume.tobytes())
        assert describe_payload(path).offset % 2 == 1
        voxels = read_voxels(path, _header(path))
        assert voxels.image is None and not voxels.volume.flags.owndata
        _assert_read_as_itk(voxels, path)

    def test_an_oblique_grid(self, tmp_path):
        path = tmp_path / "oblique.nrrd"
        sitk.WriteImage(make_volume(direction=OBLIQUE), str(path), useCompression=True)
        voxels = read_voxels(path, _header(path))
        assert voxels.image is None
        _assert_read_as_itk(voxels, path)

    def test_a_right_anterior_superior_header(self, tmp_path):
        """ITK turns a RAS header's grid into LPS and leaves the voxels where they are: so does this path."""
        volume = sitk.GetArrayFromImage(make_volume()).astype("<i2")
        path = _nrrd(tmp_path / "ras.nrrd", "type: short\n" + GRID_FIELDS.format(space="right-anterior-superior") + "endian: little\nencoding: gzip\n", gzip.compress(volume.tobytes()))
        voxels = read_voxels(path, _header(path))
        assert voxels.image is None
        _assert_read_as_itk(voxels, path)

    def test_the_chest_ct_of_slicerio(self):
        path = Path(slicerio.get_testdata_file("CTChest4.nrrd"))
        voxels = read_voxels(path, _header(path))
        assert voxels.image is None
        _assert_read_as_itk(voxels, path)

    def test_read_volume_gives_the_same_image(self, tmp_path):
        path = tmp_path / "ct.nrrd"
        sitk.WriteImage(make_volume(direction=OBLIQUE), str(path), useCompression=True)
        image, itk = read_volume(path), _as_itk_reads(path)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(itk))
        assert (image.GetOrigin(), image.GetSpacing(), image.GetDirection()) == (itk.GetOrigin(), itk.GetSpacing(), itk.GetDirection())


class TestLeftToItk:
    """Files this path does not decode exactly as ITK: None here, and ITK's reader reads them as before."""

    @pytest.mark.parametrize("encoding", ["gzip", "raw"])
    def test_big_endian_voxels(self, tmp_path, encoding):
        volume = sitk.GetArrayFromImage(make_volume()).astype(">i2")
        body = gzip.compress(volume.tobytes()) if encoding == "gzip" else volume.tobytes()
        path = _nrrd(tmp_path / "big.nrrd", "type: short\n" + GRID_FIELDS.format(space="left-posterior-superior") + f"endian: big\nencoding: {encoding}\n", body)
        assert nrrd_voxels(_header(path)) is None
        voxels = read_voxels(path, _header(path))
        assert voxels.image is not None
        _assert_read_as_itk(voxels, path)
        np.testing.assert_array_equal(voxels.volume, volume.astype("<i2"))

    def test_raw_voxels_on_windows(self, tmp_path, monkeypatch):
        """Windows cannot delete a mapped file (the panel deletes the volume it saved): ITK reads it there."""
        path = tmp_path / "ct.nrrd"
        sitk.WriteImage(make_volume(), str(path), useCompression=False)
        monkeypatch.setattr(nrrd_voxels_module, "MAPS_RAW_FILES", False)  # as on Windows
        assert nrrd_voxels(_header(path)) is None

    def test_a_detached_data_file_and_a_byte_skip(self, tmp_path):
        volume = sitk.GetArrayFromImage(make_volume()).astype("<i2")
        (tmp_path / "voxels.raw.gz").write_bytes(gzip.compress(volume.tobytes()))
        grid = "type: short\n" + GRID_FIELDS.format(space="left-posterior-superior") + "endian: little\n"
        detached = _nrrd(tmp_path / "detached.nhdr", grid + "encoding: gzip\ndata file: voxels.raw.gz\n", b"")
        skipped = _nrrd(tmp_path / "skip.nrrd", grid + "encoding: gzip\nbyte skip: 4\n", gzip.compress(b"\0" * 4 + volume.tobytes()))
        raw_skipped = _nrrd(tmp_path / "raw-skip.nrrd", grid + "encoding: raw\nbyte skip: 4\n", b"\0" * 4 + volume.tobytes())
        for path in (detached, skipped, raw_skipped):
            assert nrrd_voxels(_header(path)) is None, path.name
            voxels = read_voxels(path, _header(path))
            voxels.wait()
            _assert_read_as_itk(voxels, path)

    def test_without_zlib_ng_installed(self, tmp_path, monkeypatch):
        path = tmp_path / "ct.nrrd"
        sitk.WriteImage(make_volume(), str(path), useCompression=True)
        monkeypatch.setattr(nrrd_voxels_module, "_zlib_ng", lambda: None)
        voxels = read_voxels(path, _header(path))
        voxels.wait()
        assert voxels.image is not None
        _assert_read_as_itk(voxels, path)

    def test_bytes_after_the_stream(self, tmp_path):
        volume = sitk.GetArrayFromImage(make_volume()).astype("<i2")
        path = _nrrd(tmp_path / "tail.nrrd", "type: short\n" + GRID_FIELDS.format(space="left-posterior-superior") + "endian: little\nencoding: gzip\n",
                     gzip.compress(volume.tobytes()) + b"\n")
        assert nrrd_voxels(_header(path)) is None


class TestABadStreamIsRefusedWithTheReadersWords:
    def _sound(self, tmp_path) -> bytes:
        path = tmp_path / "sound.nrrd"
        sitk.WriteImage(make_volume(size=(120, 110, 30)), str(path), useCompression=True)
        return path.read_bytes()

    def test_a_stream_cut_short(self, tmp_path):
        data = self._sound(tmp_path)
        path = tmp_path / "cut.nrrd"
        path.write_bytes(data[: len(data) - 500])
        header = inspect_input(path)
        assert nrrd_voxels(verify_data(header)) is None
        with pytest.raises(UserError, match="truncated or corrupt"):
            read_volume(path, verify_data(header))

    def test_a_wrong_checksum(self, tmp_path):
        data = bytearray(self._sound(tmp_path))
        data[-6] ^= 0xFF  # in the CRC-32 of the gzip trailer
        path = tmp_path / "crc.nrrd"
        path.write_bytes(bytes(data))
        assert nrrd_voxels(_header(path)) is None
        with pytest.raises(UserError, match="truncated or corrupt"):
            read_volume(path, _header(path))

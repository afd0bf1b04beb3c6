"""A raw NRRD's voxels are the file's own pages, read exactly as ITK's reader reads them (issue 25).

What ITK gives is the specification: the same voxels, type and grid for every voxel type, an oblique
grid, a right-anterior-superior header, a header of odd length (16-bit voxels at odd addresses). What
is not mapped exactly as ITK reads it (voxels in the other byte order, a detached data file, a byte
skip, compressed data, Windows) goes to ITK's reader as before.
"""

from __future__ import annotations

import gzip
import mmap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import make_volume
from UNetSegmentationLib.io import mapped_voxels as mapped_voxels_module
from UNetSegmentationLib.io.mapped_voxels import mapped_voxels
from UNetSegmentationLib.io.payload import describe_payload
from UNetSegmentationLib.io.volumes import inspect_input, read_volume, read_voxels, verify_data

OBLIQUE = tuple(sitk.VersorTransform((0.3, -0.2, 0.9), 0.5).GetMatrix())
GRID_FIELDS = "dimension: 3\nspace: {space}\nsizes: 40 36 12\nspace directions: (0.8,0,0) (0,1.1,0) (0,0,3.5)\nkinds: domain domain domain\nspace origin: (1,2,3)\n"
LPS = GRID_FIELDS.format(space="left-posterior-superior")


def _header(path: Path):
    return verify_data(inspect_input(path))


def _assert_read_as_itk(voxels, path: Path) -> None:
    itk = sitk.ReadImage(str(path))
    expected = sitk.GetArrayViewFromImage(itk)
    assert voxels.volume.dtype == expected.dtype and voxels.volume.shape == expected.shape
    np.testing.assert_array_equal(voxels.volume, expected)
    assert voxels.spacing == itk.GetSpacing() and voxels.direction == itk.GetDirection()
    reference = voxels.reference
    assert (reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection()) == (itk.GetOrigin(), itk.GetSpacing(), itk.GetDirection())


def _on_a_mapping(array: np.ndarray) -> bool:
    """Whether ``array``'s memory is a memory map (its chain of bases ends in an ``mmap``, through a memoryview)."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(getattr(base, "obj", base), mmap.mmap)


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


def _short_voxels(byte_order: str = "<") -> np.ndarray:
    return sitk.GetArrayFromImage(make_volume()).astype(f"{byte_order}i2")


class TestMappedAsItkReadsIt:
    @pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"])
    def test_every_voxel_type(self, tmp_path, dtype):
        path = tmp_path / "ct.nrrd"
        sitk.WriteImage(_volume_of(dtype), str(path), useCompression=False)
        voxels = read_voxels(path, _header(path))
        assert voxels.image is None and _on_a_mapping(voxels.volume)  # the file's pages, not ITK's copy
        assert not voxels.volume.flags.writeable
        _assert_read_as_itk(voxels, path)

    def test_an_oblique_grid(self, tmp_path):
        path = tmp_path / "oblique.nrrd"
        sitk.WriteImage(make_volume(direction=OBLIQUE), str(path), useCompression=False)
        voxels = read_voxels(path, _header(path))
        assert voxels.image is None
        _assert_read_as_itk(voxels, path)

    def test_a_right_anterior_superior_header(self, tmp_path):
        """ITK turns a RAS header's grid into LPS and leaves the voxels where they are: so does the mapping."""
        path = _nrrd(tmp_path / "ras.nrrd", "type: short\n" + GRID_FIELDS.format(space="right-anterior-superior") + "endian: little\nencoding: raw\n", _short_voxels().tobytes())
        voxels = read_voxels(path, _header(path))
        assert voxels.image is None
        _assert_read_as_itk(voxels, path)

    def test_voxels_at_an_odd_offset(self, tmp_path):
        fields = "type: short\n" + LPS + "endian: little\nencoding: raw\n"
        if (len("NRRD0004\n") + len(fields) + 1) % 2 == 0:
            fields += "#x\n"  # a comment of three bytes: the voxels start at an odd offset
        path = _nrrd(tmp_path / "odd.nrrd", fields, _short_voxels().tobytes())
        assert describe_payload(path).offset % 2 == 1
        voxels = read_voxels(path, _header(path))
        assert voxels.image is None
        _assert_read_as_itk(voxels, path)

    def test_read_volume_gives_an_image_of_its_own(self, tmp_path):
        path = tmp_path / "ct.nrrd"
        sitk.WriteImage(make_volume(direction=OBLIQUE), str(path), useCompression=False)
        image, itk = read_volume(path), sitk.ReadImage(str(path))
        path.unlink()  # the image holds no mapping of the file
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(itk))
        assert (image.GetOrigin(), image.GetSpacing(), image.GetDirection()) == (itk.GetOrigin(), itk.GetSpacing(), itk.GetDirection())


class TestLeftToItk:
    """Files the mapping would not give exactly as ITK reads them: None here, and ITK's reader reads them as before."""

    def test_big_endian_voxels(self, tmp_path):
        path = _nrrd(tmp_path / "big.nrrd", "type: short\n" + LPS + "endian: big\nencoding: raw\n", _short_voxels(">").tobytes())
        assert mapped_voxels(_header(path)) is None
        voxels = read_voxels(path, _header(path))
        assert voxels.image is not None
        _assert_read_as_itk(voxels, path)
        np.testing.assert_array_equal(voxels.volume, _short_voxels())

    def test_a_detached_data_file_a_byte_skip_and_compressed_data(self, tmp_path):
        voxels = _short_voxels().tobytes()
        (tmp_path / "voxels.raw").write_bytes(voxels)
        grid = "type: short\n" + LPS + "endian: little\n"
        detached = _nrrd(tmp_path / "detached.nhdr", grid + "encoding: raw\ndata file: voxels.raw\n", b"")
        skipped = _nrrd(tmp_path / "skip.nrrd", grid + "encoding: raw\nbyte skip: 4\n", b"\0" * 4 + voxels)
        compressed = _nrrd(tmp_path / "gzip.nrrd", grid + "encoding: gzip\n", gzip.compress(voxels))
        for path in (detached, skipped, compressed):
            assert mapped_voxels(_header(path)) is None, path.name
            read = read_voxels(path, _header(path))
            read.wait()
            assert read.image is not None
            _assert_read_as_itk(read, path)

    def test_on_windows(self, tmp_path, monkeypatch):
        """Windows cannot delete a mapped file (the panel deletes the volume it saved once a request ends)."""
        path = tmp_path / "ct.nrrd"
        sitk.WriteImage(make_volume(), str(path), useCompression=False)
        monkeypatch.setattr(mapped_voxels_module, "MAPS_RAW_FILES", False)  # as on Windows
        assert mapped_voxels(_header(path)) is None
        assert read_voxels(path, _header(path)).image is not None

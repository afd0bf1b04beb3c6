"""An input is segmented only where its file states where its voxels lie, and only whole (issue 23, item 5).

Readers invent what a file does not say, and leave out what they cannot parse, without a word: GDCM
drops an unreadable slice from a series (11 of 12 slices segmented), reads a slice without
PixelSpacing at 1 mm and a series without ImagePositionPatient as a stack at the origin; ITK reads a
NIfTI pixdim of 0, a NRRD without spacing and a MetaImage without ElementSpacing at 1 mm. Each is
refused in one ``unetseg: error:`` line naming the file and the field, before any output lock. Also
names that ITK's C++ aborts on (not UTF-8) or that no file system holds (over 255 bytes), and a
singular direction matrix, named as such (item 7, LOW). The DICOM series are the slicerio chest CT
written slice by slice (``support.write_dicom_series``) and edited with pydicom as an export would
leave them.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import POSIX, assert_refused, deny_reading, make_volume, write, write_dicom_series

from UNetSegmentationLib.io import dicom_series

pydicom = pytest.importorskip("pydicom")

SERIES_UID = "1.2.826.0.1.3680043.2.1125.23.5"


@pytest.fixture
def ct_series(chest_ct_path, tmp_path) -> Path:
    """Twelve slices of the real chest CT as a DICOM series folder (one file per slice, ``000.dcm`` ...)."""
    image = sitk.ReadImage(str(chest_ct_path))[:, :, 10:22]
    image.SetDirection([round(v) for v in image.GetDirection()])
    folder = tmp_path / "series"
    folder.mkdir()
    write_dicom_series(image, folder, SERIES_UID)
    return folder


def edit_slices(folder: Path, edit, which=None) -> None:
    """Apply ``edit(dataset)`` to the slices of ``folder`` (all, or the indices in ``which``), saved in place."""
    for index, path in enumerate(sorted(folder.glob("*.dcm"))):
        if which is None or index in which:
            dataset = pydicom.dcmread(path)
            edit(dataset)
            dataset.save_as(path)


# --- a slice left out of the series ---------------------------------------------------------------------------


@pytest.mark.parametrize("slice_index", [0, 5, 11])
def test_a_slice_cut_short_is_refused_naming_it_not_dropped(predict, ct_series, slice_index):
    """GDCM leaves a damaged file out of the series; at either end not even a gap shows it."""
    path = sorted(ct_series.glob("*.dcm"))[slice_index]
    path.write_bytes(path.read_bytes()[:600])
    assert_refused(*predict(ct_series), path.name, "cannot be read as a slice", "segmented without it")


def test_a_slice_of_garbage_after_a_dicom_preamble_is_refused(predict, ct_series):
    path = sorted(ct_series.glob("*.dcm"))[0]
    path.write_bytes(bytes(128) + b"DICM" + os.urandom(2000))
    assert_refused(*predict(ct_series), path.name, "cannot be read as a slice")


def test_a_slice_without_read_permission_is_refused_naming_it(predict, ct_series, monkeypatch):
    """Tests run as root, who reads any file: the refusal of the operating system is simulated; GDCM, which
    would skip such a file, is made to skip it too."""
    path = sorted(ct_series.glob("*.dcm"))[-1]
    deny_reading(monkeypatch, dicom_series, path)
    real_names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames
    monkeypatch.setattr(sitk.ImageSeriesReader, "GetGDCMSeriesFileNames", staticmethod(lambda *a, **k: tuple(f for f in real_names(*a, **k) if Path(f) != path)))
    assert_refused(*predict(ct_series), path.name, "permission denied")


@pytest.mark.skipif(not POSIX or os.geteuid() == 0, reason="root reads any file (the simulated test covers it)")
def test_a_slice_without_read_permission_is_refused_for_real(predict, ct_series):
    path = sorted(ct_series.glob("*.dcm"))[-1]
    path.chmod(0)
    assert_refused(*predict(ct_series), path.name, "permission denied")


def test_files_that_are_plainly_no_slices_are_left_alone(predict, ct_series):
    (ct_series / "notes.txt").write_text("exported from PACS")
    (ct_series / ".DS_Store").write_bytes(b"\0\1")
    result, output = predict(ct_series)
    assert result.code == 0, result.stderr
    assert sitk.ReadImage(str(output)).GetSize()[2] == 12


# --- geometry a DICOM slice does not state ---------------------------------------------------------------------


@pytest.mark.parametrize("field, words", [
    ("PixelSpacing", ["PixelSpacing (0028,0030)", "1 mm"]),
    ("ImagePositionPatient", ["ImagePositionPatient (0020,0032)", "slices' places"]),
    ("ImageOrientationPatient", ["ImageOrientationPatient (0020,0037)"]),
])
def test_a_series_without_a_geometry_field_is_refused_naming_it(predict, ct_series, field, words):
    edit_slices(ct_series, lambda dataset: delattr(dataset, field))
    assert_refused(*predict(ct_series), "000.dcm", *words)


def test_a_single_slice_without_pixel_spacing_is_refused_naming_that_slice(predict, ct_series):
    edit_slices(ct_series, lambda dataset: delattr(dataset, "PixelSpacing"), which={7})
    assert_refused(*predict(ct_series), "007.dcm", "PixelSpacing")


def test_slices_of_different_pixel_sizes_are_refused(predict, ct_series):
    edit_slices(ct_series, lambda dataset: setattr(dataset, "PixelSpacing", [2.5, 2.5]), which={4})
    assert_refused(*predict(ct_series), "different pixel sizes", "004.dcm", "2.5 x 2.5 mm")


def test_a_slice_of_another_size_is_refused_naming_it(predict, ct_series):
    """A localizer or a reformat left in the folder (was: `cannot read … as an image (…): Size: [64, 64, 1]`)."""
    from pydicom.uid import ExplicitVRLittleEndian

    def smaller(dataset) -> None:
        dataset.PixelData = dataset.pixel_array[:64, :64].copy().tobytes()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.Rows = dataset.Columns = 64

    edit_slices(ct_series, smaller, which={3})
    assert_refused(*predict(ct_series), "differ in size", "003.dcm has 64 x 64 pixels", "128 x 128")


def test_the_header_of_a_series_carries_the_slice_spacing_of_its_positions(ct_series, chest_ct_path):
    """One slice's header cannot know the distance to the next one: the positions say it (10 mm here), as the reader
    then spaces the volume; the memory and grid plans made from the header see the same grid."""
    from UNetSegmentationLib.io.volumes import inspect_input, read_volume

    header = inspect_input(ct_series)
    image = read_volume(ct_series, header)
    np.testing.assert_allclose(header.spacing, image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(header.spacing, sitk.ReadImage(str(chest_ct_path)).GetSpacing(), atol=1e-4)


# --- volume files that do not state their voxel size -------------------------------------------------------------


def test_a_nifti_with_pixdim_0_is_refused_not_read_at_1_mm(predict, tmp_path):
    """The regression of issue 23: ITK reads a pixdim of 0 as 1 mm."""
    path = write(make_volume(size=(16, 16, 6)), tmp_path / "no-spacing.nii")
    data = bytearray(path.read_bytes())
    pixdim = list(struct.unpack("<8f", data[76:108]))
    pixdim[3] = 0.0
    data[76:108] = struct.pack("<8f", *pixdim)
    path.write_bytes(bytes(data))
    assert sitk.ReadImage(str(path)).GetSpacing()[2] == 1.0  # what the reader would have segmented at
    assert_refused(*predict(path), "does not state its voxel size along k", "pixdim is 0")


def test_a_nifti_of_one_slice_needs_no_slice_thickness(predict, tmp_path):
    path = write(make_volume(size=(16, 16, 1)), tmp_path / "one.nii")
    data = bytearray(path.read_bytes())
    data[88:92] = struct.pack("<f", 0.0)  # pixdim[3]
    path.write_bytes(bytes(data))
    result, _ = predict(path)
    assert result.code == 0, result.stderr


def test_a_nifti_that_states_no_orientation_is_segmented_with_a_warning(predict, tmp_path):
    """qform_code and sform_code 0 (or an ANALYZE header): the reader places it by convention; the user hears so."""
    path = write(make_volume(size=(16, 16, 4)), tmp_path / "no-transform.nii")
    data = bytearray(path.read_bytes())
    data[252:256] = struct.pack("<hh", 0, 0)
    path.write_bytes(bytes(data))
    result, _ = predict(path, progress="json")
    assert result.code == 0, result.stderr
    assert any("states no orientation or position" in e["message"] for e in result.events if e["event"] == "warning")


@pytest.mark.parametrize("name, header, phrase", [
    ("plain.nrrd", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 4\nendian: little\nencoding: raw\n\n", "neither 'space directions'"),
    ("plain.mha", b"ObjectType = Image\nNDims = 3\nDimSize = 8 8 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n", "no ElementSpacing"),
])
def test_a_nrrd_or_metaimage_without_spacing_is_refused(predict, tmp_path, name, header, phrase):
    path = tmp_path / name
    path.write_bytes(header + bytes(8 * 8 * 4 * 2))
    assert_refused(*predict(path), "does not state its voxel size", phrase)


def test_a_nrrd_with_spacings_and_no_directions_is_segmented(predict, tmp_path):
    path = tmp_path / "spacings.nrrd"
    path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 4\nspacings: 0.8 0.8 2.5\nendian: little\nencoding: raw\n\n" + bytes(8 * 8 * 4 * 2))
    result, _ = predict(path)
    assert result.code == 0, result.stderr


# --- names ITK cannot take, a singular direction -------------------------------------------------------------------


@pytest.mark.skipif(not POSIX, reason="file names of arbitrary bytes are POSIX")
def test_a_file_name_that_is_not_utf8_is_one_message_not_an_abort(predict, tmp_path):
    """SimpleITK aborts the process (std::logic_error) on such a name; the engine names it first."""
    path = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"scan-\xe9t\xe9.nrrd"))
    write(make_volume(size=(16, 16, 3)), tmp_path / "plain.nrrd").rename(path)
    assert_refused(*predict(path), "not valid UTF-8", "\\xe9")


@pytest.mark.skipif(not POSIX, reason="file names of arbitrary bytes are POSIX")
def test_a_dicom_folder_holding_a_name_that_is_not_utf8_is_one_message(predict, ct_series):
    first = sorted(ct_series.glob("*.dcm"))[0]
    os.rename(first, os.path.join(os.fsencode(ct_series), b"\xff" + first.name.encode()))
    assert_refused(*predict(ct_series), "not valid UTF-8", "\\xff000.dcm")


@pytest.mark.skipif(not POSIX, reason="file names of arbitrary bytes are POSIX")
def test_an_output_name_that_is_not_utf8_is_refused_before_any_work(cli, small_unet_one_class, tmp_path):
    """SimpleITK's writer aborted the process after the whole run, leaving the output's lock file behind."""
    volume = write(make_volume(size=(16, 16, 3)), tmp_path / "scan.nrrd")
    output = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"labels-\xff.nrrd"))
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", volume, output)
    assert result.code == 2 and "not valid UTF-8" in result.stderr and "labels-\\xff.nrrd" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nrrd"]


def test_a_file_name_over_255_bytes_is_one_message(predict, tmp_path):
    assert_refused(*predict(tmp_path / ("ü" * 130 + ".nrrd")), "265 bytes long", "255 bytes")


def test_a_singular_direction_matrix_is_called_singular(predict, tmp_path):
    path = tmp_path / "singular.nrrd"
    path.write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 8 8 4\n"
        b"space directions: (1,0,0) (1,0,0) (0,0,1)\nendian: little\nencoding: raw\n\n" + bytes(8 * 8 * 4 * 2)
    )
    assert_refused(*predict(path), "singular direction matrix")


def test_native_reasons_keep_their_cause():
    from UNetSegmentationLib.io.native_messages import native_reason

    singular = RuntimeError("Exception thrown in SimpleITK ImageFileReader_Execute: itkImageBase.hxx:145:\nITK ERROR: Image(0x55e8): Bad direction, determinant is 0. Refusing to change direction from 1 0 0\n0 1 0\n0 0 1\n to 1 1 0\n0 0 0\n0 0 1\n")
    assert "singular" in native_reason(singular)
    other = RuntimeError("Exception thrown in X: file.cxx:12:\nITK ERROR: NrrdImageIO(0x5a1b2c): ReadImageInformation: Error reading a.nrrd:\n[nrrd] detail")
    assert native_reason(other) == "ReadImageInformation: Error reading a.nrrd:"


def test_in_a_cohort_a_series_without_pixel_spacing_fails_its_case_and_the_others_go_on(cli, small_unet_one_class, chest_ct_path, tmp_path):
    """Was: marked done with a confidence of 0.92-0.97, segmented at 1 mm."""
    from UNetSegmentationLib.cohort.batch import EXIT_CASES_FAILED
    from UNetSegmentationLib.cohort.manifest import read_records

    image = sitk.ReadImage(str(chest_ct_path))[:, :, 10:16]
    image.SetDirection([round(v) for v in image.GetDirection()])
    for name in ("good", "no-spacing"):
        (tmp_path / "in" / name).mkdir(parents=True)
        write_dicom_series(image, tmp_path / "in" / name, SERIES_UID)
    edit_slices(tmp_path / "in" / "no-spacing", lambda dataset: delattr(dataset, "PixelSpacing"))
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--output-dir", tmp_path / "out", tmp_path / "in")
    assert result.code == EXIT_CASES_FAILED, result.stderr
    records = {r["case"]: r for r in read_records(tmp_path / "out" / "manifest.jsonl")}
    assert records["good"]["status"] == "done"
    assert records["no-spacing"]["status"] == "failed" and "PixelSpacing (0028,0030)" in records["no-spacing"]["error"]

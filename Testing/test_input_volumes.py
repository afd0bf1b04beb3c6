"""What `unetseg predict` accepts as input and what it refuses: dimensions, voxel types, values,
sizes, permissions, DICOM folders and unusual paths. Every refusal is one clear message naming the
problem, exit status 2, and no output file (docs/hardening.md)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from support import assert_refused, assert_same_grid, create_checkpoint, deny_reading, leftovers, make_volume, POSIX, unusual_files, with_array, write, write_dicom_series

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.inference.predict_file import predict_file
from UNetSegmentationLib.io import volumes
from UNetSegmentationLib.io.volumes import MAX_SLICE_PIXELS, check_slice_size


def test_a_2d_image_is_refused(predict, tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(path))
    assert_refused(*predict(path), "2D", "3D volume is needed")

def test_a_4d_image_is_refused(predict, tmp_path):
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 4, 3], sitk.sitkFloat32), str(path))
    assert_refused(*predict(path), "4D")

def test_a_vector_image_is_refused(predict, tmp_path):
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.Image([8, 8, 4], sitk.sitkVectorUInt8, 3), str(path))
    assert_refused(*predict(path), "3 components per voxel", "scalar")

def test_a_missing_input_is_refused(predict, tmp_path):
    assert_refused(*predict(tmp_path / "nowhere.nrrd"), "input not found")

def test_a_file_that_is_no_image_is_refused(predict, tmp_path):
    path = tmp_path / "notes.nrrd"
    path.write_text("not an image")
    assert_refused(*predict(path), "cannot read")

def test_a_volume_with_nan_is_refused(predict, tmp_path):
    image = make_volume(dtype=np.float32)
    array = sitk.GetArrayFromImage(image)
    array[3, 4, 5] = np.nan
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(image)
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(broken, str(path))
    assert_refused(*predict(path), "NaN")

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
    with pytest.raises(UserError, match=r"10x11 pixels \(110 pixels\), more than the 100 pixels one network call"):  # not "0.0 million"
        check_slice_size((10, 11))

def test_an_unreadable_input_is_named_as_a_permission_problem(predict, tmp_path, monkeypatch):
    """Tests run as root, who reads any file: the refusal of the operating system is simulated."""
    path = write(make_volume(size=(16, 16, 2)), tmp_path / "secret.nrrd")
    deny_reading(monkeypatch, volumes, path)
    assert_refused(*predict(path), "cannot read", "secret.nrrd", "permission denied", "read access")

@pytest.mark.skipif(not POSIX or os.geteuid() == 0, reason="root reads any file (the simulated test covers it)")
def test_an_unreadable_input_is_named_as_a_permission_problem_for_real(predict, tmp_path):
    path = write(make_volume(size=(16, 16, 2)), tmp_path / "secret.nrrd")
    path.chmod(0)
    assert_refused(*predict(path), "permission denied")

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



def test_paths_with_spaces_and_non_ascii_characters_work(cli, small_unet_one_class, tmp_path):
    import slicerio

    volume, checkpoint, output, confidence = unusual_files(tmp_path, small_unet_one_class)
    result = cli("predict", "--checkpoint", checkpoint, "--progress", "none", "--probabilities", confidence, volume, output)
    assert result.code == 0, result.stderr
    assert [s["name"] for s in slicerio.read_segmentation(str(output))["segments"]] == ["liver"]
    assert_same_grid(sitk.ReadImage(str(volume)), sitk.ReadImage(str(confidence)))
    assert leftovers(output.parent) == []

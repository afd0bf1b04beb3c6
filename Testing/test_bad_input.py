"""Bad input gets one clear message naming the problem, exit status 2, and no output file."""

from __future__ import annotations

import json
import pathlib
import struct

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from UNetSegmentationLib.errors import EXIT_USER_ERROR
from UNetSegmentationLib.networks.unet import UNet

from support import assert_refused, make_volume


@pytest.fixture
def predict(cli, small_unetpp, tmp_path):
    output = tmp_path / "out" / "labels.nrrd"
    output.parent.mkdir()

    def run(input_path, *extra, checkpoint=small_unetpp):
        return cli("predict", "--checkpoint", checkpoint, "--progress", "none", *extra, input_path, output), output

    return run


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


def test_a_truncated_checkpoint_is_refused(predict, oblique_volume_path, small_unetpp, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(small_unetpp.read_bytes()[:5000])
    assert_refused(*predict(oblique_volume_path, checkpoint=truncated), "truncated")


def test_a_file_of_unknown_format_is_no_checkpoint(predict, oblique_volume_path, tmp_path):
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"GIF89a" + bytes(100))
    assert_refused(*predict(oblique_volume_path, checkpoint=junk), "not a checkpoint")


class WouldRunCode:
    """Unpickling this calls Path.touch(marker): proof that code ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_a_checkpoint_holding_a_pickled_object_is_refused_and_never_executed(predict, oblique_volume_path, tmp_path, container):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "hook": WouldRunCode(marker)}
    if container == "torch.save":
        torch.save(payload, evil)
    else:
        import pickle

        evil.write_bytes(pickle.dumps(payload, protocol=2))
    result, output = predict(oblique_volume_path, "--arch", "unet", "--classes", "a", checkpoint=evil)
    assert_refused(result, output, "refusing", "could run arbitrary code")
    assert not marker.exists()


def test_a_pt_file_holding_a_whole_model_object_is_refused(predict, oblique_volume_path, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(UNet(3, 1, features=(4, 8)), path)
    assert_refused(*predict(oblique_volume_path, "--arch", "unet", "--classes", "a", "--features", "4,8", checkpoint=path), "refusing")


def test_a_plain_state_dict_loads_with_the_metadata_flags(predict, oblique_volume_path, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": UNet(3, 1, features=(4, 8)).state_dict()}, path)
    result, output = predict(oblique_volume_path, "--arch", "unet", "--classes", "liver", "--features", "4,8", checkpoint=path)
    assert result.code == 0, result.stderr
    assert output.exists()


def test_a_plain_state_dict_without_metadata_flags_asks_for_them(predict, oblique_volume_path, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(UNet(3, 1, features=(4, 8)).state_dict(), path)
    assert_refused(*predict(oblique_volume_path, checkpoint=path), "--arch", "--classes")


def test_weights_for_one_class_used_with_two_classes_is_a_class_count_mismatch(predict, oblique_volume_path, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(UNet(3, 1, features=(4, 8)).state_dict(), path)
    result, output = predict(oblique_volume_path, "--arch", "unet", "--classes", "liver,spleen", "--features", "4,8", checkpoint=path)
    assert_refused(result, output, "class-count mismatch", "fits 1 class", "2 class(es)")


def test_weights_of_another_size_do_not_match_the_architecture(predict, oblique_volume_path, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(UNet(3, 1, features=(4, 8)).state_dict(), path)
    result, output = predict(oblique_volume_path, "--arch", "unet", "--classes", "liver", "--features", "8,16", checkpoint=path)
    assert_refused(result, output, "do not match architecture 'unet'", "wrong shape")


def rewrite_metadata(source: pathlib.Path, target: pathlib.Path, change) -> pathlib.Path:
    """Copy a safetensors checkpoint with its metadata JSON changed by ``change(dict)``."""
    data = source.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    metadata = json.loads(header["__metadata__"]["unetseg"])
    change(metadata)
    header["__metadata__"]["unetseg"] = json.dumps(metadata)
    encoded = json.dumps(header).encode()
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size :])
    return target


def test_metadata_whose_classes_disagree_with_the_output_channels_is_refused(predict, oblique_volume_path, small_unetpp, tmp_path):
    def add_class(metadata):
        metadata["classes"].append({"value": 3, "name": "extra", "color": [1, 1, 0]})

    checkpoint = rewrite_metadata(small_unetpp, tmp_path / "m.safetensors", add_class)
    assert_refused(*predict(oblique_volume_path, checkpoint=checkpoint), "class/channel mismatch", "out_channels")


@pytest.mark.parametrize(
    "change, phrase",
    [
        (lambda m: m.pop("classes"), "missing the field 'classes'"),
        (lambda m: m.update(classes=[]), "class list is empty"),
        (lambda m: m["classes"][1].update(name="lung"), "duplicate class name"),
        (lambda m: m.update(context="one"), "'context' must be an integer"),
        (lambda m: m["architecture"].update(name="transformer9000"), "unknown architecture"),
        (lambda m: m.update(format_version=99), "newer than this version"),
    ],
)
def test_broken_metadata_is_named(predict, oblique_volume_path, small_unetpp, tmp_path, change, phrase):
    checkpoint = rewrite_metadata(small_unetpp, tmp_path / "m.safetensors", change)
    assert_refused(*predict(oblique_volume_path, checkpoint=checkpoint), phrase)


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


def test_depth_on_a_network_that_cannot_be_pruned_is_refused(cli, small_unet_one_class, oblique_volume_path, tmp_path):
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--depth", "2", oblique_volume_path, tmp_path / "o.nrrd")
    assert result.code == EXIT_USER_ERROR and "cannot be pruned" in result.stderr


def test_a_gpu_that_is_not_there_is_named(cli, small_unetpp, oblique_volume_path, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = cli("predict", "--checkpoint", small_unetpp, "--progress", "none", "--device", "cuda", oblique_volume_path, tmp_path / "o.nrrd")
    assert result.code == EXIT_USER_ERROR and "no CUDA GPU" in result.stderr

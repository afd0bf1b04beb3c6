"""Loading a checkpoint: safetensors with metadata, plain PyTorch state dicts only through
``weights_only``, pickles refused and never executed, and every broken or mismatched checkpoint named
in one message before any work (docs/hardening.md)."""

from __future__ import annotations

import json
import pathlib
import struct

import pytest
import torch

from support import assert_refused, deny_reading

from UNetSegmentationLib.networks.unet import UNet



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

def test_an_unreadable_checkpoint_is_named_as_a_permission_problem(predict, oblique_volume_path, small_unet_one_class, monkeypatch):
    from UNetSegmentationLib.model import header as checkpoint_header

    deny_reading(monkeypatch, checkpoint_header, small_unet_one_class)
    assert_refused(*predict(oblique_volume_path), "cannot read checkpoint", "Permission denied")

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

"""What the Slicer panel shows and decides, tested without Slicer: checkpoint metadata read without
torch, depth and device choices, dependency installation that never touches Slicer's own packages,
the largest-connected-component clean-up, and the self-test's known-answer checkpoint."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from UNetSegmentationLib.model import header as checkpoint_header

from UNetSegmentationLib.panel import checkpoints, devices, requirements
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.metadata import ModelMetadata, Normalization, make_classes
from UNetSegmentationLib.networks.registry import ARCHITECTURES
from UNetSegmentationLib.inference.postprocess import keep_largest_component
from UNetSegmentationLib.panel.checkpoints import CheckpointInfo, describe_checkpoint, readiness
from UNetSegmentationLib.panel.devices import DeviceInfo, device_choices, parse_probe_output
from UNetSegmentationLib.panel.requirements import missing_requirements, pip_install_arguments

REPO = Path(__file__).resolve().parent.parent


def unetpp_metadata(**changes) -> ModelMetadata:
    kwargs = {"in_channels": 3, "out_channels": 3, "features": [4, 8, 16, 32, 64], "deep_supervision": True}
    metadata = ModelMetadata("unetplusplus", kwargs, 1, Normalization("ct", window=(-1000.0, 1000.0)), make_classes(["right lung", "left lung"]))
    for key, value in changes.items():
        setattr(metadata, key, value)
    return metadata


# --- checkpoint header without torch -----------------------------------------------------------------


def test_header_reader_gives_the_same_metadata_as_the_engine(small_unetpp):
    from UNetSegmentationLib.model.checkpoint import read_metadata

    assert checkpoint_header.read_metadata(small_unetpp) == read_metadata(small_unetpp)
    assert checkpoint_header.checkpoint_kind(small_unetpp) == "safetensors"


def write_safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_header_reader_refuses_broken_files_with_clear_messages(tmp_path, small_unetpp):
    with pytest.raises(UserError, match="checkpoint not found"):
        checkpoint_header.read_metadata(tmp_path / "missing.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        checkpoint_header.read_metadata(tmp_path / "empty.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(small_unetpp.read_bytes()[:200])
    with pytest.raises(UserError, match="truncated"):
        checkpoint_header.read_metadata(truncated)
    foreign = write_safetensors(tmp_path / "foreign.safetensors", {"__metadata__": {"format": "pt"}})
    with pytest.raises(UserError, match="without UNetSegmentation metadata"):
        checkpoint_header.read_metadata(foreign)
    bad_json = tmp_path / "bad.safetensors"
    bad_json.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(UserError, match="not valid JSON"):
        checkpoint_header.read_metadata(bad_json)
    pickle_file = tmp_path / "weights.pt"
    pickle_file.write_bytes(b"PK\x03\x04rest-of-a-zip")
    assert checkpoint_header.checkpoint_kind(pickle_file) == "torch"
    with pytest.raises(UserError, match="plain PyTorch file"):
        checkpoint_header.read_metadata(pickle_file)


def test_describe_checkpoint_never_raises(tmp_path, small_unetpp):
    info = describe_checkpoint(small_unetpp)
    assert info.usable and not info.needs_model_options and info.architecture == "unetplusplus"
    assert info.class_names() == ["lung", "bone"]
    assert info.summary().splitlines()[0] == "UNet++, 2 segments: lung, bone"
    assert "CT (window -1000 to 1000 HU)" in info.summary()
    missing = describe_checkpoint(tmp_path / "nope.safetensors")
    assert not missing.usable and missing.summary().startswith("checkpoint not found")
    assert describe_checkpoint(None).error == "Choose a checkpoint file (.safetensors)."
    assert describe_checkpoint("").error and describe_checkpoint(".").error
    plain = tmp_path / "weights.pt"
    plain.write_bytes(b"\x80\x02rest-of-a-pickle")
    plain_info = describe_checkpoint(plain)
    assert plain_info.usable and plain_info.needs_model_options and plain_info.depth_choices() == []
    assert "choose the architecture" in plain_info.summary()


# --- depths -------------------------------------------------------------------------------------------


def test_depth_choices_show_dice_speed_and_the_recommended_depth():
    metadata = unetpp_metadata(
        depth_metrics={1: {"dice": 0.81, "ms_per_slice": 1.2}, 2: {"dice": 0.873, "ms_per_slice": 2.5}, 3: {"dice": 0.88, "ms_per_slice": 4.0}, 4: {"dice": 0.882, "ms_per_slice": 7.25}},
        recommended_depth=2,
    )
    choices = checkpoints.depth_choices(metadata)
    assert [c.value for c in choices] == ["1", "2", "3", "4", "accurate"]
    assert choices[1].label == "L2 \u2014 Dice 0.873, 2.5 ms/slice  \u2605 recommended" and choices[1].recommended
    assert choices[3].label == "L4 (full network) \u2014 Dice 0.882, 7.2 ms/slice"
    assert [c.recommended for c in choices].count(True) == 1
    assert checkpoints.default_depth(choices) == "2"


def test_without_metrics_the_full_network_is_recommended_as_the_engine_does():
    from UNetSegmentationLib.model.depth import resolve_depth

    metadata = unetpp_metadata()
    choices = checkpoints.depth_choices(metadata)
    assert [c.label for c in choices[:4]] == ["L1", "L2", "L3", "L4 (full network)  \u2605 recommended"]
    assert checkpoints.default_depth(choices) == str(resolve_depth(metadata, None))
    shallow = unetpp_metadata(kwargs={"in_channels": 3, "out_channels": 3, "features": [4, 8, 16], "deep_supervision": True}, recommended_depth=4)
    assert [c.value for c in checkpoints.depth_choices(shallow)] == ["1", "2", "accurate"]
    assert checkpoints.default_depth(checkpoints.depth_choices(shallow)) == str(resolve_depth(shallow, None))


def test_networks_that_cannot_prune_get_no_depth_combo():
    for name, architecture in ARCHITECTURES.items():
        assert checkpoints.architecture_can_prune(name) == architecture.prunable
        if not architecture.prunable:
            metadata = unetpp_metadata(architecture=name)
            assert checkpoints.depth_choices(metadata) == []
    assert checkpoints.depth_choices(unetpp_metadata(architecture="no-such-net")) == []
    assert checkpoints.architecture_choices() == [(a.name, a.title) for a in ARCHITECTURES.values()]


# --- devices ------------------------------------------------------------------------------------------


def test_device_choices_say_what_is_available():
    assert [c.value for c in device_choices(None)] == ["auto", "cpu", "cuda"]
    no_torch = device_choices(DeviceInfo(torch_version=None, error="ModuleNotFoundError"))
    assert "PyTorch not installed yet" in no_torch[0].label and all(c.enabled for c in no_torch)
    cpu_only = device_choices(DeviceInfo(torch_version="2.5.0", cuda=False))
    assert cpu_only[0].label == "Automatic (CPU: no CUDA GPU found)" and not cpu_only[2].enabled
    gpus = device_choices(DeviceInfo(torch_version="2.5.0", cuda=True, gpu_names=["NVIDIA RTX A4000", "NVIDIA RTX A4000"]))
    assert gpus[2].label == "GPU: NVIDIA RTX A4000 (+1 more)" and gpus[2].enabled


@pytest.mark.child_process
def test_probe_output_is_parsed_and_a_real_probe_runs_in_a_child():
    assert parse_probe_output('noise\n{"torch_version": "2.1.0", "cuda": true, "gpu_names": ["X"]}\n') == DeviceInfo("2.1.0", True, ["X"], None)
    assert parse_probe_output("").error
    probe = devices.DeviceProbe(sys.executable).start()
    info = probe.wait(timeout_s=120)
    import torch  # the test process may import it; the panel never does

    assert info.torch_version == torch.__version__ and info.cuda == torch.cuda.is_available() and info.error is None
    missing = devices.DeviceProbe("/no/such/python").start()
    assert missing.poll().error.startswith("cannot run /no/such/python")


# --- dependencies -------------------------------------------------------------------------------------


def test_missing_requirements_are_found_without_importing_them():
    present = {"monai", "safetensors", "tqdm", "typing_extensions", "colorama", "onnxruntime", "onnx", "ml_dtypes", "google.protobuf", "flatbuffers", "packaging"}
    missing = missing_requirements(lambda name: object() if name in present else None)
    assert [r.module for r in missing] == ["slicerio", "nrrd"]
    assert pip_install_arguments(missing) == "--no-deps slicerio>=1.0 pynrrd>=1.0"
    assert pip_install_arguments([]) == ""
    assert missing_requirements() == []  # everything is installed here


def test_install_list_is_closed_under_dependencies_and_spares_slicers_packages():
    """--no-deps means every dependency of a listed package must be listed, Slicer's own ones excepted."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    listed = {r.pip.split(">")[0].split("=")[0].lower().replace("_", "-") for r in requirements.REQUIREMENTS}
    protected = {p.lower() for p in requirements.PROTECTED_PACKAGES}
    assert not listed & protected
    for name in list(listed):
        for requirement in map(Requirement, requires(name) or []):
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            dependency = requirement.name.lower().replace("_", "-")
            assert dependency in listed | protected, f"{name} needs {dependency}, which --no-deps would leave out"
    # and the engine's own requirements (pyproject) are all covered
    from support import read_pyproject

    project = read_pyproject()["project"]
    for requirement in map(Requirement, project["dependencies"]):
        assert requirement.name.lower() in listed | protected, requirement.name
    text = requirements.install_confirmation_text(requirements.REQUIREMENTS[:2], torch_missing=True)
    assert "PyTorch" in text and "monai>=1.3" in text and "not touched" in text


# --- defaults and readiness -------------------------------------------------------------------------


def test_the_bundled_model_is_where_the_module_and_the_demo_look():
    from UNetSegmentationLib.cli import demo
    from UNetSegmentationLib.model import bundled

    assert bundled.bundled_model_path() == REPO / "UNetSegmentation" / "Resources" / "Models" / bundled.BUNDLED_MODEL_NAME
    assert checkpoints.bundled_model_path is bundled.bundled_model_path
    assert demo.bundled_model() in (bundled.bundled_model_path(), None)


def test_default_checkpoint_prefers_the_last_one_used(tmp_path, small_unetpp):
    bundled = tmp_path / "bundled.safetensors"
    assert checkpoints.default_checkpoint(str(small_unetpp), bundled=bundled) == small_unetpp
    assert checkpoints.default_checkpoint(str(tmp_path / "deleted.safetensors"), bundled=bundled) is None
    bundled.write_bytes(b"x")
    assert checkpoints.default_checkpoint(None, bundled=bundled) == bundled
    assert checkpoints.default_checkpoint(str(tmp_path / "deleted.safetensors"), bundled=bundled) == bundled


def test_readiness_explains_what_is_missing(small_unetpp, tmp_path):
    good = describe_checkpoint(small_unetpp)
    assert readiness(True, good) == (True, "")
    assert readiness(False, good) == (False, "Select an input volume.")
    assert readiness(True, describe_checkpoint(None))[1] == "Choose a model file (.safetensors)."
    assert readiness(True, describe_checkpoint(tmp_path / "gone.safetensors"))[1].startswith("checkpoint not found")
    plain = CheckpointInfo(tmp_path / "w.pt", kind="torch")
    assert readiness(True, plain, "", None)[0] is False
    assert readiness(True, plain, "liver,", "unet")[1].startswith("Type the segment names")
    assert readiness(True, plain, "liver, spleen", "unet") == (True, "")
    assert checkpoints.output_segmentation_name("CTChest") == "CTChest segmentation"
    assert checkpoints.segment_id(3) == "Segment_3"


# --- the panel's settings onto the engine's options ----------------------------------------------------


def test_the_panel_settings_map_onto_the_engine_options(small_unetpp, tmp_path):
    from types import SimpleNamespace

    from UNetSegmentationLib.inference.options import DEFAULTS, SegmentationOptions
    from UNetSegmentationSlicer.parameters import run_options, run_options_from_parameters

    settings = SimpleNamespace(depth="2", device="cpu", batchSize=2, sliceAxis="k", largestComponent=True, confidenceMap=True, architecture="unet", classNames="x",
                               spacing="native", cropToBody=False)
    options = run_options_from_parameters(settings, describe_checkpoint(small_unetpp))
    assert options.checkpoint == small_unetpp and options.confidence_map
    assert options.segmentation == SegmentationOptions(depth=2, device="cpu", batch_size=2, axis=2, largest_component=True, spacing="native", crop=False)
    arguments = options.segmentation.to_arguments("in.nrrd", "out.seg.nrrd", small_unetpp)
    assert arguments[arguments.index("--spacing") + 1] == "native" and "--no-crop" in arguments, "the child gets --spacing native --no-crop"
    assert (options.architecture, options.classes) == (None, None), "a safetensors checkpoint names its own model"
    plain = run_options_from_parameters(settings, CheckpointInfo(tmp_path / "w.pt", kind="torch"))
    assert plain.segmentation.depth is None, "a plain network has no depth choice"
    assert (plain.architecture, plain.classes) == ("unet", "x")
    assert run_options("m.safetensors", depth="", sliceAxis="auto").segmentation == DEFAULTS
    with pytest.raises(UserError, match="--spacing"):
        run_options("m.safetensors", spacing="coarse")
    with pytest.raises(UserError, match="--batch-size must be a positive integer"):
        run_options("m.safetensors", batchSize=0)


# --- largest connected component ------------------------------------------------------------------------


def test_keep_largest_component_per_label():
    labels = np.zeros((6, 10, 10), dtype=np.uint8)
    labels[1:4, 1:5, 1:5] = 1  # 48 voxels: kept
    labels[1:2, 7:9, 7:9] = 1  # 4 voxels, separate: removed
    labels[4:6, 6:9, 1:3] = 2  # 12 voxels: kept
    labels[0, 0, 9] = 2  # 1 voxel: removed
    labels[5, 9, 9] = 3  # not in label_values: untouched
    before = labels.copy()
    cleaned = keep_largest_component(labels, [1, 2])
    np.testing.assert_array_equal(labels, before)  # pure: the input is not modified
    assert cleaned.dtype == labels.dtype and cleaned.shape == labels.shape
    assert (cleaned == 1).sum() == 48 and (cleaned == 2).sum() == 12 and (cleaned == 3).sum() == 1
    assert cleaned[1, 7, 7] == 0 and cleaned[0, 0, 9] == 0
    np.testing.assert_array_equal(keep_largest_component(labels, []), labels)
    np.testing.assert_array_equal(keep_largest_component(np.zeros((2, 3, 4), np.uint16), [1]), np.zeros((2, 3, 4)))


def test_keep_largest_component_connectivity():
    labels = np.zeros((1, 6, 6), dtype=np.uint8)
    labels[0, 0, 0] = labels[0, 1, 1] = labels[0, 2, 2] = 1  # touching only at corners
    labels[0, 5, 4] = labels[0, 5, 5] = 1  # two face-connected voxels, apart from the others
    assert (keep_largest_component(labels, [1]) == 1).sum() == 2
    assert (keep_largest_component(labels, [1], fully_connected=True) == 1).sum() == 3
    with pytest.raises(ValueError, match="3D"):
        keep_largest_component(np.zeros((4, 4)), [1])


# --- the self-test's known-answer checkpoint ----------------------------------------------------------


def test_constant_checkpoint_zeroes_the_heads_and_keeps_everything_else(tmp_path, small_unetpp, small_unet_one_class):
    from safetensors.numpy import load_file

    from UNetSegmentationLib.panel.selftest_support import constant_checkpoint

    out = constant_checkpoint(small_unetpp, tmp_path / "const.safetensors", label_value=2)
    before, after = load_file(str(small_unetpp)), load_file(str(out))
    assert before.keys() == after.keys()
    heads = [k for k in after if k.startswith("heads.")]
    assert heads
    for key in after:
        if key in heads and key.endswith(".weight"):
            assert not after[key].any()
        elif key in heads and key.endswith(".bias"):
            np.testing.assert_array_equal(after[key], [0, 0, 30])  # background, lung, bone(=2)
        else:
            np.testing.assert_array_equal(after[key], before[key])
    assert checkpoint_header.read_metadata(out) == checkpoint_header.read_metadata(small_unetpp)
    one = constant_checkpoint(small_unet_one_class, tmp_path / "one.safetensors", label_value=1)
    np.testing.assert_array_equal(load_file(str(one))["head.bias"], [30])
    with pytest.raises(UserError, match="not one of the checkpoint's classes"):
        constant_checkpoint(small_unetpp, tmp_path / "x.safetensors", label_value=7)

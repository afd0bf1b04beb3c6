"""What a checkpoint may carry (issue 13, classes 3 and 9): every string taken from it is one a
``.seg.nrrd`` header can hold, so a class name cannot inject header fields; non-ASCII names work end
to end; weights that cannot be right (NaN, infinite, integer, boolean) and CT windows that cannot be
meant (degenerate, absurd) are refused when the checkpoint is loaded, before any work.

Checkpoints are made by ``unetseg create`` and then given hostile metadata or weights by rewriting
the safetensors file, as a hostile or careless file would arrive.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from support import assert_refused, create_checkpoint, leftovers, make_volume
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.segmentations import write_labels
from UNetSegmentationLib.model.header import read_safetensors_header
from UNetSegmentationLib.model.metadata import ClassInfo

RIB_TERMINOLOGY = {
    "contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
    "category": ["SCT", "123037004", "Anatomical Structure"],
    "type": ["SCT", "113197003", "Rib"],
    "anatomicContextName": "Anatomic codes - DICOM master list",
}
#: the reproduction of issue 13: with this name Slicer showed the left and right lungs swapped
INJECTED_NAME = "tissue\nSegment4_Name:=left lung\nSegment5_Name:=right lung"


def rewritten(source: Path, target: Path, metadata_change=None, weights_change=None) -> Path:
    """A copy of the checkpoint ``source`` at ``target`` with its metadata (parsed JSON) and weights
    (tensor dict) changed in place by the given functions, written as any safetensors file is."""
    from safetensors.torch import load_file, save_file

    metadata = json.loads(read_safetensors_header(source)["__metadata__"]["unetseg"])
    weights = load_file(str(source))
    if metadata_change:
        metadata_change(metadata)
    if weights_change:
        weights_change(weights)
    save_file(weights, str(target), metadata={"unetseg": json.dumps(metadata)})
    return target


@pytest.fixture(scope="module")
def two_class_unet(tmp_path_factory) -> Path:
    return create_checkpoint(tmp_path_factory.mktemp("trust") / "two.safetensors", arch="unet", classes="lung,bone", features="4,8")


def segment_fields(path: Path) -> dict:
    """The header fields of a .seg.nrrd as ITK's NRRD reader (Teem, which Slicer's reader uses) gives them."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys() if key.startswith("Segment")}


# --- class 3: strings from a checkpoint --------------------------------------------------------------------------


def set_first_class(**fields):
    def change(metadata):
        metadata["classes"][0].update(fields)
    return change


@pytest.mark.parametrize("name", [INJECTED_NAME, "lung\rSegment1_Name:=x", "lung\u2028x", "lung\x00", "right\u202etfel", "a\\b", "x" * 300])
def test_a_class_name_a_header_cannot_hold_is_refused_when_the_checkpoint_is_loaded(cli, two_class_unet, oblique_volume_path, tmp_path, name):
    """A line break (or any control character, line separator, bidi override, backslash, or a name
    too long for a header line) would change what another reader sees: refused before any work."""
    checkpoint = rewritten(two_class_unet, tmp_path / "hostile.safetensors", set_first_class(name=name))
    output = tmp_path / "out.seg.nrrd"
    result = cli("predict", "--checkpoint", checkpoint, "--progress", "none", oblique_volume_path, output)
    message = assert_refused(result, output, "class #1", "name")
    assert "\n" not in message.strip()
    assert cli("info", checkpoint).code == 2


@pytest.mark.parametrize("terminology, phrase", [
    ({**RIB_TERMINOLOGY, "contextName": "list\nSegment1_Name:=x"}, "control character"),
    ({**RIB_TERMINOLOGY, "type": ["SCT", "113197003", "Rib|Segmentation.Status:completed"]}, "separators"),
    ({**RIB_TERMINOLOGY, "type": ["SCT", "113197003~x", "Rib"]}, "separators"),
    ({"contextName": "x", "type": ["SCT", "1", "Rib"]}, "lacks 'category'"),
    ({**RIB_TERMINOLOGY, "category": ["SCT", "123037004"]}, "three parts"),
    ({**RIB_TERMINOLOGY, "colour": "red"}, "unknown field"),
    ("SCT^113197003^Rib", "must be an object"),
])
def test_terminology_a_header_cannot_hold_is_refused(cli, two_class_unet, tmp_path, terminology, phrase):
    checkpoint = rewritten(two_class_unet, tmp_path / "hostile.safetensors", set_first_class(terminology=terminology))
    result = cli("info", checkpoint)
    assert result.code == 2 and "terminology" in result.stderr and phrase in result.stderr, result.stderr


def test_the_injection_of_issue_13_never_reaches_a_segmentation(two_class_unet, tmp_path):
    """Even a caller that builds classes by hand (no checkpoint) cannot write the injected header:
    the writer refuses the value, names the final file and leaves nothing behind."""
    reference = make_volume(size=(8, 8, 4))
    labels = np.zeros((4, 8, 8), dtype=np.uint8)
    output = tmp_path / "out.seg.nrrd"
    with pytest.raises(UserError, match="control character") as refused:
        write_labels(labels, reference, tmp_path / "temporary.seg.nrrd", [ClassInfo(1, INJECTED_NAME, (1.0, 0.0, 0.0))], final_name=output)
    assert str(output) in str(refused.value) and "temporary" not in str(refused.value)
    assert not list(tmp_path.iterdir())


def test_a_non_ascii_class_name_works_end_to_end(cli, chest_ct_path, tmp_path):
    """``右肺`` from ``create`` through ``predict`` into the .seg.nrrd: the header holds it as UTF-8 on
    its own line (as Slicer writes it), ITK's reader (Slicer's) gives it back, slicerio reads the
    file (its NRRD reader, pynrrd, drops non-ASCII header bytes, so the name is checked through ITK)."""
    checkpoint = tmp_path / "右肺 model.safetensors"
    assert cli("create", "--arch", "unet", "--classes", "右肺,left lung", "--features", "4,8", checkpoint).code == 0
    output = tmp_path / "肺.seg.nrrd"
    result = cli("predict", "--checkpoint", checkpoint, "--progress", "json", chest_ct_path, output)
    assert result.code == 0, result.stderr
    assert [e for e in result.events if e["event"] == "start"][0]["classes"] == ["右肺", "left lung"]
    fields = segment_fields(output)
    assert (fields["Segment0_Name"], fields["Segment0_LabelValue"], fields["Segment1_Name"]) == ("右肺", "1", "left lung")
    header = output.read_bytes().split(b"\n\n", 1)[0].decode("utf-8")
    assert header.count("右肺") == 1 and "Segment0_Name:=右肺\n" in header + "\n"
    segmentation = slicerio.read_segmentation(str(output))
    assert [s["labelValue"] for s in segmentation["segments"]] == [1, 2]
    assert segmentation["voxels"].shape == sitk.ReadImage(str(chest_ct_path)).GetSize()
    info = cli("info", checkpoint)
    assert info.code == 0 and "右肺" in info.stdout
    assert not leftovers(tmp_path)


def test_training_keeps_non_ascii_segment_names_of_its_labels(tmp_path):
    """A Slicer segmentation with ``右肺`` as a segment name gives the class ``右肺`` to train (slicerio
    alone would read an empty name)."""
    from UNetSegmentationLib.io.labels import read_label

    reference = make_volume(size=(8, 8, 4))
    labels = np.zeros((4, 8, 8), dtype=np.uint8)
    labels[1:3, 2:5, 2:5] = 1
    labels[0, 6:, 6:] = 2
    path = tmp_path / "labels.seg.nrrd"
    write_labels(labels, reference, path, [ClassInfo(1, "右肺", (0.1, 0.8, 0.3), RIB_TERMINOLOGY), ClassInfo(2, "left lung", (0.8, 0.1, 0.4))])
    label = read_label(path, reference)
    assert [s.name for s in label.segments] == ["右肺", "left lung"]
    assert label.segments[0].terminology == RIB_TERMINOLOGY


def test_colours_label_values_and_terminology_come_back_exactly(tmp_path):
    reference = make_volume(size=(8, 8, 4))
    labels = np.zeros((4, 8, 8), dtype=np.uint8)
    labels[1, 1:3, 1:4] = 7
    classes = [ClassInfo(7, "ribs", (0.992157, 0.909804, 0.619608), RIB_TERMINOLOGY), ClassInfo(300, "rest: a=b", (0.0, 0.5, 1.0))]
    path = tmp_path / "out.seg.nrrd"
    write_labels(labels, reference, path, classes)
    segments = slicerio.read_segmentation(str(path))["segments"]
    assert [(s["name"], s["labelValue"], s["color"]) for s in segments] == [(c.name, c.value, list(c.color)) for c in classes]
    assert segments[0]["terminology"] == RIB_TERMINOLOGY and segments[0]["extent"] == [1, 3, 1, 2, 1, 1]


# --- class 9: weights and windows that cannot be right -------------------------------------------------------------


def first_weight(weights) -> str:
    return next(k for k, v in weights.items() if v.is_floating_point() and v.dim() == 4)


def nan_weight(weights):
    weights[first_weight(weights)][0, 0, 0, 0] = float("nan")


def infinite_weight(weights):
    weights[first_weight(weights)][0, 0, 0, 0] = float("-inf")


def integer_weights(weights):
    key = first_weight(weights)
    weights[key] = (weights[key] * 100).round().int()


def boolean_weights(weights):
    key = first_weight(weights)
    weights[key] = weights[key] > 0


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("change, phrase", [(nan_weight, "NaN or infinite weights"), (infinite_weight, "NaN or infinite weights"),
                                            (integer_weights, "not floating-point (int32)"), (boolean_weights, "not floating-point (bool)")])
def test_weights_that_cannot_be_right_are_refused_at_load(cli, two_class_unet, oblique_volume_path, tmp_path, backend, change, phrase):
    """Issue 13: NaN weights exited 0 with an empty result (the export check's max() dropped the NaN);
    integer and boolean weights were cast silently. Refused on either backend, before any work."""
    checkpoint = rewritten(two_class_unet, tmp_path / "bad.safetensors", weights_change=change)
    output = tmp_path / "out.nrrd"
    result = cli("predict", "--checkpoint", checkpoint, "--backend", backend, "--precision", "fp32", "--progress", "none", oblique_volume_path, output)
    assert_refused(result, output, *phrase.split(" ("), str(checkpoint))
    assert not list(tmp_path.glob("*.onnx"))


def test_batchnorm_counters_may_stay_integers(two_class_unet):
    """``num_batches_tracked`` is an integer in every PyTorch checkpoint: not a weight."""
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(two_class_unet)
    assert any(k.endswith("num_batches_tracked") and not v.is_floating_point() for k, v in checkpoint.state_dict.items())


@pytest.mark.parametrize("window", [[0, 1e-300], [0.0, 0.5], [-1e30, 1e30], [-1000, 2e5]])
def test_a_degenerate_or_absurd_ct_window_is_refused(cli, two_class_unet, tmp_path, window):
    def change(metadata):
        metadata["normalization"] = {"kind": "ct", "window": window}

    checkpoint = rewritten(two_class_unet, tmp_path / "window.safetensors", change)
    result = cli("info", checkpoint)
    assert result.code == 2 and "cannot be a CT window" in result.stderr, result.stderr
    created = cli("create", "--arch", "unet", "--classes", "a", "--norm", f"ct:{window[0]},{window[1]}", tmp_path / "new.safetensors")
    assert created.code == 2 and "cannot be a CT window" in created.stderr and not (tmp_path / "new.safetensors").exists()


@pytest.mark.parametrize("window", [[-1000, 1000], [-160, 240], [-1024, 3071], [0, 1]])
def test_real_ct_windows_are_accepted(cli, tmp_path, window):
    assert cli("create", "--arch", "unet", "--classes", "a", "--features", "4,8", "--norm", f"ct:{window[0]},{window[1]}", tmp_path / "m.safetensors").code == 0


def test_info_shows_a_hostile_training_record_without_control_characters(cli, two_class_unet, tmp_path):
    """``info`` prints what the checkpoint says about its training data; a record of any shape is
    printed or skipped, never a traceback, and no terminal control sequence reaches the screen."""
    def change(metadata):
        metadata["training"] = {"config": {"axis": None}, "data": {
            "training": [{"case": "\x1b[2Jct", "image": 5, "slice_axis": "q", "train_slices": "many"}, "not a case", {"case": "b", "slice_axis": "j"}],
            "validation": {"not": "a list"},
            "held_out_slices": [{"case": "\x1b[2Jct", "slices": [3, 4, "x"]}, {"case": "b", "slices": [9, 1, 2]}],
        }}

    checkpoint = rewritten(two_class_unet, tmp_path / "record.safetensors", change)
    result = cli("info", checkpoint)
    assert result.code == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert "training   5 (case '?[2Jct'): slice axis not recorded (auto); slices trained, held out (unreadable)" in result.stdout
    assert "training   None (case 'b'): along j (auto); slices trained, held out 1-2, 9" in result.stdout

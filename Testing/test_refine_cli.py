"""``unetseg refine --checkpoint CKPT --clicks CLICKS.json INPUT [INITIAL] OUTPUT`` on the real slicerio
chest CT with an interactive checkpoint (untrained: the command's contract, not the network's skill):
the object written on the input's grid (a binary mask, or INITIAL with the one segment replaced and
every other segment unchanged), the clicks applied in order exactly as a session applies them, the
``done`` event listing each click's latency; every bad input one message, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from refine_support import left_lung, write_tiny_interactive_checkpoint
from support import assert_refused, leftovers
from UNetSegmentationLib.interactive.click_points import read_clicks_file
from UNetSegmentationLib.interactive.predictor import InteractiveModel
from UNetSegmentationLib.interactive.refined_output import InitialObject, refined_labels
from UNetSegmentationLib.interactive.session import RefineSession, read_session_input
from UNetSegmentationLib.io.labels import LabelVolume, read_label
from UNetSegmentationLib.io.volumes import ijk_to_lps
from UNetSegmentationLib.protocol.events import check_event

CLICKS = [{"ijk": [40, 64, 17], "positive": True}, {"ijk": [38, 70, 17], "positive": False}, {"ijk": [[30, 60, 20], [40, 60, 20]], "positive": True}]


@pytest.fixture(scope="module")
def interactive(tmp_path_factory):
    return write_tiny_interactive_checkpoint(tmp_path_factory.mktemp("ckpt") / "interactive.safetensors")


def clicks_file(folder, clicks=CLICKS, name="clicks.json"):
    path = folder / name
    path.write_text(json.dumps(clicks) if not isinstance(clicks, str) else clicks)
    return path


def test_refine_from_nothing_writes_the_mask_a_session_gives_and_lists_each_clicks_latency(cli, chest_ct_path, interactive, tmp_path):
    output = tmp_path / "object.nrrd"
    result = cli("refine", "--checkpoint", interactive, "--clicks", clicks_file(tmp_path), chest_ct_path, output, "--progress", "json")
    assert result.code == 0, result.stderr
    events = result.events
    assert all(check_event(e) == [] for e in events[:1]) and events[0]["command"] == "refine" and events[0]["unit"] == "click"
    assert not [p for e in events for p in check_event(e, "refine")]
    done = events[-1]
    assert done["event"] == "done" and done["clicks"] == 3 and len(done["click_latency_ms"]) == 3 and len(done["propagate_ms"]) == 3
    written = sitk.ReadImage(str(output))
    image = read_session_input(chest_ct_path)
    assert written.GetSize() == image.GetSize() and np.allclose(ijk_to_lps(written), ijk_to_lps(image))
    session = RefineSession.open(image, InteractiveModel.load(interactive))  # the same clicks, applied as a session applies them
    for click in read_clicks_file(tmp_path / "clicks.json"):
        session.add(click)
        session.propagate()
    assert np.array_equal(sitk.GetArrayViewFromImage(written) == 1, session.mask)
    assert done["object_voxels"] == int(session.mask.sum())


def test_refining_a_segment_replaces_only_it_and_leaves_the_other_segments(cli, chest_ct_path, chest_segmentation_path, interactive, tmp_path):
    output = tmp_path / "refined.seg.nrrd"
    clicks = clicks_file(tmp_path, [{"lps": (ijk_to_lps(sitk.ReadImage(str(chest_ct_path))) @ [40, 64, 17, 1])[:3].tolist(), "positive": False}])
    result = cli("refine", "--checkpoint", interactive, "--clicks", clicks, "--segment", "left lung", "--no-propagate",
                 chest_ct_path, chest_segmentation_path, output, "--progress", "none")
    assert result.code == 0, result.stderr
    image = sitk.ReadImage(str(chest_ct_path))
    before, after = read_label(chest_segmentation_path, image), read_label(output, image)
    assert [s.name for s in after.segments] == [s.name for s in before.segments]
    (lung,) = [s.value for s in before.segments if s.name == "left lung"]
    others = (before.array != lung) & (before.array != 0)
    assert np.array_equal(after.array[others], before.array[others])  # every other segment unchanged
    untouched = np.ones(34, dtype=bool)
    untouched[17] = False  # --no-propagate: only the clicked slice may change
    assert np.array_equal(after.array[untouched], before.array[untouched])
    assert np.array_equal(after.array == lung, (before.array == lung) & (after.array == lung) | ((after.array == lung) & (before.array == 0)))
    assert left_lung(chest_segmentation_path, chest_ct_path).sum() > 0


@pytest.mark.parametrize("clicks, phrases", [
    ([{"ijk": [200, 10, 5]}], ["lies outside the volume"]),
    ([{"lps": [0, 0, 5000], "positive": True}], ["lies outside the volume"]),
    ("[{\"ijk\": [1, 2", ["not JSON"]),
    ([], ["empty"]),
    ([{"ijk": [1, 2, 3], "positive": "yes"}], ["positive", "true or false"]),
    ([{"ijk": [1, 2]}], ["three numbers"]),
    ([{"xyz": [1, 2, 3]}], ["unknown field"]),
    ({"click": 1}, ["list of clicks"]),
])
def test_a_bad_click_or_clicks_file_is_one_message_and_nothing_written(cli, chest_ct_path, interactive, tmp_path, clicks, phrases):
    output = tmp_path / "out" / "object.nrrd"
    output.parent.mkdir()
    result = cli("refine", "--checkpoint", interactive, "--clicks", clicks_file(tmp_path, clicks), chest_ct_path, output)
    assert_refused(result, output, *phrases)


def test_bad_inputs_are_refused_in_one_message_before_any_work(cli, chest_ct_path, chest_segmentation_path, interactive, small_unet_one_class, tmp_path):
    clicks = clicks_file(tmp_path)
    output = tmp_path / "out" / "object.seg.nrrd"
    output.parent.mkdir()
    assert_refused(cli("refine", "--checkpoint", interactive, "--clicks", clicks, chest_ct_path, chest_segmentation_path, output), output, "--segment", "7 segments")
    assert_refused(cli("refine", "--checkpoint", interactive, "--clicks", clicks, "--segment", "liver", chest_ct_path, chest_segmentation_path, output), output, "no segment 'liver'")
    assert_refused(cli("refine", "--checkpoint", interactive, "--clicks", clicks, "--segment", "ribs", chest_ct_path, output), output, "give INITIAL")
    assert_refused(cli("refine", "--checkpoint", small_unet_one_class, "--clicks", clicks, chest_ct_path, output), output, "not an interactive model")
    assert_refused(cli("refine", "--checkpoint", interactive, "--clicks", tmp_path / "none.json", chest_ct_path, output), output, "no such clicks file")
    assert_refused(cli("refine", "--checkpoint", tmp_path / "none.safetensors", "--clicks", clicks, chest_ct_path, output), output, "interactive checkpoint not found")
    assert_refused(cli("refine", "--checkpoint", interactive, "--clicks", clicks, chest_ct_path, chest_ct_path), chest_ct_path.parent / "never", "input or checkpoint")
    empty = tmp_path / "empty.nrrd"
    empty.write_bytes(b"")
    assert_refused(cli("refine", "--checkpoint", interactive, "--clicks", clicks, empty, output), output)
    existing = tmp_path / "out" / "exists.nrrd"
    existing.write_bytes(b"keep")
    result = cli("refine", "--checkpoint", interactive, "--clicks", clicks, chest_ct_path, existing)
    assert result.code == 2 and existing.read_bytes() == b"keep" and leftovers(existing.parent) == []


def test_an_empty_label_map_as_initial_starts_the_object_empty_as_label_one(cli, chest_ct_path, interactive, tmp_path):
    """The Slicer effect passes the selected segment as a 0/1 label map; an empty segment is an empty map."""
    image = sitk.ReadImage(str(chest_ct_path))
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    initial, output = tmp_path / "empty.nrrd", tmp_path / "object.nrrd"
    sitk.WriteImage(empty, str(initial))
    result = cli("refine", "--checkpoint", interactive, "--clicks", clicks_file(tmp_path), "--no-propagate", chest_ct_path, initial, output)
    assert result.code == 0, result.stderr
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    assert set(np.unique(written)) <= {0, 1} and not written[[k for k in range(34) if k not in (17, 20)]].any()


def test_an_empty_label_above_every_value_held_is_written_in_a_type_that_holds_it():
    """``--segment 300`` of a uint8 label map holding only 5: the object is written as 300, not wrapped or refused."""
    initial = InitialObject(LabelVolume(Path("initial.nrrd"), np.array([[[0, 5]]], np.uint8)), 300, "label 300")
    array, classes = refined_labels(np.array([[[True, False]]]), initial)
    assert array.tolist() == [[[300, 5]]] and [c.value for c in classes] == [5, 300]

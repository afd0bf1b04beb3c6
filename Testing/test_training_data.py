"""Training data as a specification: which cases, which slices, and bad data stopping before any training.

- Datalists (MONAI decathlon style), folders paired by name, one image/label pair.
- Held-out slices are contiguous blocks with a gap, so no training input shows a held-out slice.
- Missing files, grids that differ, label values or segments outside the class list, and malformed
  datalists stop with one clear message (``unetseg: error: ...``) and write nothing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from support import make_volume
from support import write_tiny_case

FAST = ("--threads", "1", "--progress", "none", "--device", "cpu")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A synthetic CT-like volume and its label map ('body' 1, 'bone' 2), with a datalist."""
    return write_tiny_case(tmp_path_factory.mktemp("tiny"))


# --- held-out slices ---------------------------------------------------------------------------------------


def test_held_out_slices_are_contiguous_blocks_with_a_gap():
    from UNetSegmentationLib.training.volumes import held_out_blocks

    train, val = held_out_blocks(34, 0.2, blocks=3, gap=1)
    assert len(val) == 7 and not set(train) & set(val)
    runs = np.split(val, np.flatnonzero(np.diff(val) > 1) + 1)
    assert len(runs) == 3 and val.min() > 0 and val.max() < 33  # spread along the volume
    for run in runs:  # the neighbours of a block are in neither set
        assert run[0] - 1 not in train and run[-1] + 1 not in train
    train, val = held_out_blocks(10, 0.3, blocks=1, gap=0)
    assert list(val) == [3, 4, 5] and len(train) == 7


# --- bad data stops before training -----------------------------------------------------------------------------


def write_datalist(folder, items, extra=None):
    path = folder / "list.json"
    path.write_text(json.dumps({"training": items, **(extra or {})}))
    return path


def bad_train(cli, datalist, out, *extra):
    return cli("train", "--datalist", datalist, "--features", "4,8", "--epochs", "1", "--steps-per-epoch", "1", *FAST, *extra, out)


def assert_stopped(result, out, *words):
    assert result.code == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("unetseg: error:") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in line, line
    assert not out.exists()


def test_missing_files_stop_with_the_case_and_path(cli, tiny_data, tmp_path):
    datalist = write_datalist(tmp_path, [{"image": str(tiny_data / "case.nrrd"), "label": str(tiny_data / "case_label.nrrd")},
                                          {"image": "nowhere.nrrd", "label": str(tiny_data / "case_label.nrrd")}])
    out = tmp_path / "m.safetensors"
    assert_stopped(bad_train(cli, datalist, out, "--classes", "body,bone"), out, "image of case 'nowhere' not found", "nowhere.nrrd")


def test_image_and_label_of_different_geometry_stop(cli, tiny_data, tmp_path):
    other = make_volume(size=(40, 36, 10))
    sitk.WriteImage(sitk.Cast(other > 0, sitk.sitkUInt8), str(tmp_path / "short_label.nrrd"))
    datalist = write_datalist(tmp_path, [{"image": str(tiny_data / "case.nrrd"), "label": "short_label.nrrd"}])
    out = tmp_path / "m.safetensors"
    assert_stopped(bad_train(cli, datalist, out, "--classes", "body"), out, "different geometry", "40x36x10", "40x36x12")
    shifted = make_volume(origin=(0.0, 0.0, 0.0))
    sitk.WriteImage(sitk.Cast(shifted > 0, sitk.sitkUInt8), str(tmp_path / "shifted_label.nrrd"))
    datalist = write_datalist(tmp_path, [{"image": str(tiny_data / "case.nrrd"), "label": "shifted_label.nrrd"}])
    assert_stopped(bad_train(cli, datalist, out, "--classes", "body"), out, "different geometry", "origin")


def test_label_values_outside_the_class_list_stop(cli, tiny_data, tmp_path):
    datalist = write_datalist(tmp_path, [{"image": str(tiny_data / "case.nrrd"), "label": str(tiny_data / "case_label.nrrd")}])
    out = tmp_path / "m.safetensors"
    assert_stopped(bad_train(cli, datalist, out, "--classes", "body"), out, "outside the class list", "2", "1=body")


def test_segments_outside_the_class_list_stop(cli, chest_ct_path, chest_segmentation_path, tmp_path):
    datalist = write_datalist(tmp_path, [{"image": str(chest_ct_path), "label": str(chest_segmentation_path)}])
    out = tmp_path / "m.safetensors"
    assert_stopped(bad_train(cli, datalist, out, "--classes", "right lung,left lung"), out, "outside the class list", "ribs", "--other-labels background")


def test_malformed_datalists_stop(cli, tmp_path):
    out = tmp_path / "m.safetensors"
    (tmp_path / "broken.json").write_text("{not json")
    assert_stopped(bad_train(cli, tmp_path / "broken.json", out), out, "not valid JSON")
    no_training = write_datalist(tmp_path, [])
    no_training.write_text(json.dumps({"validation": []}))
    assert_stopped(bad_train(cli, no_training, out), out, "no 'training' list")
    no_label = write_datalist(tmp_path, [{"image": "a.nrrd"}])
    assert_stopped(bad_train(cli, no_label, out), out, "needs an 'image' and a 'label'")


def test_folders_are_paired_by_name(tiny_data, tmp_path):
    from UNetSegmentationLib.errors import UserError
    from UNetSegmentationLib.training.cases import cases_from_folders

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for name in ("ct01", "ct02"):
        (images / f"{name}.nrrd").write_bytes((tiny_data / "case.nrrd").read_bytes())
    (labels / "ct01.seg.nrrd").write_bytes(b"x")
    (labels / "ct02_label.nrrd").write_bytes(b"x")
    cases = cases_from_folders(images, labels)
    assert [(c.name, c.label.name) for c in cases] == [("ct01", "ct01.seg.nrrd"), ("ct02", "ct02_label.nrrd")]
    (images / "ct03.nii.gz").write_bytes(b"x")
    with pytest.raises(UserError, match="no label .* ct03.nii.gz"):
        cases_from_folders(images, labels)

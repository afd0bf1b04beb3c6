"""The model card's montage of a training volume with its labels (issue 24, item 5):
``Resources/Tools/render_label_montage.py`` on the real slicerio chest CT and its segmentation.

Radiological orientation: the patient's right on the left of an axial slice, anterior at its top;
superior at the top of the coronal slice. Each PNG small enough for docs/ (< 300 KB), written whole."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent


def montage_tool():
    spec = importlib.util.spec_from_file_location("render_label_montage", ROOT / "Resources" / "Tools" / "render_label_montage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def chest_case(tmp_path_factory, chest_ct_path, chest_segmentation_path) -> Path:
    """The chest CT and its segmentation as a label map (values of the segments), in a datalist with its class table."""
    from UNetSegmentationLib.io.labels import load_case
    from UNetSegmentationLib.training.cases import Case

    folder = tmp_path_factory.mktemp("montage")
    loaded = load_case(Case("ct", chest_ct_path, chest_segmentation_path))
    ct = sitk.ReadImage(str(chest_ct_path))
    label = sitk.GetImageFromArray(loaded.label.array.astype(np.uint8))
    label.CopyInformation(ct)
    sitk.WriteImage(ct, str(folder / "ct.nii.gz"))
    sitk.WriteImage(label, str(folder / "ct-label.nii.gz"))
    classes = [{"value": s.value, "name": s.name, "color": [0.2, 0.8, 0.3] if "right" in s.name else [0.8, 0.2, 0.4]} for s in loaded.label.segments]
    (folder / "classes.json").write_text(json.dumps(classes))
    (folder / "datalist.json").write_text(json.dumps({"training": [{"name": "ct", "image": "ct.nii.gz", "label": "ct-label.nii.gz", "patient": "slicerio"}]}))
    return folder


def test_axial_slices_show_the_patients_right_on_the_left_and_coronal_ones_superior_at_the_top(chest_case):
    tool = montage_tool()
    volume, _ = tool.oriented(chest_case / "ct.nii.gz")
    labels, _ = tool.oriented(chest_case / "ct-label.nii.gz")
    classes = {c["name"]: c["value"] for c in json.loads((chest_case / "classes.json").read_text())}
    shown = tool.panels(volume, labels, 4)
    assert [kind for *_, kind in shown] == ["axial"] * 4 + ["coronal"]
    _, _, axial, _ = shown[2]
    right, left = (np.argwhere(axial == classes[name])[:, 1].mean() for name in ("right lung", "left lung"))
    assert right < left  # radiological: the patient's right lung on the viewer's left
    image = sitk.DICOMOrient(sitk.ReadImage(str(chest_case / "ct.nii.gz")), "LPS")
    _, _, coronal, _ = shown[-1]
    assert coronal.shape[0] == labels.shape[0]
    assert image.TransformIndexToPhysicalPoint((0, 0, labels.shape[0] - 1))[2] > image.TransformIndexToPhysicalPoint((0, 0, 0))[2]
    row = int(shown[-1][0].split()[1].split("/")[0]) - 1  # "coronal ROW/ROWS"
    assert np.array_equal(coronal[0], labels[-1, row])  # its top row: the last slice, the most superior


def test_the_montage_is_one_small_png_per_volume_written_through_the_output_gate(chest_case, tmp_path, capsys):
    tool = montage_tool()
    output = tmp_path / "montage"
    assert tool.main(["--datalist", str(chest_case / "datalist.json"), "--output-dir", str(output)]) == 0
    picture = output / "ct.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size < 300_000
    assert sorted(p.name for p in output.iterdir()) == ["ct.png"]  # nothing temporary left
    before = picture.read_bytes()
    assert tool.main(["--datalist", str(chest_case / "datalist.json"), "--output-dir", str(output)]) == 2
    assert picture.read_bytes() == before and "overwrite" in capsys.readouterr().err

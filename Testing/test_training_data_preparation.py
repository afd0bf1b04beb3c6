"""The training data of the many-organ CT model (issue 24): ``Resources/Tools/prepare_training_data.py``
and its rules, ``Resources/Tools/training_data_scheme.py``.

Specified here on small synthetic inputs (no network, nothing outside the repository): the class table,
how TotalSegmentator's structures and Slicer's segments become our classes, which classes a volume's
labels cover (the others are unknown there, not background), the derived body class, which volumes
are one patient, and the datalist. The slow test prepares the real slicerio chest CT of the installed
package. The full run (it downloads two distributions) is ``python Resources/Tools/prepare_training_data.py
--output DIR``; ``docs/training-data.md`` is its data card.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parent.parent / "Resources" / "Tools"
sys.path.insert(0, str(TOOLS))

import prepare_training_data as prepare  # noqa: E402
import training_data_scheme as scheme  # noqa: E402

BUNDLED = Path(__file__).resolve().parent / "Data" / "chest-ct-unetplusplus.safetensors"


def test_the_class_table_is_one_a_checkpoint_can_carry_and_keeps_the_bundled_models_first_six_classes():
    from UNetSegmentationLib.model.header import read_metadata
    from UNetSegmentationLib.model.metadata import ModelMetadata

    table = [c.to_json() for c in scheme.CLASSES]
    assert len(table) >= 12 and [c["value"] for c in table] == list(range(1, len(table) + 1))
    assert len({c["name"] for c in table}) == len(table)
    metadata = ModelMetadata.from_json({"format_version": 1, "context": 1,
                                        "architecture": {"name": "unetplusplus", "kwargs": {"in_channels": 3, "out_channels": len(table) + 1}},
                                        "normalization": {"kind": "ct", "window": [-1000, 1000]}, "classes": table}, "classes.json")
    assert [c.name for c in metadata.classes] == [c.name for c in scheme.CLASSES]
    bundled = read_metadata(BUNDLED).classes[:6]
    assert [(c.value, c.name, c.terminology) for c in bundled] == [(c.value, c.name, c.terminology) for c in scheme.CLASSES[:6]]
    codes = {c.name: (c.terminology["type"][1], c.terminology.get("typeModifier", [None, None])[1]) for c in scheme.CLASSES}
    assert codes["liver"] == ("10200004", None) and codes["left kidney"] == ("64033007", "7771000") and codes["right kidney"] == ("64033007", "24028007")


@pytest.mark.parametrize("name, ours", [
    ("rib_left_3", "ribs"), ("rib_right_12", "ribs"), ("vertebrae_C7", "cervical vertebral column"),
    ("vertebrae_T1", "thoracic vertebral column"), ("vertebrae_T12", "thoracic vertebral column"),
    ("vertebrae_L5", "lumbar vertebral column"), ("vertebrae_S1", None), ("sacrum", None),
    ("lung_middle_lobe_right", "right lung"), ("lung_upper_lobe_left", "left lung"), ("kidney_right", "right kidney"),
    ("kidney_cyst_left", "left kidney"), ("atrial_appendage_left", "heart"), ("aorta", "aorta"), ("stomach", "stomach"),
    ("sternum", None), ("costal_cartilages", None), ("colon", None), ("pulmonary_vein", None), ("vertebrae_T1x", None),
])
def test_totalsegmentator_structures_map_to_our_classes_by_name(name, ours):
    assert scheme.totalsegmentator_class(name) == ours


def test_a_source_label_map_becomes_ours_and_a_value_its_table_does_not_name_stops_the_run():
    source = {1: "spleen", 10: "lung_upper_lobe_left", 32: "vertebrae_T12", 20: "colon"}
    labels = np.array([[0, 1, 10], [32, 20, 1]], dtype=np.uint8)
    value = {c.name: c.value for c in scheme.CLASSES}
    assert scheme.remap_labels(labels, source).tolist() == [[0, value["spleen"], value["left lung"]], [value["thoracic vertebral column"], 0, value["spleen"]]]
    with pytest.raises(ValueError, match=r"\[7\]"):
        scheme.remap_labels(np.array([7, 1]), source)


def test_labelled_classes_are_those_the_source_was_asked_for_present_or_not():
    # a full TotalSegmentator run covers the kidneys even where the scan holds none; the aorta report only the aorta
    total = ["spleen", "kidney_right", "kidney_left", "liver", "heart", "colon", "rib_left_1", "vertebrae_C1", "vertebrae_T5", "vertebrae_L1"]
    assert scheme.covered_classes(total) == ["ribs", "cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column",
                                             "liver", "spleen", "right kidney", "left kidney", "heart"]
    assert scheme.covered_classes(["aorta"]) == ["aorta"]
    assert scheme.covered_classes(["vertebrae_S1", "sacrum"]) == []
    assert scheme.covered_classes(["ribs", "tissue"], scheme.SLICER_SEGMENTS.get) == ["ribs"]
    aorta = np.zeros((2, 3, 3), np.uint8)
    aorta[0, 1, 1] = scheme.CLASS_BY_NAME["aorta"].value
    scheme.check_labelled(aorta, ["aorta", "heart"], "cta")  # heart labelled and absent: fine
    aorta[1, 0, 0] = scheme.CLASS_BY_NAME["liver"].value
    with pytest.raises(ValueError, match="liver"):
        scheme.check_labelled(aorta, ["aorta"], "cta")


def test_masks_combine_into_one_label_map_the_later_class_winning_where_they_overlap():
    heart = np.zeros((1, 4, 4), bool)
    heart[0, :2, :2] = True
    aorta = np.zeros((1, 4, 4), bool)
    aorta[0, 1:3, 1:3] = True
    labels, overlaps = scheme.combine_masks(heart.shape, [("heart", heart), ("aorta", aorta)])
    assert overlaps == {"heart/aorta": 1}
    assert scheme.voxel_counts(labels) == {"aorta": 4, "heart": 3}


def test_body_is_the_outline_without_the_table_holes_filled_and_never_overrides_a_class():
    image = np.full((3, 40, 40), -1000, np.int16)
    rows, columns = np.ogrid[:40, :40]
    image[:, ((rows - 17) / 12.0) ** 2 + ((columns - 20) / 15.0) ** 2 <= 1] = 40  # the body
    image[:, 14:20, 12:18] = -850  # air inside (a lung)
    image[:, 34:36, 2:38] = 100  # the table, 3 rows below the body
    labels = np.zeros(image.shape, np.uint8)
    labels[:, 16:19, 22:26] = scheme.CLASS_BY_NAME["liver"].value
    out = scheme.add_body(labels, image)
    body = scheme.CLASS_BY_NAME["body"].value
    assert (out[:, 16:19, 22:26] == scheme.CLASS_BY_NAME["liver"].value).all()
    assert (out[:, 15:19, 13:17] == body).all(), "air enclosed by the body is body"
    assert not (out[:, 34:36] == body).any(), "the table is not body"
    assert (out[:, :3] == 0).all() and (out[:, 17, 20] == body).all()


def test_a_volume_that_is_a_block_of_another_is_found_even_where_its_header_says_otherwise():
    rng = np.random.default_rng(0)
    big = rng.integers(-1000, 1500, size=(20, 8, 9)).astype(np.int32)
    small = big[12:17, 1:7, :].astype(np.int16)
    assert scheme.find_sub_block(big, small, candidates=[(0, 1, 0)]) == (12, 1, 0)  # the header's offset is wrong
    resampled = small + rng.integers(-1, 2, size=small.shape)  # a crop that went through one more resampling
    assert scheme.find_sub_block(big, resampled, tolerance=0) is None
    assert scheme.find_sub_block(big, resampled, tolerance=2.0) == (12, 1, 0)
    assert scheme.find_sub_block(small, big) is None


def test_patients_are_merged_by_shared_voxels_and_kept_apart_otherwise():
    rng = np.random.default_rng(1)
    full = rng.integers(-1000, 1500, size=(12, 6, 6))
    volumes = [
        scheme.VolumeFacts("full", full, (3.0, 3.0, 3.0), "patient-b"),
        scheme.VolumeFacts("part", full[4:9], (3.0, 3.0, 3.0), "patient-a"),
        scheme.VolumeFacts("other", rng.integers(-1000, 1500, size=(5, 6, 6)), (3.0, 3.0, 3.0), "patient-c"),
        scheme.VolumeFacts("fine", rng.integers(-1000, 1500, size=(5, 6, 6)), (1.5, 1.5, 1.5), "patient-d"),
    ]
    patients, evidence = scheme.group_patients(volumes)
    assert patients == {"full": "patient-a", "part": "patient-a", "other": "patient-c", "fine": "patient-d"}
    findings = {tuple(e["cases"]): e["finding"] for e in evidence}
    assert findings[("full", "part")].startswith("part is the block of full at offset [4, 0, 0]")
    assert findings[("full", "other")] == "no shared voxel data"
    assert findings[("full", "fine")].startswith("not comparable")


def test_the_datalist_records_patient_labelled_classes_and_leave_one_patient_out_folds_and_the_engine_reads_it(tmp_path):
    from UNetSegmentationLib.training.cases import cases_from_datalist

    records = [
        scheme.CaseRecord("chest", "images/chest.nii.gz", "labels/chest.nii.gz", "p1", ("left lung", "ribs")),
        scheme.CaseRecord("abdomen", "images/abdomen.nii.gz", "labels/abdomen.nii.gz", "p2", ("liver",)),
        scheme.CaseRecord("abdomen_full", "images/abdomen_full.nii.gz", "labels/abdomen_full.nii.gz", "p2", ("lumbar vertebral column",)),
    ]
    datalist = scheme.build_datalist(records, "test")
    assert [(c["name"], c["patient"], c["fold"]) for c in datalist["training"]] == [("chest", "p1", 0), ("abdomen", "p2", 1), ("abdomen_full", "p2", 1)]
    assert datalist["training"][0]["labelled_classes"] == ["ribs", "left lung"], "in label-value order"
    assert datalist["leave_one_patient_out"] == [
        {"fold": 0, "held_out_patient": "p1", "training": ["abdomen", "abdomen_full"], "validation": ["chest"]},
        {"fold": 1, "held_out_patient": "p2", "training": ["chest"], "validation": ["abdomen", "abdomen_full"]},
    ]
    assert datalist["labels"]["14"] == "body"
    for record in records:
        for relative in (record.image, record.label):
            (tmp_path / relative).parent.mkdir(exist_ok=True)
            (tmp_path / relative).write_bytes(b"")
    scheme.write_json(tmp_path / "datalist.json", datalist)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    cases = cases_from_datalist(tmp_path / "datalist.json")
    assert [(c.name, c.image) for c in cases] == [(r.name, tmp_path / r.image) for r in records]
    with pytest.raises(ValueError, match="spleens"):
        scheme.build_datalist([scheme.CaseRecord("x", "x", "y", "p", ("spleens",))], "test")


def test_an_existing_output_folder_is_never_replaced_unless_this_tool_wrote_it(tmp_path, capsys):
    mine = tmp_path / "data"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    assert prepare.main(["--output", str(mine), "--cache", str(tmp_path / "cache"), "--offline"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert prepare.main(["--output", str(mine), "--cache", str(tmp_path / "cache"), "--offline", "--overwrite"]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "the user's" and not (tmp_path / "cache").exists()
    assert prepare.main(["--output", str(tmp_path / "new"), "--cache", str(tmp_path / "cache"), "--offline"]) == 2
    assert "--offline" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_left_out_files_are_listed_with_why_and_a_folder_of_one_reason_is_one_line():
    names = [prepare.REFERENCE + n for n in ("example_ct.nii.gz", "example_seg_dicom.nii.gz", "example_mr_sm.nii.gz", "README.md")]
    names += [prepare.REFERENCE + f"example_ct_dicom/CT.{i}" for i in range(5)]
    names += [prepare.REFERENCE + f"example_seg_fast/{n}.nii.gz" for n in ("liver", "spleen", "aorta", "heart")]
    listed = {e["file"]: e["why"] for e in prepare.left_out(names, [prepare.REFERENCE + "example_ct.nii.gz"])}
    assert set(listed) == {"example_ct_dicom/ (5 files)", "example_seg_dicom.nii.gz", "example_mr_sm.nii.gz", "example_seg_fast/ (4 files)"}
    assert listed["example_ct_dicom/ (5 files)"].startswith("test only") and listed["example_mr_sm.nii.gz"] == "MR, not CT"


@pytest.mark.slow
def test_the_slicerio_chest_ct_is_prepared_with_its_six_classes_and_its_tissue_left_unknown(tmp_path, chest_segmentation_path):
    import slicerio
    import SimpleITK as sitk

    files = prepare.slicerio_files(None)  # the installed package's data, checked against the pinned SHA-256
    ct = prepare.read_image(files["CTChest4.nrrd"], ".nrrd", tmp_path)
    labels, labelled = prepare.slicer_labels(files["Segmentation.seg.nrrd"], ct, tmp_path)
    assert labelled == ["ribs", "cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column", "right lung", "left lung"]
    original = slicerio.read_segmentation(str(chest_segmentation_path))
    voxels = np.asarray(original["voxels"]).transpose(2, 1, 0)
    by_name = {s["name"]: s["labelValue"] for s in original["segments"]}
    counts = scheme.voxel_counts(labels)
    assert counts == {name: int((voxels == by_name[name]).sum()) for name in labelled}
    assert (labels[voxels == by_name["tissue"]] == 0).all(), "tissue holds organs that are classes here: unknown, not body"
    scheme.check_labelled(labels, labelled, "ctchest4")
    written = prepare.write_volume(ct, tmp_path / "ctchest4.nii.gz")
    prepare.write_volume(ct, tmp_path / "ctchest4_labels.nii.gz", labels)
    image, label = sitk.ReadImage(str(tmp_path / "ctchest4.nii.gz")), sitk.ReadImage(str(tmp_path / "ctchest4_labels.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8 and len(written) > 0
    assert prepare.same_grid(image, ct) and prepare.same_grid(label, ct)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ct))
    assert json.loads(json.dumps(scheme.voxel_counts(sitk.GetArrayFromImage(label)))) == counts

"""The QC report of a cohort: a CSV with flagged cases first, a picture per case, a contact sheet; outliers
flagged (a segment volume far from the cohort's median, low confidence, an empty segment, a failure)."""

from __future__ import annotations

import csv

import pytest

from test_cohort_batch import cohort_folder, run_cohort
from UNetSegmentationLib.cohort.qc_report import qc_flags
from UNetSegmentationLib.model.metadata import ClassInfo

CLASSES = [ClassInfo(1, "lung", (0.8, 0.2, 0.2)), ClassInfo(2, "bone", (0.9, 0.9, 0.7))]


def record(lung: float, bone: float, confidence: float = 0.95, status: str = "done") -> dict:
    return {"status": status, "volumes_ml": {"lung": lung, "bone": bone}, "mean_confidence": confidence, "error": None if status == "done" else "broken"}


def test_flags_name_the_outliers_and_leave_ordinary_cases_alone():
    records = {f"ok{i}": record(3000 + 40 * i, 700 - 10 * i) for i in range(6)}
    records.update(half=record(1500, 690), no_bone=record(3050, 0), unsure=record(3020, 705, confidence=0.55), failed=record(0, 0, status="failed"))
    flags = qc_flags(records, CLASSES)
    assert all(flags[f"ok{i}"] == [] for i in range(6)), flags
    assert any("lung 1500.0 mL, far from the cohort median" in f for f in flags["half"])
    assert flags["no_bone"] == ["bone empty (cohort median 680.0 mL)"]
    assert flags["unsure"] and "low mean confidence 0.550" in flags["unsure"][0]
    assert flags["failed"] == ["failed: broken"]


def test_a_small_cohort_gets_only_the_absolute_checks():
    flags = qc_flags({"a": record(3000, 700), "b": record(300, 700), "c": record(0, 0)}, CLASSES)
    assert flags["a"] == flags["b"] == [] and flags["c"][0] == "nothing labelled"


def test_the_report_has_a_row_and_a_picture_per_case_and_a_contact_sheet(cli, small_unetpp, tmp_path):
    pytest.importorskip("matplotlib")
    inputs = cohort_folder(tmp_path / "in")
    result = run_cohort(cli, small_unetpp, [inputs], tmp_path / "out", "--qc-report", tmp_path / "qc")
    assert result.code == 3, result.stderr
    with open(tmp_path / "qc" / "qc.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    flags = {r["case"]: r["flags"] for r in rows}
    assert sorted(flags) == ["a", "b", "broken", "sub_c"]
    assert flags["broken"].startswith("failed:") and "truncated" in flags["broken"]
    assert all(flags[name] == "nothing labelled" for name in ("a", "b", "sub_c"))  # the untrained model labels nothing
    assert {"lung (mL)", "bone (mL)", "mean_confidence", "picture"} <= set(rows[0])
    for row in (r for r in rows if r["status"] == "done"):
        assert (tmp_path / "qc" / row["picture"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "qc" / "contact_sheet.png").stat().st_size > 1000


def flipped_copy(image):
    """The same anatomy stored the other way round in-plane (rows and columns reversed, direction -1, -1, 1),
    as a NIfTI/NRRD in RAS-like storage holds what a DICOM series holds in LPS."""
    import numpy as np
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)[:, ::-1, ::-1]
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(array))
    flipped.SetSpacing(image.GetSpacing())
    i, j, _ = image.GetSize()
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint((i - 1, j - 1, 0)))
    flipped.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return flipped


def test_qc_pictures_are_drawn_in_radiological_orientation_whatever_the_storage_order(tmp_path):
    """The same scan stored as a DICOM series (LPS) and as a file stored the other way round gives the same
    QC slices: drawn from the direction matrix, not in file order (issue 22, defect 13)."""
    import numpy as np
    import SimpleITK as sitk

    from support import make_volume, write, write_dicom_series
    from UNetSegmentationLib.cohort.discovery import CohortCase
    from UNetSegmentationLib.cohort.qc_report import _case_panels

    image = make_volume(size=(40, 36, 6))
    array = sitk.GetArrayFromImage(image)
    array[:, 2:6, 2:10] = 2000  # a marker at the patient's right (low i) and anterior (low j)
    marked = sitk.GetImageFromArray(array)
    marked.CopyInformation(image)
    (tmp_path / "dicom").mkdir()
    write_dicom_series(marked, tmp_path / "dicom", "1.2.3.4")
    stored_flipped = write(flipped_copy(marked), tmp_path / "flipped.nrrd")
    panels = {}
    for name, source in (("dicom", tmp_path / "dicom"), ("flipped", stored_flipped)):
        labels = sitk.Image(sitk.ReadImage(str(stored_flipped)).GetSize() if name == "flipped" else marked.GetSize(), sitk.sitkUInt8)
        labels.CopyInformation(sitk.ReadImage(str(stored_flipped)) if name == "flipped" else marked)
        write(labels, tmp_path / f"{name}-labels.nrrd")
        panels[name], _ = _case_panels(CohortCase(name, source, tmp_path / f"{name}-labels.nrrd"), CLASSES)
    for (a, _), (b, _) in zip(panels["dicom"], panels["flipped"]):
        np.testing.assert_array_equal(a, b)
        rows, columns = np.nonzero(a >= 1900)
        assert rows.max() < a.shape[0] // 2 and columns.max() < a.shape[1] // 2  # anterior at the top, the patient's right on the left


def test_the_contact_sheet_is_large_enough_to_read(tmp_path):
    pytest.importorskip("matplotlib")
    import numpy as np
    from PIL import Image

    from UNetSegmentationLib.cohort.qc_report import CELL_PIXELS, _save_contact_sheet

    thumbnails = [(f"case-{i:02d}", np.random.default_rng(i).normal(size=(120, 120)).astype(np.float32), np.zeros((120, 120), np.uint8), 1.0, i == 0) for i in range(6)]
    _save_contact_sheet(thumbnails, CLASSES, tmp_path / "sheet.png")
    width, height = Image.open(tmp_path / "sheet.png").size
    assert width >= 6 * CELL_PIXELS * 0.95 and height >= CELL_PIXELS  # was 691×252 for six cases

"""A scan the model was not made for is segmented with a warning that says so (issue 23, item 6).

An MR series given to the CT model, or a CT whose RescaleIntercept was lost (air at about 0 instead of
-1000 HU), gave labels with high confidence, exit 0 and no word. ``inference/scan_check.check_scan``
compares the scan with the checkpoint's normalisation (CT in HU with its window, or MR): each finding
is a ``warning`` event and its flag is in the ``done`` event's ``scan_flags`` (which the manifest and
the QC report carry). The run goes on: the user may know better. The scans are the slicerio chest CT,
as a DICOM series edited with pydicom as an export would leave it.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import create_checkpoint, with_array, write, write_dicom_series

from UNetSegmentationLib.inference.scan_check import HEADER, INTENSITY, MODALITY, SAMPLE_VOXELS, check_scan, sample_voxels, scan_flags
from UNetSegmentationLib.io.volumes import inspect_input
from UNetSegmentationLib.model.header import read_metadata

pydicom = pytest.importorskip("pydicom")


def chest_slices(chest_ct_path) -> sitk.Image:
    image = sitk.ReadImage(str(chest_ct_path))[:, :, 8:20]
    image.SetDirection([round(v) for v in image.GetDirection()])
    return image


def series(image: sitk.Image, folder: Path, edit=None) -> Path:
    """``image`` as a DICOM series in ``folder``, each slice then changed by ``edit(dataset)``."""
    folder.mkdir()
    write_dicom_series(image, folder, "1.2.826.0.1.3680043.2.1125.23.6")
    for path in sorted(folder.glob("*.dcm")):
        if edit is not None:
            dataset = pydicom.dcmread(path)
            edit(dataset)
            dataset.save_as(path)
    return folder


def run(cli, checkpoint, scan, tmp_path) -> tuple:
    """``(warnings, scan_flags)`` of a predict run that must succeed."""
    result = cli("predict", "--checkpoint", checkpoint, "--progress", "json", scan, tmp_path / "labels.nrrd")
    assert result.code == 0, result.stderr
    done = next(e for e in result.events if e["event"] == "done")
    return [e["message"] for e in result.events if e["event"] == "warning"], done["scan_flags"]


def without_rescale(dataset) -> None:
    del dataset.RescaleIntercept
    del dataset.RescaleSlope


def test_a_ct_whose_rescale_intercept_is_missing_is_flagged(cli, small_unet_one_class, chest_ct_path, tmp_path):
    """Stored as the scanner stores it (HU + 1024, unsigned, clipped at 0), the intercept of -1024 lost."""
    image = chest_slices(chest_ct_path)
    stored = np.clip(sitk.GetArrayFromImage(image) + 1024, 0, 4095)
    folder = series(with_array(stored.astype(np.int16), image), tmp_path / "no-intercept", without_rescale)
    warnings, flags = run(cli, small_unet_one_class, folder, tmp_path)
    assert flags == [INTENSITY, HEADER]
    assert any("do not look like Hounsfield units" in w for w in warnings), warnings
    assert any("RescaleIntercept (0028,1052)" in w and "air near 0 instead of -1000" in w for w in warnings), warnings


def test_an_mr_series_given_to_the_ct_model_is_flagged(cli, small_unet_one_class, chest_ct_path, tmp_path):
    """An MR series: its Modality says so, and its values (no air at -1000) too."""
    image = chest_slices(chest_ct_path)
    signal = np.clip(sitk.GetArrayFromImage(image) + 1000, 0, 1500) * 0.4  # MR-like: dark air, no negative values

    def as_mr(dataset) -> None:
        dataset.Modality = "MR"

    folder = series(with_array(signal.astype(np.int16), image), tmp_path / "mr", as_mr)
    warnings, flags = run(cli, small_unet_one_class, folder, tmp_path)
    assert flags == [MODALITY, INTENSITY]
    assert any("the DICOM series is MR" in w and "made for CT" in w for w in warnings), warnings


def test_the_ct_in_hounsfield_units_is_not_flagged(cli, small_unet_one_class, chest_ct_path, tmp_path):
    folder = series(chest_slices(chest_ct_path), tmp_path / "ct")
    warnings, flags = run(cli, small_unet_one_class, folder, tmp_path)
    assert flags == [] and not any("Hounsfield" in w or "Modality" in w for w in warnings), warnings


def test_a_ct_stored_in_hounsfield_units_needs_no_rescale_fields(cli, small_unet_one_class, chest_ct_path, tmp_path):
    """Signed values already in HU: a missing RescaleIntercept changes nothing, and nothing is said."""
    folder = series(chest_slices(chest_ct_path), tmp_path / "ct", without_rescale)
    assert run(cli, small_unet_one_class, folder, tmp_path)[1] == []


def test_a_ct_given_to_an_mr_model_is_flagged(cli, chest_ct_path, tmp_path):
    checkpoint = create_checkpoint(tmp_path / "mr.safetensors", arch="unet", classes="liver", features="4,8,16", extra=("--norm", "mr"))
    warnings, flags = run(cli, checkpoint, chest_ct_path, tmp_path)
    assert flags == [INTENSITY]
    assert any("below -500, as air is in a CT" in w for w in warnings), warnings


def test_a_series_without_modality_says_so(chest_ct_path, tmp_path):
    def no_modality(dataset) -> None:
        del dataset.Modality

    folder = series(chest_slices(chest_ct_path), tmp_path / "anonymous", no_modality)
    header = inspect_input(folder)
    metadata = read_metadata(Path(__file__).parent / "Data" / "chest-ct-unetplusplus.safetensors")  # the chest model (test fixture)
    image = sitk.ReadImage(list(header.dicom_files))
    findings = check_scan(header, sitk.GetArrayViewFromImage(image), metadata)
    assert scan_flags(findings) == [HEADER] and "Modality (0008,0060)" in findings[0].message


def test_the_check_reads_a_bounded_sample_not_the_volume():
    """A 2000³ view (16 GB as int16 if it were real) is sampled in a few MB."""
    volume = np.broadcast_to(np.int16(-1000), (2000, 2000, 2000))
    tracemalloc.start()
    sample = sample_voxels(volume)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sample.size <= 1.1 * SAMPLE_VOXELS and peak < 8 * SAMPLE_VOXELS


def test_a_volume_of_padding_and_tissue_only_is_judged_by_its_tissue(tmp_path):
    """The constant outside the field of view (-3024 HU here) is left out of the statistics, so it cannot hide
    a scan whose tissue values are not in HU."""
    from UNetSegmentationLib.model.metadata import ModelMetadata, Normalization

    values = np.full((8, 32, 32), -3024, np.int16)
    values[:, 4:28, 4:28] = 1064  # soft tissue stored without its intercept
    path = write(sitk.GetImageFromArray(values), tmp_path / "padded.nrrd")
    metadata = ModelMetadata("unet", {}, 1, Normalization("ct", (-1000.0, 1000.0)), [])
    assert scan_flags(check_scan(inspect_input(path), values, metadata)) == [INTENSITY]


def test_a_cohort_records_each_case_s_scan_flags_and_warnings(cli, small_unet_one_class, chest_ct_path, tmp_path):
    """The manifest carries the check's flags and messages per case (the QC report flags such cases)."""
    from UNetSegmentationLib.cohort.manifest import read_records

    image = chest_slices(chest_ct_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    series(image, inputs / "ct")
    stored = np.clip(sitk.GetArrayFromImage(image) + 1024, 0, 4095)
    series(with_array(stored.astype(np.int16), image), inputs / "raw", without_rescale)
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--output-dir", tmp_path / "out", inputs)
    assert result.code == 0, result.stderr
    records = {r["case"]: r for r in read_records(tmp_path / "out" / "manifest.jsonl") if r["status"] == "done"}
    assert records["ct"]["scan_flags"] == []
    assert records["raw"]["scan_flags"] == [INTENSITY, HEADER]
    assert any("RescaleIntercept (0028,1052)" in w for w in records["raw"]["warnings"])


def test_a_ct_whose_intercept_was_applied_twice_is_flagged(chest_ct_path):
    """Air at -2024 instead of -1000: darker than anything a CT in HU holds (the scanner's padding aside)."""
    image = sitk.ReadImage(str(chest_ct_path))
    values = sitk.GetArrayViewFromImage(image).astype(np.int32) - 1024
    header = inspect_input(chest_ct_path)
    metadata = read_metadata(Path(__file__).parent / "Data" / "chest-ct-unetplusplus.safetensors")  # the chest model (test fixture)
    findings = check_scan(header, values, metadata)
    assert scan_flags(findings) == [INTENSITY] and "darker than air" in findings[0].message
    assert check_scan(header, sitk.GetArrayViewFromImage(image), metadata) == []

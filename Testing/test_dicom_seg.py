"""DICOM SEG out: ``unetseg predict SERIES_FOLDER out.dcm`` writes a Segmentation object that holds, voxel for
voxel, the labels ``predict`` writes as a label map for the same series, with the checkpoint's segment names
and SNOMED CT codes, the model identified, every frame referencing its source image; read back with highdicom
and, where it is installed, converted back by dcmqi (an independent implementation)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import assert_refused, make_volume, write, write_dicom_series
from UNetSegmentationLib.model.checkpoint import load_checkpoint

hd = pytest.importorskip("highdicom", reason="the [dicom] extra (part of [test])")
pydicom = pytest.importorskip("pydicom")

BUNDLED = Path(__file__).resolve().parent / "Data" / "chest-ct-unetplusplus.safetensors"


def dicom_series(image: sitk.Image, folder: Path, series_uid: str, prefix: str = "") -> Path:
    """``image`` as a DICOM CT series of one study and frame of reference, with its slice thickness."""
    import locale

    folder.mkdir(parents=True, exist_ok=True)
    before = locale.setlocale(locale.LC_CTYPE)
    write_dicom_series(image, folder, series_uid, prefix)
    locale.setlocale(locale.LC_CTYPE, before)  # ITK's DICOM writer sets "C"; conftest restores it per test, too late for a module fixture
    study, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for path in sorted(folder.glob(f"{prefix}*.dcm")):
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.FrameOfReferenceUID, dataset.SliceThickness = study, frame, image.GetSpacing()[2]
        # once the process has read a DICOM series, ITK's writer gives each 2D slice a SpacingBetweenSlices
        # of 1, which a DICOM SEG copies from its source images: state the series' own
        dataset.SpacingBetweenSlices = image.GetSpacing()[2]
        dataset.save_as(path)
    return folder


@pytest.fixture(scope="module")
def chest_series(tmp_path_factory) -> Path:
    import slicerio

    return dicom_series(sitk.ReadImage(slicerio.get_testdata_file("CTChest4.nrrd")), tmp_path_factory.mktemp("dicom") / "chest", "1.2.826.0.1.3680043.2.1125.17.1")


@pytest.fixture(scope="module")
def chest_seg(chest_series, tmp_path_factory):
    """The bundled model's labels on the series, as a label map and as a DICOM SEG (same process, same model)."""
    from support import run_cli

    folder = tmp_path_factory.mktemp("seg")
    for output in (folder / "labels.nrrd", folder / "labels.dcm"):
        result = run_cli("predict", "--checkpoint", BUNDLED, "--progress", "none", chest_series, output)
        assert result.code == 0, result.stderr
    return folder / "labels.nrrd", folder / "labels.dcm"


def source_files(folder: Path) -> list:
    reader = sitk.ImageSeriesReader()
    return list(reader.GetGDCMSeriesFileNames(str(folder)))


def test_the_dicom_seg_holds_exactly_the_labels_of_the_label_map_on_the_series_grid(chest_series, chest_seg):
    label_map, seg_path = chest_seg
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label_map)))
    seg = hd.seg.segread(str(seg_path))
    files = source_files(chest_series)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    numbers = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    classes = load_checkpoint(BUNDLED, None, weights=False).metadata.classes
    values = np.array([0] + [c.value for c in classes])
    assert labels.any() and np.array_equal(values[numbers], labels)
    # geometry: every slice of the SEG's volume lies exactly on a slice of the series' grid, rows and columns alike
    volume = seg.get_volume(combine_segments=True)
    image = sitk.ReadImage(str(label_map))
    direction, spacing = np.reshape(image.GetDirection(), (3, 3)), image.GetSpacing()
    np.testing.assert_allclose(volume.affine[:3, 1], direction[:, 1] * spacing[1], atol=1e-4)  # rows
    np.testing.assert_allclose(volume.affine[:3, 2], direction[:, 0] * spacing[0], atol=1e-4)  # columns
    for index in range(volume.array.shape[0]):
        position = volume.affine @ [index, 0, 0, 1]
        k = image.TransformPhysicalPointToIndex(tuple(position[:3]))[2]
        np.testing.assert_allclose(position[:3], image.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-3)
        assert np.array_equal(values[volume.array[index]], labels[k])
    # only frames where a segment is present, each referencing its source image in the source series
    expected_frames = sum(int(np.any(labels[k] == c.value)) for k in range(labels.shape[0]) for c in classes)
    assert seg.NumberOfFrames == expected_frames
    referenced = [frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID for frame in seg.PerFrameFunctionalGroupsSequence]
    assert len(referenced) == expected_frames and set(referenced) <= set(uids)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.3680043.2.1125.17.1"


def test_segments_carry_the_checkpoint_names_codes_and_the_model_identification(chest_seg):
    seg = hd.seg.segread(str(chest_seg[1]))
    classes = load_checkpoint(BUNDLED, None, weights=False).metadata.classes
    for number, info in enumerate(classes, start=1):
        description = seg.get_segment_description(number)
        assert description.segment_label == info.name
        type_code = description.SegmentedPropertyTypeCodeSequence[0]
        assert (type_code.CodingSchemeDesignator, type_code.CodeValue, type_code.CodeMeaning) == tuple(info.terminology["type"])
        category = description.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == tuple(info.terminology["category"][:2])
        if "typeModifier" in info.terminology:
            modifier = type_code.SegmentedPropertyTypeModifierCodeSequence[0]
            assert modifier.CodeMeaning == info.terminology["typeModifier"][2]
        algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName.startswith("chest-ct-unetplusplus") and algorithm.AlgorithmVersion.startswith("sha256:")
    assert seg.SegmentationType == "BINARY"


@pytest.mark.skipif(shutil.which("segimage2itkimage") is None, reason="dcmqi is not installed (the [test] extra brings it on x86_64 Linux)")
def test_dcmqi_converts_the_dicom_seg_back_to_the_same_segments(chest_seg, tmp_path):
    label_map, seg_path = chest_seg
    subprocess.run(["segimage2itkimage", "--inputDICOM", str(seg_path), "--outputDirectory", str(tmp_path), "--outputType", "nrrd"], check=True, capture_output=True)
    labels = sitk.ReadImage(str(label_map))
    classes = load_checkpoint(BUNDLED, None, weights=False).metadata.classes
    present = [c for c in classes if np.any(sitk.GetArrayFromImage(labels) == c.value)]
    converted = sorted(tmp_path.glob("*.nrrd"), key=lambda p: int(p.stem.split("-")[-1]))
    assert len(converted) == len(present)
    for info, path in zip(present, converted):  # dcmqi writes each segment on the grid of its frames: compare in physical space
        segment = sitk.Resample(sitk.ReadImage(str(path)), labels, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        assert np.array_equal(sitk.GetArrayFromImage(segment) > 0, sitk.GetArrayFromImage(labels) == info.value), info.name


def test_a_dicom_seg_of_a_volume_file_is_refused_before_any_work(tmp_path, small_unet_one_class, cli):
    volume = write(make_volume(size=(24, 20, 3)), tmp_path / "v.nrrd")
    output = tmp_path / "out" / "seg.dcm"
    output.parent.mkdir(exist_ok=True)
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", volume, output)
    assert_refused(result, output, "needs a DICOM series")


def test_a_folder_of_two_series_lists_them_and_series_picks_one(cli, small_unet_one_class, tmp_path):
    folder = tmp_path / "two"
    dicom_series(make_volume(size=(24, 20, 4), seed=1), folder, "1.2.826.0.1.3680043.2.1125.17.2", prefix="a")
    dicom_series(make_volume(size=(24, 20, 5), seed=2), folder, "1.2.826.0.1.3680043.2.1125.17.3", prefix="b")
    output = tmp_path / "out.nrrd"
    refused = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", folder, output)
    assert_refused(refused, output, "holds 2 DICOM series", "1.2.826.0.1.3680043.2.1125.17.2 (4 files)", "--series UID")
    chosen = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--series", "1.2.826.0.1.3680043.2.1125.17.3", folder, output)
    assert chosen.code == 0, chosen.stderr
    assert sitk.ReadImage(str(output)).GetSize() == (24, 20, 5)
    # a cohort takes each series of the folder as a case of its own
    cohort = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--output-dir", tmp_path / "cohort", "--dicom-seg", folder)
    assert cohort.code == 0, cohort.stderr
    assert sorted(p.name for p in (tmp_path / "cohort").glob("*.dcm")) == ["two_2.dcm", "two_3.dcm"]


# --- issue 23: what a SEG needs, checked before any work; text it must hold; its done event ------------------


@pytest.fixture
def small_series(tmp_path) -> Path:
    return dicom_series(make_volume(size=(24, 20, 4), seed=3), tmp_path / "series", "1.2.826.0.1.3680043.2.1125.17.9")


def blank(folder: Path, *keywords: str) -> None:
    """Empty ``keywords`` in every file of ``folder``, as the anonymiser of TotalSegmentator's sample CT did."""
    for path in sorted(folder.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        for keyword in keywords:
            setattr(dataset, keyword, "")
        dataset.save_as(path)


@pytest.mark.parametrize("keywords, named", [(("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"), "SOPInstanceUID (0008,0018)"), (("StudyInstanceUID",), "StudyInstanceUID (0020,000D)")])
def test_a_series_whose_uids_were_emptied_is_refused_before_any_work_naming_the_field(cli, small_unet_one_class, small_series, tmp_path, keywords, named):
    """TotalSegmentator's sample CT has empty SOP, study and series UIDs: it ended in ``internal error: KeyError: ''``
    after the whole segmentation. A SEG references its source images by these UIDs: none can be made up."""
    blank(small_series, *keywords)
    output = tmp_path / "seg.dcm"
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "json", small_series, output)
    message = assert_refused(result, output, named, ".seg.nrrd")
    assert "internal error" not in message and "Traceback" not in result.stderr
    assert not any(e["event"] in ("start", "progress", "done") for e in result.events), "refused before any work"
    labels = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", small_series, tmp_path / "seg.seg.nrrd")
    assert labels.code == 0, labels.stderr  # the way out the message names works


def test_without_the_dicom_extra_a_seg_is_refused_before_any_work_and_nothing_says_wrote(cli, small_unet_one_class, small_series, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "highdicom", None)  # import highdicom raises ImportError
    output = tmp_path / "seg.dcm"
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "bar", small_series, output)
    assert_refused(result, output, "highdicom", "[dicom]")
    assert "wrote" not in result.stderr + result.stdout


def write_classes(source: Path, target: Path, classes) -> Path:
    """``source``'s weights with other classes (names, terminology), as a checkpoint at ``target``."""
    import dataclasses

    from UNetSegmentationLib.model.checkpoint import save_checkpoint

    checkpoint = load_checkpoint(source)
    return save_checkpoint(target, checkpoint.state_dict, dataclasses.replace(checkpoint.metadata, classes=classes))


def test_names_in_any_script_long_names_and_long_code_meanings_make_a_seg_with_distinct_labels(cli, small_unetpp, small_series, tmp_path):
    """Non-ASCII names came out as "??", names equal in their first 64 characters shared a label, and a
    code meaning over 64 characters (DICOM LO) ended in a traceback."""
    from UNetSegmentationLib.model.metadata import ClassInfo

    long = "left lower lobe of the lung with its segmental bronchi and vessels "  # 67 characters
    terminology = {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "39607008", "Lung " + "x" * 80]}
    checkpoint = write_classes(small_unetpp, tmp_path / "named.safetensors", [ClassInfo(1, "右肺 Müller", (1.0, 0.0, 0.0), terminology), ClassInfo(2, long + "A", (0.0, 1.0, 0.0))])
    output = tmp_path / "seg.dcm"
    result = cli("predict", "--checkpoint", checkpoint, "--progress", "none", small_series, output)
    assert result.code == 0, result.stderr
    seg = hd.seg.segread(str(output))
    labels = [seg.get_segment_description(n).segment_label for n in (1, 2)]
    assert labels[0] == "右肺 Müller" and len(labels[1]) <= 64 and labels[1] == (long + "A")[:64]
    assert seg.get_segment_description(1).SegmentedPropertyTypeCodeSequence[0].CodeMeaning == ("Lung " + "x" * 80)[:64]
    twins = write_classes(small_unetpp, tmp_path / "twins.safetensors", [ClassInfo(1, long + "A", (1.0, 0.0, 0.0)), ClassInfo(2, long + "B", (0.0, 1.0, 0.0))])
    result = cli("predict", "--checkpoint", twins, "--progress", "none", small_series, tmp_path / "twins.dcm")
    assert result.code == 0, result.stderr
    seg = hd.seg.segread(str(tmp_path / "twins.dcm"))
    labels = [seg.get_segment_description(n).segment_label for n in (1, 2)]
    assert len(set(labels)) == 2 and all(len(label) <= 64 for label in labels), labels


def test_json_progress_says_done_only_once_the_seg_is_written(cli, small_unet_one_class, small_series, tmp_path, monkeypatch):
    """``done`` came before the SEG was written, and an ``error`` could follow it; now every output is in
    place before ``done``, and a SEG that fails is an ``error`` with no ``done``."""
    output = tmp_path / "seg.dcm"
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "json", small_series, output)
    assert result.code == 0, result.stderr
    kinds = [e["event"] for e in result.events]
    assert kinds[-1] == "done" and "error" not in kinds and result.events[-1]["output"] == str(output)

    from UNetSegmentationLib.errors import UserError
    from UNetSegmentationLib.io import case_outputs

    def failing(*args, **kwargs):
        raise UserError("cannot write the SEG: stand-in failure")

    monkeypatch.setattr(case_outputs, "write_dicom_seg", failing)
    failed = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "json", small_series, tmp_path / "failed.dcm")
    kinds = [e["event"] for e in failed.events]
    assert failed.code == 2 and "done" not in kinds and kinds[-1] == "error", kinds
    assert not (tmp_path / "failed.dcm").exists()

"""``unetseg predict`` end to end: real CT in, label maps and segmentations out on the input's grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch

from support import make_volume, rotation_matrix, write_dicom_series

from UNetSegmentationLib.errors import EXIT_USER_ERROR
from UNetSegmentationLib.inference.normalization import fit_normalization
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.inference.pipeline import labels_from_probabilities, predict_slices, predict_volume
from UNetSegmentationLib.inference.predict_file import predict_file
from UNetSegmentationLib.inference.slicing import SliceGeometry
from UNetSegmentationLib.io.segmentations import write_labels
from UNetSegmentationLib.model.metadata import ModelMetadata, Normalization, make_classes


def assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("extension", [".nrrd", ".nii.gz", ".mha", ".seg.nrrd"])
def test_predict_on_the_real_ct_writes_a_readable_output_on_the_input_grid(cli, chest_ct_path, small_unetpp, tmp_path, extension):
    output = tmp_path / f"result{extension}"
    result = cli("predict", "--checkpoint", small_unetpp, "--progress", "none", chest_ct_path, output)
    assert result.code == 0, result.stderr
    ct = sitk.ReadImage(str(chest_ct_path))
    written = sitk.ReadImage(str(output))
    assert_same_grid(ct, written)
    assert written.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(written))) <= {0, 1, 2}
    assert [p.name for p in tmp_path.iterdir()] == [output.name]  # no temporary file left behind


def test_segmentation_output_carries_names_colours_and_geometry_for_slicer(cli, chest_ct_path, small_unetpp, tmp_path):
    output = tmp_path / "result.seg.nrrd"
    assert cli("predict", "--checkpoint", small_unetpp, "--progress", "none", chest_ct_path, output).code == 0
    segmentation = slicerio.read_segmentation(str(output))
    assert [s["name"] for s in segmentation["segments"]] == ["lung", "bone"]
    assert [s["labelValue"] for s in segmentation["segments"]] == [1, 2]
    assert all(len(s["color"]) == 3 for s in segmentation["segments"])
    image = sitk.ReadImage(str(chest_ct_path))
    np.testing.assert_allclose(segmentation["ijkToLPS"][:3, 3], image.GetOrigin(), atol=1e-4)
    assert segmentation["voxels"].shape == image.GetSize()


def test_terminology_from_the_checkpoint_reaches_the_segmentation(chest_ct_path, tmp_path):
    terminology = {
        "contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
        "category": ["SCT", "123037004", "Anatomical Structure"],
        "type": ["SCT", "39607008", "Lung"],
        "typeModifier": ["SCT", "24028007", "Right"],
    }
    classes = make_classes(["right lung"])
    classes[0] = type(classes[0])(1, "right lung", (0.1, 0.8, 0.3), terminology)
    image = sitk.ReadImage(str(chest_ct_path))
    labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    labels[10, 20:30, 40:50] = 1
    path = tmp_path / "t.seg.nrrd"
    write_labels(labels, image, path, classes)
    segment = slicerio.read_segmentation(str(path))["segments"][0]
    assert segment["terminology"]["type"] == ["SCT", "39607008", "Lung"]
    assert segment["terminology"]["typeModifier"] == ["SCT", "24028007", "Right"]
    assert segment["color"] == pytest.approx([0.1, 0.8, 0.3])


def test_json_progress_reports_start_progress_and_done_in_order(cli, chest_ct_path, small_unetpp, tmp_path):
    result = cli("predict", "--checkpoint", small_unetpp, "--progress", "json", "--batch-size", "8", "--depth", "2", chest_ct_path, tmp_path / "o.nrrd")
    assert result.code == 0
    kinds = [e["event"] for e in result.events if e["event"] != "log"]  # a first ONNX export is announced in a log line before start
    assert kinds[0] == "start" and kinds[-1] == "done"
    progress = [e for e in result.events if e["event"] == "progress"]
    assert [e["done"] for e in progress] == [8, 16, 24, 32, 34]
    assert all(e["total"] == 34 for e in progress)
    start = result.start
    assert start["total"] == 34 and start["unit"] == "slice" and start["version"] == 1 and start["command"] == "predict" and start["depth"] == 2 and start["device"] == "cpu" and start["arch"] == "unetplusplus"
    assert set(result.events[-1]["timings"]) >= {"read_s", "network_s", "write_s", "total_s"}


def test_probability_map_is_the_confidence_of_the_chosen_label(cli, chest_ct_path, small_unet_one_class, tmp_path):
    output, probabilities = tmp_path / "o.nrrd", tmp_path / "p.nrrd"
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--probabilities", probabilities, chest_ct_path, output)
    assert result.code == 0, result.stderr
    confidence = sitk.ReadImage(str(probabilities))
    assert_same_grid(sitk.ReadImage(str(chest_ct_path)), confidence)
    values = sitk.GetArrayViewFromImage(confidence)
    assert values.dtype == np.float32 and values.min() >= 0.5 and values.max() <= 1.0


def test_one_class_is_a_sigmoid_thresholded_at_one_half():
    probabilities = torch.tensor([0.2, 0.5, 0.9]).reshape(1, 1, 1, 3)
    labels, confidence = labels_from_probabilities(probabilities, np.array([0, 7], np.uint8))
    assert labels.tolist() == [[[0, 7, 7]]]
    np.testing.assert_allclose(confidence, [[[0.8, 0.5, 0.9]]])


def test_several_classes_are_the_argmax_over_background_and_classes():
    probabilities = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]).T.reshape(1, 3, 1, 2)
    labels, confidence = labels_from_probabilities(probabilities, np.array([0, 3, 9], np.uint8))
    assert labels.tolist() == [[[0, 9]]]
    np.testing.assert_allclose(confidence, [[[0.6, 0.7]]])


class ThresholdPredictor:
    """Stands in for the network: foreground where the centre channel (the slice itself) is bright.

    With it, every voxel's label depends only on that voxel, so any mix-up of axes, flips or
    geometry in the pipeline shows as a marker landing elsewhere.
    """

    required_multiple = 16

    def __init__(self, metadata: ModelMetadata) -> None:
        self.metadata = metadata

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        centre = batch[:, self.metadata.context : self.metadata.context + 1]
        return torch.from_numpy((centre > 0.9).astype(np.float32))


@pytest.mark.parametrize(
    "direction",
    [rotation_matrix(0.35, -0.26, 0.61), np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], float), np.diag([-1.0, -1.0, 1.0])],
    ids=["oblique", "sagittal", "ras"],
)
def test_a_marker_voxel_comes_back_at_the_same_physical_point(tmp_path, direction):
    image = make_volume(size=(23, 19, 7), spacing=(0.7, 1.3, 4.0), direction=direction)
    array = sitk.GetArrayFromImage(image)
    array[:] = -1000
    marker = (5, 11, 17)  # [k, j, i]
    array[marker] = 1000
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(make_volume(size=(23, 19, 7), spacing=(0.7, 1.3, 4.0), direction=direction))
    metadata = ModelMetadata("unet", {"in_channels": 3, "out_channels": 1}, 1, Normalization("ct", window=(-1000.0, 1000.0)), make_classes(["marker"]))
    volume = sitk.GetArrayViewFromImage(image)
    geometry = SliceGeometry.from_direction(image.GetDirection())
    result = predict_volume(volume, geometry, ThresholdPredictor(metadata), fit_normalization(metadata.normalization, volume), batch_size=3)
    path = tmp_path / "marker.nii.gz"
    write_labels(result.labels, image, path, metadata.classes)
    written = sitk.ReadImage(str(path))
    assert_same_grid(image, written)
    found = np.argwhere(sitk.GetArrayViewFromImage(written))
    assert found.tolist() == [list(marker)]
    k, j, i = marker
    np.testing.assert_allclose(
        written.TransformIndexToPhysicalPoint((i, j, k)), image.TransformIndexToPhysicalPoint((i, j, k))
    )


def test_predicting_chosen_slices_gives_what_the_whole_volume_gives_on_them(chest_ct_path):
    """Training validates on held-out slices with ``predict_slices``: predict_volume's batches and decision, as channel numbers."""
    image = sitk.ReadImage(str(chest_ct_path))
    volume = sitk.GetArrayViewFromImage(image)
    classes = make_classes(["bright"])
    classes[0] = type(classes[0])(7, "bright", (1.0, 0.0, 0.0))  # label value 7, channel 1
    metadata = ModelMetadata("unet", {"in_channels": 3, "out_channels": 1}, 1, Normalization("ct", window=(-1000.0, 1000.0)), classes)
    geometry = SliceGeometry.from_direction(image.GetDirection())
    mapping = fit_normalization(metadata.normalization, volume)
    whole = geometry.slices_view(predict_volume(volume, geometry, ThresholdPredictor(metadata), mapping, batch_size=4).labels)
    chosen = [0, 5, 6, 7, 20, 33]
    channels = predict_slices(ThresholdPredictor(metadata), geometry.slices_view(volume), mapping, chosen, batch_size=4)
    assert channels.dtype == np.uint8 and channels.shape == (len(chosen),) + whole.shape[1:]
    assert channels.any()
    np.testing.assert_array_equal(channels, (whole[chosen] == 7).astype(np.uint8))


def test_predict_keeps_the_grid_of_an_oblique_anisotropic_volume(cli, oblique_volume_path, small_unetpp, tmp_path):
    output = tmp_path / "oblique-labels.nrrd"
    result = cli("predict", "--checkpoint", small_unetpp, "--progress", "none", "--depth", "accurate", oblique_volume_path, output)
    assert result.code == 0, result.stderr
    assert_same_grid(sitk.ReadImage(str(oblique_volume_path)), sitk.ReadImage(str(output)))


@pytest.mark.parametrize("depth", ["1", "L3", "accurate"])
def test_prune_depths_and_accurate_mode_run(cli, chest_ct_path, small_unetpp, tmp_path, depth):
    result = cli("predict", "--checkpoint", small_unetpp, "--progress", "json", "--depth", depth, chest_ct_path, tmp_path / "o.nrrd")
    assert result.code == 0, result.stderr
    assert result.start["depth"] in (1, 3, "accurate")


def test_dicom_series_folder_is_read(cli, chest_ct_path, small_unetpp, tmp_path):
    image = sitk.ReadImage(str(chest_ct_path))[:, :, :6]
    image.SetDirection([round(v) for v in image.GetDirection()])  # GDCM wants exactly unit cosines
    folder = tmp_path / "dicom series"
    folder.mkdir()
    write_dicom_series(image, folder, series_uid="1.2.826.0.1.3680043.2.1125.1.1")
    output = tmp_path / "o.nrrd"
    result = cli("predict", "--checkpoint", small_unetpp, "--progress", "none", folder, output)
    assert result.code == 0, result.stderr
    assert sitk.ReadImage(str(output)).GetSize() == (128, 128, 6)


@pytest.mark.parametrize("largest_component", [False, True])
def test_largest_component_option_removes_the_smaller_islands(small_unet_one_class, tmp_path, largest_component):
    """Two bright blobs (27 and 1 voxels) labelled by the threshold stand-in; the option keeps the big one."""

    def threshold_factory(checkpoint, plan, depth, classification_guidance):
        return ThresholdPredictor(checkpoint.metadata), []

    image = make_volume(size=(20, 20, 10))
    array = np.full(sitk.GetArrayViewFromImage(image).shape, -1000, np.int16)
    array[2:5, 2:5, 2:5] = 1000
    array[8, 15, 15] = 1000
    blobs = sitk.GetImageFromArray(array)
    blobs.CopyInformation(image)
    source, output = tmp_path / "blobs.nrrd", tmp_path / "labels.nrrd"
    sitk.WriteImage(blobs, str(source))
    predict_file(source, output, small_unet_one_class, SegmentationOptions(largest_component=largest_component, crop=False), predictor_factory=threshold_factory)  # a lone voxel in air is no body: the crop would drop it
    labelled = int(sitk.GetArrayFromImage(sitk.ReadImage(str(output))).astype(bool).sum())
    assert labelled == (27 if largest_component else 28)


def test_depth_on_a_network_that_cannot_be_pruned_is_refused(cli, small_unet_one_class, oblique_volume_path, tmp_path):
    result = cli("predict", "--checkpoint", small_unet_one_class, "--progress", "none", "--depth", "2", oblique_volume_path, tmp_path / "o.nrrd")
    assert result.code == EXIT_USER_ERROR and "cannot be pruned" in result.stderr


def test_a_gpu_that_is_not_there_is_named(cli, small_unetpp, oblique_volume_path, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = cli("predict", "--checkpoint", small_unetpp, "--progress", "none", "--device", "cuda", oblique_volume_path, tmp_path / "o.nrrd")
    assert result.code == EXIT_USER_ERROR and "no CUDA GPU" in result.stderr


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_an_interactive_model_is_refused_by_automatic_segmenting_with_one_message(cli, chest_ct_path, chest_segmentation_path, tmp_path, command):
    """An interactive network needs guidance channels no automatic run has: ONNX Runtime's shape error, as a
    traceback, is now one message naming what the model is for (unetseg refine)."""
    from UNetSegmentationLib.model.bundled import interactive_model_path

    if not interactive_model_path().is_file():
        pytest.skip("no bundled interactive model in this checkout")
    model = tmp_path / "interactive.safetensors"
    model.write_bytes(interactive_model_path().read_bytes())
    output = tmp_path / "labels.nrrd"
    arguments = (("predict", "--checkpoint", model, chest_ct_path, output) if command == "predict" else
                 ("evaluate", "--checkpoint", model, "--image", chest_ct_path, "--label", chest_segmentation_path, "--output-dir", tmp_path / "eval"))
    result = cli(*arguments, "--progress", "none")
    assert result.code == EXIT_USER_ERROR and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "is an interactive model" in result.stderr and "unetseg refine" in result.stderr
    assert not output.exists() and not (tmp_path / "eval").exists()

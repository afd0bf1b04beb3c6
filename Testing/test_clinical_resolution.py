"""Segmenting at the model's resolution (issue 14): checkpoints know their geometry, slices are
resampled to the model's spacing and the probabilities back onto the input's grid, the 2.5D
neighbours lie the model's slice distance away in mm, and the network looks only at the body."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from clinical_volumes import VERSIONS, write_version
from support import assert_same_grid, create_checkpoint, make_volume, rotation_matrix, with_array, write
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.body import BodyBoxes, find_body
from UNetSegmentationLib.inference.normalization import fit_normalization
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.inference.pipeline import labels_from_probabilities, predict_volume
from UNetSegmentationLib.inference.resolution import ModelGrid, model_grid_size, plan_model_grid, resample_labels, resample_probabilities
from UNetSegmentationLib.inference.slicing import SliceGeometry, gather_context
from UNetSegmentationLib.model.checkpoint import load_checkpoint, save_checkpoint
from UNetSegmentationLib.model.metadata import ModelMetadata, Normalization, make_classes

BUNDLED = Path(__file__).resolve().parent / "Data" / "chest-ct-unetplusplus.safetensors"  # the chest model: these expectations are about it


def with_geometry(source: Path, target: Path, in_plane, slice_distance) -> Path:
    """A copy of checkpoint ``source`` that says it learned at ``in_plane`` mm with neighbours ``slice_distance`` mm apart."""
    checkpoint = load_checkpoint(source)
    metadata = checkpoint.metadata
    metadata.training_spacing, metadata.slice_distance = list(in_plane), slice_distance
    save_checkpoint(target, checkpoint.state_dict, metadata)
    return target


# --- what a checkpoint knows of its geometry ------------------------------------------------------------


def test_the_bundled_model_records_its_spacing_and_slice_distance():
    metadata = load_checkpoint(BUNDLED, weights=False).metadata
    assert metadata.in_plane_spacing == pytest.approx((3.046876, 3.046876))
    assert metadata.context_distance == 10.0


def test_a_checkpoint_without_a_slice_distance_takes_it_from_three_recorded_spacings():
    metadata = ModelMetadata("unet", {"in_channels": 3, "out_channels": 1}, 1, Normalization("ct", (-1000.0, 1000.0)), make_classes(["a"]))
    assert metadata.in_plane_spacing is None and metadata.context_distance is None
    metadata.training_spacing = [5.0, 0.8, 0.7]
    assert metadata.in_plane_spacing == (0.8, 0.7) and metadata.context_distance == 5.0
    metadata.slice_distance = 2.5
    assert ModelMetadata.loads(metadata.dumps()).context_distance == 2.5


@pytest.mark.parametrize("distance", [0, -1.0, "10", 1e9])
def test_a_nonsense_slice_distance_is_refused(distance):
    metadata = ModelMetadata("unet", {"in_channels": 3, "out_channels": 1}, 1, Normalization("ct", (-1000.0, 1000.0)), make_classes(["a"]))
    data = metadata.to_json()
    data["slice_distance"] = distance
    with pytest.raises(UserError, match="slice_distance"):
        ModelMetadata.loads(json.dumps(data), "bad.safetensors")


# --- the model's grid ------------------------------------------------------------------------------------


def test_the_model_grid_covers_the_slice_at_the_model_spacing():
    assert model_grid_size((512, 512), (0.76, 0.76), (3.05, 3.05)) == (128, 128)
    assert model_grid_size((512, 400), (0.5, 2.0), (1.0, 1.0)) == (256, 800)
    assert model_grid_size((128, 128), (3.047, 3.047), (3.046, 3.046)) == (128, 128)  # within 0.5 %: no resampling
    grid = plan_model_grid((2.5, 0.76, 0.76), load_checkpoint(BUNDLED, weights=False).metadata)
    assert grid.resamples and grid.context_step == pytest.approx(4.0)
    assert "segmented at the model's 3.05x3.05 mm" in grid.describe()
    native = plan_model_grid((2.5, 0.76, 0.76), load_checkpoint(BUNDLED, weights=False).metadata, at_model_spacing=False)
    assert not native.resamples and native.context_step == 1.0


def test_probabilities_come_back_smooth_and_labels_are_decided_on_the_input_grid():
    """A disc's probability on a coarse grid, resampled 4x: the decided disc is round, not made of 4x4 blocks."""
    rows, columns = np.mgrid[0:32, 0:32]
    disc = ((rows - 15.5) ** 2 + (columns - 15.5) ** 2 < 8**2).astype(np.float32)
    coarse = torch.from_numpy(np.stack([1 - disc, disc])[None])
    fine = resample_probabilities(coarse, (128, 128))
    labels, confidence = labels_from_probabilities(fine, np.array([0, 1]))
    block_edges = (np.diff(labels[0], axis=0) != 0).reshape(127, 128)
    assert labels.shape == (1, 128, 128) and confidence.min() >= 0.5
    assert (np.flatnonzero(block_edges.any(axis=1)) % 4 != 3).any()  # edges between the coarse pixels' blocks, too
    assert resample_probabilities(coarse, (32, 32)) is coarse  # the same grid: nothing to do


def test_labels_resampled_for_training_keep_every_class_and_their_extent():
    labels = np.zeros((1, 120, 120), np.uint8)
    labels[0, 20:80, 30:90] = 2
    labels[0, 40:60, 50:70] = 1
    small = resample_labels(labels, (30, 30), 3)
    assert small.shape == (1, 30, 30) and set(np.unique(small)) == {0, 1, 2}
    assert abs(int((small == 2).sum()) * 16 + int((small == 1).sum()) * 16 - 3600) <= 16 * 30


# --- 2.5D neighbours in millimetres ---------------------------------------------------------------------


def test_neighbours_lie_the_model_slice_distance_away():
    slices = np.arange(20, dtype=np.int16)[:, None, None] * np.ones((1, 4, 5), np.int16)
    whole = gather_context(slices, np.array([0, 8, 19]), context=1, step=4.0)
    assert whole[:, :, 0, 0].tolist() == [[0, 0, 4], [4, 8, 12], [15, 19, 19]]  # held at the ends, as in training
    half = gather_context(slices, np.array([8]), context=1, step=2.5)
    np.testing.assert_allclose(half[0, :, 0, 0], [5.5, 8.0, 10.5])  # between slices: linear
    boxed = gather_context(slices, np.array([8]), context=1, step=1.0, box=(1, 3, 2, 5))
    assert boxed.shape == (1, 3, 2, 3)


def test_neighbours_resampled_slice_by_slice_are_the_resampled_neighbours_up_to_rounding(chest_ct_path):
    """The pipeline resamples each input slice once and interpolates the neighbours on the model grid (as a
    refinement session does): the same inputs as interpolating at the input's resolution and resampling, to
    float rounding; exactly the same where every neighbour lies on a slice."""
    from UNetSegmentationLib.inference.resolution import bilinear
    from UNetSegmentationLib.inference.slicing import resampled_context

    image = sitk.ReadImage(str(chest_ct_path))
    slices = SliceGeometry.from_direction(image.GetDirection()).slices_view(sitk.GetArrayViewFromImage(image))
    box, size = (10, 110, 4, 124), (37, 41)
    between_slices, on_slices = (np.array([3.3, 7.7, 12.1, 16.5]), 4.4), (np.array([0.0, 9.0, 33.0]), 2.0)
    for (positions, step), exact in ((between_slices, False), (on_slices, True)):
        expected = bilinear(gather_context(slices, positions, 1, step, box).astype(np.float32), size)
        computed = resampled_context(slices, positions, 1, step, box, size)
        assert computed.shape == expected.shape == (len(positions), 3) + size and computed.dtype == np.float32
        if exact:
            np.testing.assert_array_equal(computed, expected)
        else:
            np.testing.assert_allclose(computed, expected, rtol=0, atol=1e-3)  # HU: a thousandth of a unit


# --- the body --------------------------------------------------------------------------------------------


def test_the_body_boxes_of_the_real_ct_hold_every_labelled_voxel(chest_ct_path, chest_segmentation_path):
    image = sitk.ReadImage(str(chest_ct_path))
    geometry = SliceGeometry.from_direction(image.GetDirection())
    slices = geometry.slices_view(sitk.GetArrayViewFromImage(image))
    bodies = find_body(slices, "ct", (10.0, 3.047, 3.047))
    truth = geometry.slices_view(sitk.GetArrayFromImage(sitk.ReadImage(str(chest_segmentation_path))))
    inside = np.zeros(truth.shape, bool)
    for index, (r0, r1, c0, c1) in enumerate(bodies.boxes):
        inside[index, r0:r1, c0:c1] = True
    assert truth.any() and not (truth.astype(bool) & ~inside).any()
    assert bodies.share(slices.shape) < 0.8  # the air around the patient is left out


def test_slices_beyond_the_patient_are_not_computed_and_stay_background(chest_ct_path):
    image = sitk.ReadImage(str(chest_ct_path))
    array = sitk.GetArrayFromImage(image)
    padded = np.concatenate([np.full((6,) + array.shape[1:], -1000, array.dtype), array, np.full((6,) + array.shape[1:], -1000, array.dtype)])
    geometry = SliceGeometry.from_direction(image.GetDirection())
    bodies = find_body(geometry.slices_view(padded), "ct", (10.0, 3.047, 3.047))
    assert set(bodies.slices_with_body) == set(range(5, 6 + 34 + 1))  # the body, and one slice of margin (10 mm) each side
    metadata = load_checkpoint(BUNDLED, weights=False).metadata
    calls = []

    def predictor(batch):
        calls.append(batch.shape[0])
        return torch.full((batch.shape[0], 8) + batch.shape[2:], 0.125)

    predictor.metadata, predictor.required_multiple = metadata, 16
    result = predict_volume(padded, geometry, predictor, fit_normalization(metadata.normalization, padded), 4, bodies=bodies)
    assert sum(calls) == 36 and not result.labels[:5].any() and not result.labels[-5:].any()


def test_an_mr_body_is_found_by_otsu_and_a_volume_without_body_is_not_cropped():
    volume = make_volume(size=(64, 64, 10))
    mr = np.clip(sitk.GetArrayFromImage(volume).astype(np.float32) + 1000, 0, None)  # dark background, bright body
    bodies = find_body(mr, "mr", (3.5, 1.1, 0.8))
    assert 0 < bodies.share(mr.shape) < 1
    empty = find_body(np.zeros((5, 32, 32), np.float32), "ct", (1.0, 1.0, 1.0))
    assert empty.share((5, 32, 32)) == 1.0 and len(empty.slices_with_body) == 5
    assert BodyBoxes.whole((3, 8, 9)).union([0, 2]) == (0, 8, 0, 9)


# --- the whole path on the real CT ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def clinical_versions(tmp_path_factory, chest_ct_path, chest_segmentation_path):
    """The slicerio CT and its ground truth at 0.76 mm in-plane (512 × 512) and with 2.5 mm slices."""
    folder = tmp_path_factory.mktemp("clinical")
    return {name: write_version(chest_ct_path, chest_segmentation_path, BUNDLED, name, folder) for name in VERSIONS}


def dice_per_class(cli, ct: Path, truth: Path, folder: Path, *extra) -> dict:
    result = cli("evaluate", "--checkpoint", BUNDLED, "--image", ct, "--label", truth, "--depth", "3", "--output-dir", folder, "--progress", "none", *extra)
    assert result.code == 0, result.stderr
    rows = json.loads((folder / "evaluation.json").read_text())["rows"]
    return {row["class"]: row["dice"] for row in rows}


def test_a_clinical_resolution_ct_is_segmented_as_well_as_the_original(cli, clinical_versions, tmp_path):
    """The bundled model on its own CT at 0.76 mm in-plane and with 2.5 mm slices: every class's Dice
    within 0.03 of the original grid's (before this issue: 0.20 and 0.41 for the lungs at 0.76 mm)."""
    dice = {name: dice_per_class(cli, *paths, tmp_path / name) for name, paths in clinical_versions.items()}
    for name in ("0.76mm-in-plane", "2.5mm-slices"):
        for label, reference in dice["original"].items():
            assert dice[name][label] >= reference - 0.03, (name, label, dice[name][label], reference)
    native = dice_per_class(cli, *clinical_versions["0.76mm-in-plane"], tmp_path / "native", "--spacing", "native", "--no-crop")
    assert native["right lung"] < 0.5  # what the network makes of structures four times larger than it learned


def test_the_body_crop_leaves_the_labels_of_the_real_ct_as_they_were(cli, chest_ct_path, tmp_path):
    runs = {}
    for name, extra in (("crop", ()), ("whole", ("--no-crop",))):
        result = cli("predict", "--checkpoint", BUNDLED, "--progress", "json", *extra, chest_ct_path, tmp_path / f"{name}.nrrd")
        assert result.code == 0, result.stderr
        runs[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}.nrrd")))
        start = result.start
        assert (start["body_share"] < 0.8) == (name == "crop")
    assert (runs["crop"] == runs["whole"]).mean() >= 0.999


# --- geometry on the resampling path --------------------------------------------------------------------


@pytest.fixture(scope="module")
def coarse_model(tmp_path_factory) -> Path:
    """A small untrained two-class UNet++ that says it learned at 2 × 2 mm with neighbours 6 mm apart."""
    folder = tmp_path_factory.mktemp("coarse")
    return with_geometry(create_checkpoint(folder / "plain.safetensors"), folder / "coarse.safetensors", (2.0, 2.0), 6.0)


@pytest.mark.parametrize(
    "direction",
    [rotation_matrix(0.35, -0.26, 0.61), np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], float), np.diag([-1.0, -1.0, 1.0])],
    ids=["oblique", "sagittal", "ras"],
)
def test_outputs_keep_the_input_grid_when_slices_are_resampled(cli, coarse_model, tmp_path, direction):
    image = make_volume(size=(41, 37, 13), spacing=(0.7, 1.3, 3.0), direction=direction)
    path = write(image, tmp_path / "volume.nrrd")
    output, confidence = tmp_path / "labels.seg.nrrd", tmp_path / "confidence.nrrd"
    result = cli("predict", "--checkpoint", coarse_model, "--progress", "json", "--probabilities", confidence, path, output)
    assert result.code == 0, result.stderr
    assert "segmented at the model's 2x2 mm" in result.start["resolution"]
    assert_same_grid(image, sitk.ReadImage(str(output)))
    assert_same_grid(image, sitk.ReadImage(str(confidence)))


def test_a_bright_ball_comes_back_where_it_was_after_resampling(tmp_path):
    """A ball in an oblique, anisotropic volume, segmented by thresholding on a grid 2.5x coarser: the
    labelled ball's centre is within half a voxel of the true one, and its shape is the ball's."""
    like = make_volume(size=(60, 50, 12), spacing=(0.8, 1.0, 2.0), direction=rotation_matrix(0.2, -0.1, 0.4))
    k, j, i = np.mgrid[0:12, 0:50, 0:60]
    physical = (i - 30.3) * 0.8, (j - 24.6) * 1.0, (k - 5.8) * 2.0
    ball = sum(axis**2 for axis in physical) < 9.0**2
    image = with_array(np.where(ball, 1000, -1000).astype(np.int16), like)
    metadata = ModelMetadata("unet", {"in_channels": 3, "out_channels": 1}, 1, Normalization("ct", (-1000.0, 1000.0)), make_classes(["ball"]), training_spacing=[2.0, 2.0], slice_distance=4.0)

    def threshold(batch):
        return torch.from_numpy((batch[:, 1:2] > 0.5).astype(np.float32))

    threshold.metadata, threshold.required_multiple = metadata, 8
    volume = sitk.GetArrayViewFromImage(image)
    geometry = SliceGeometry.from_direction(image.GetDirection())
    spacing = np.array(image.GetSpacing())
    grid = plan_model_grid((spacing[geometry.slice_axis], spacing[geometry.row_axis], spacing[geometry.column_axis]), metadata)
    assert grid.resamples
    labels = predict_volume(volume, geometry, threshold, fit_normalization(metadata.normalization, volume), 4, grid=grid).labels.astype(bool)
    overlap = 2 * (labels & ball).sum() / (labels.sum() + ball.sum())
    assert overlap > 0.9
    centre = lambda mask: np.array([coordinate[mask].mean() for coordinate in (i, j, k)])  # noqa: E731
    np.testing.assert_allclose(centre(labels) * spacing, centre(ball) * spacing, atol=0.5 * spacing.max())


def test_native_spacing_is_the_input_grid_and_bad_spacing_choices_are_refused(cli, coarse_model, tmp_path):
    path = write(make_volume(size=(41, 37, 6)), tmp_path / "volume.nrrd")
    result = cli("predict", "--checkpoint", coarse_model, "--progress", "json", "--spacing", "native", path, tmp_path / "native.nrrd")
    assert result.code == 0, result.stderr
    assert "on the input's grid" in result.start["resolution"]
    refused = cli("predict", "--checkpoint", coarse_model, "--spacing", "2mm", path, tmp_path / "bad.nrrd")
    assert refused.code == 2 and "argument --spacing: invalid choice: '2mm'" in refused.stderr
    assert not (tmp_path / "bad.nrrd").exists()
    with pytest.raises(UserError, match="--spacing must be one of model, native"):
        SegmentationOptions(spacing="2mm")


def test_a_model_grid_of_the_input_itself_changes_nothing():
    grid = ModelGrid((0.8, 0.8), (0.8, 0.8), 1.0)
    assert not grid.resamples and grid.model_size((37, 41)) == (37, 41)


def test_a_scan_far_coarser_than_the_model_is_refused_before_any_work(cli, tmp_path):
    """At a model's 0.1 mm, 5 mm pixels become 50 pixels each: too large for one network call, said up front."""
    fine = with_geometry(create_checkpoint(tmp_path / "plain.safetensors"), tmp_path / "fine.safetensors", (0.1, 0.1), 1.0)
    path = write(make_volume(size=(64, 64, 4), spacing=(5.0, 5.0, 5.0)), tmp_path / "coarse-scan.nrrd")
    result = cli("predict", "--checkpoint", fine, "--progress", "none", path, tmp_path / "labels.nrrd")
    assert result.code == 2 and "become 3200x3200 pixels" in result.stderr and "--spacing native" in result.stderr
    assert not (tmp_path / "labels.nrrd").exists()
    assert cli("predict", "--checkpoint", fine, "--progress", "none", "--spacing", "native", path, tmp_path / "labels.nrrd").code == 0


# --- thin slices: the network at the model's slice distance ----------------------------------------------


def test_thin_slices_are_segmented_at_the_model_slice_distance_and_interpolated_between():
    """A 10 mm model on 2.5 mm slices runs on a quarter of them, at the centres of 10 mm cells (where the
    original 10 mm slices of a resampled scan lie), and every slice gets the interpolated probabilities."""
    grid = ModelGrid((1.0, 1.0), (1.0, 1.0), 4.0)
    positions = grid.network_positions(136)
    assert len(positions) == 34 and positions[:2].tolist() == [1.5, 5.5] and "every 4 slices" in grid.describe()
    assert ModelGrid((1.0, 1.0), (1.0, 1.0), 0.5).network_positions(7).tolist() == list(range(7))  # thicker slices: every one

    from UNetSegmentationLib.inference.model_slices import neighbours_of

    below, above, weight = neighbours_of(8, 2)  # 8 slices, positions 1.5 and 5.5
    assert below.tolist() == [0, 0, 0, 0, 0, 0, 1, 1] and above.tolist() == [1, 1, 1, 1, 1, 1, 1, 1]
    np.testing.assert_allclose(weight[:6], [0, 0, 0.125, 0.375, 0.625, 0.875])  # beyond the last position: the last one's


def test_a_thin_slice_volume_gets_probabilities_interpolated_between_the_network_slices():
    """A stand-in network that calls the slice's centre intensity its probability: along a ramp of 40
    slices at 1 mm and a model of 4 mm, the network runs 10 times and every slice's decision follows the
    interpolated ramp, ending exactly where the ramp crosses 0.5."""
    ramp = np.linspace(-1000, 1000, 40, dtype=np.float32)[:, None, None] * np.ones((1, 16, 16), np.float32)
    metadata = ModelMetadata("unet", {"in_channels": 3, "out_channels": 1}, 1, Normalization("ct", (-1000.0, 1000.0)), make_classes(["bright"]), training_spacing=[1.0, 1.0], slice_distance=4.0)
    calls = []

    def centre(batch):
        calls.append(len(batch))
        return torch.from_numpy(np.ascontiguousarray(batch[:, 1:2]))

    centre.metadata, centre.required_multiple = metadata, 8
    geometry = SliceGeometry.from_direction(np.eye(3).ravel())
    grid = plan_model_grid((1.0, 1.0, 1.0), metadata)
    result = predict_volume(ramp, geometry, centre, fit_normalization(metadata.normalization, ramp), 4, want_confidence=True, grid=grid)
    assert sum(calls) == 10
    bright = result.labels[:, 8, 8].astype(bool)
    assert not bright[:20].any() and bright[20:].all()  # the ramp crosses 0 HU (probability 0.5) between slices 19 and 20
    # between the first and the last network slice (1.5 and 37.5) the interpolated ramp; beyond them, held
    np.testing.assert_allclose(result.confidence[2:38, 8, 8], (np.abs(np.linspace(0, 1, 40) - 0.5) + 0.5)[2:38], atol=1e-4)
    assert result.confidence[0, 8, 8] == result.confidence[1, 8, 8] and result.confidence[38, 8, 8] == result.confidence[39, 8, 8]

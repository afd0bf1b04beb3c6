"""Training interactive networks by simulated clicks (``unetseg train --interactive object|joint``,
training/interactive_trainer.py and interactive_simulation.py), on the real slicerio chest CT and its
segmentation: what a batch's simulated guidance is, what the checkpoint records, and that the engine
loads the result as an interactive model (interactive/predictor.py). Tiny runs: seconds."""

from __future__ import annotations

import numpy as np
import pytest

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.interactive.guidance import GuidanceSpec
from UNetSegmentationLib.training.train_options import NO_GUIDANCE_DEFAULTS, PSEUDO_OBJECTS_DEFAULT, TrainOptions

FAST = ("--threads", "1", "--progress", "none", "--device", "cpu")
TINY = ("--features", "4,8,16", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--crop", "32", "--seed", "0")


@pytest.fixture(scope="module")
def chest_labels(chest_segmentation_path) -> np.ndarray:
    """Channel indices of four slices of the real segmentation (ribs, vertebrae, lungs, tissue: 1..7)."""
    import slicerio

    voxels = slicerio.read_segmentation(str(chest_segmentation_path))["voxels"]
    return np.stack([voxels[:, :, k] for k in (12, 16, 20, 24)]).astype(np.int64)


def simulation(mode: str, no_guidance: float):
    from UNetSegmentationLib.training.interactive_simulation import GuidanceSimulation

    return GuidanceSimulation(mode, GuidanceSpec(), (3.0, 3.0), 10.0, no_guidance)


def merged_masks(count: int, unknown=()) -> np.ndarray:
    merged = np.zeros((count, 8), dtype=bool)
    merged[:, [0, *unknown]] = True
    return merged


def test_a_guided_object_sample_gets_a_positive_click_on_its_object_and_that_object_as_its_target(chest_labels):
    images = np.zeros((4, 3) + chest_labels.shape[1:], dtype=np.float32)
    inputs, targets = simulation("object", 0.0).guide(images, chest_labels, merged_masks(4), np.random.default_rng(3))
    assert inputs.shape == (4, 6) + chest_labels.shape[1:] and inputs.dtype == np.float32
    for sample in range(4):
        target = targets[sample].astype(bool)
        classes = np.unique(chest_labels[sample][target])
        assert len(classes) == 1 and classes[0] > 0  # one labelled class: the object
        positive = inputs[sample, 4]
        assert inputs[sample, 3:].any()  # a previous mask (a corrupted truth), clicks, or both
        if positive.any():
            assert target[positive > 0].any()  # at the centre of a missed part of it


def test_without_guidance_an_object_network_learns_that_nothing_was_asked(chest_labels):
    images = np.zeros((4, 3) + chest_labels.shape[1:], dtype=np.float32)
    inputs, targets = simulation("object", 1.0).guide(images, chest_labels, merged_masks(4), np.random.default_rng(0))
    assert not inputs[:, 3:].any() and not targets.any()


def test_the_joint_network_keeps_the_label_map_as_target_and_unknown_classes_are_never_objects(chest_labels):
    images = np.zeros((4, 3) + chest_labels.shape[1:], dtype=np.float32)
    _, targets = simulation("joint", 0.0).guide(images, chest_labels, merged_masks(4), np.random.default_rng(0))
    assert np.array_equal(targets, chest_labels)
    only_lungs_known = merged_masks(4, unknown=(1, 2, 3, 4, 7))
    _, objects = simulation("object", 0.0).guide(images, chest_labels, only_lungs_known, np.random.default_rng(1))
    assert set(np.unique(chest_labels[objects.astype(bool)])) <= {5, 6}


def test_fed_back_predictions_become_the_previous_mask_and_call_for_more_clicks(chest_labels, monkeypatch):
    from UNetSegmentationLib.training import interactive_simulation

    monkeypatch.setattr(interactive_simulation, "FEEDBACK_SHARE", 1.0)
    images = np.zeros((4, 3) + chest_labels.shape[1:], dtype=np.float32)
    before = []

    def predict(inputs, objects):  # the network found nothing anywhere
        before.append(inputs.copy())
        assert all(chest_labels[i][chest_labels[i] == o].size for i, o in enumerate(objects))  # each sample's object is in it
        return np.full((4,) + chest_labels.shape[1:], 0.25, dtype=np.float32)

    inputs, targets = simulation("object", 0.0).guide(images, chest_labels, merged_masks(4), np.random.default_rng(0), predict)
    assert before
    assert np.all(inputs[:, 3] == 0.25)  # the previous mask is the network's own probability
    clicks_before = (before[0][:, 4] > 0).sum() + (before[0][:, 5] > 0).sum()
    assert (inputs[:, 4] > 0).sum() > (before[0][:, 4] > 0).sum()  # nothing found: positive clicks added
    assert clicks_before > 0 and not (inputs[:, 5] > 0).sum() < (before[0][:, 5] > 0).sum()


def test_interactive_options_are_checked_before_any_work(tmp_path):
    with pytest.raises(UserError, match="--interactive must be one of"):
        TrainOptions(tmp_path / "m.safetensors", interactive="scribble")
    with pytest.raises(UserError, match="needs --interactive"):
        TrainOptions(tmp_path / "m.safetensors", no_guidance=0.2)
    with pytest.raises(UserError, match="cannot start from --init"):
        TrainOptions(tmp_path / "m.safetensors", interactive="object", init="bundled")
    with pytest.raises(UserError, match="--no-guidance"):
        TrainOptions(tmp_path / "m.safetensors", interactive="object", no_guidance=1.5)
    with pytest.raises(UserError, match="needs --interactive object"):
        TrainOptions(tmp_path / "m.safetensors", pseudo_objects=0.5)
    with pytest.raises(UserError, match="use it with --interactive object"):
        TrainOptions(tmp_path / "m.safetensors", interactive="joint", pseudo_objects=0.5)
    with pytest.raises(UserError, match="--pseudo-objects"):
        TrainOptions(tmp_path / "m.safetensors", interactive="object", pseudo_objects=-0.1)
    options = TrainOptions(tmp_path / "m.safetensors", interactive="joint")
    assert options.to_arguments()[:3] == ["train", "--interactive", "joint"]
    assert options.to_config().no_guidance == NO_GUIDANCE_DEFAULTS["joint"] and options.to_config().pseudo_objects == 0.0
    object_options = TrainOptions(tmp_path / "m.safetensors", interactive="object", pseudo_objects=0.25)
    assert object_options.to_config().pseudo_objects == 0.25 and object_options.to_arguments()[-3:-1] == ["--pseudo-objects", "0.25"]
    assert TrainOptions(tmp_path / "m.safetensors", interactive="object").to_config().pseudo_objects == PSEUDO_OBJECTS_DEFAULT


@pytest.fixture(scope="module")
def chest_slices(chest_ct_path) -> np.ndarray:
    """The real slicerio CT's slices 12..20, normalised as the bundled models normalise CT (-1000…1000 HU → [0, 1])."""
    import SimpleITK as sitk

    values = sitk.GetArrayFromImage(sitk.ReadImage(str(chest_ct_path))).astype(np.float32)[12:21]
    return np.clip((values + 1000.0) / 2000.0, 0.0, 1.0)


def test_a_pseudo_object_is_one_connected_region_of_like_intensity_in_tissue_of_a_plausible_size(chest_slices):
    from scipy import ndimage

    from UNetSegmentationLib.training import pseudo_objects as po

    rng = np.random.default_rng(0)
    found = 0
    for image in chest_slices:
        region = po.pseudo_object(image, rng, (3.05, 3.05))
        if region is None:
            continue
        found += 1
        assert ndimage.label(region)[1] == 1  # one structure
        assert po.MIN_AREA_MM2 / 3.05 ** 2 <= region.sum() <= po.MAX_SHARE * region.size
        values = ndimage.gaussian_filter(image, 1.0)[region]
        like = np.abs(values - np.median(values)) <= 2 * po.TOLERANCE[1]
        assert like.mean() >= 0.8  # of like intensity (filled holes may hold other values: a vessel in an organ)
        assert np.median(values) > po.SEED_RANGE[0] - po.TOLERANCE[1]  # tissue, not the air around the body
    assert found >= len(chest_slices) // 2


def test_pseudo_objects_replace_labelled_objects_for_their_share_of_an_object_networks_samples(chest_labels, chest_slices):
    from UNetSegmentationLib.training.interactive_simulation import GuidanceSimulation

    images = np.repeat(chest_slices[:4, None], 3, axis=1)[..., :chest_labels.shape[1], :chest_labels.shape[2]]
    everything = GuidanceSimulation("object", GuidanceSpec(), (3.0, 3.0), 10.0, 0.0, pseudo_objects=1.0)
    _, targets = everything.guide(images, chest_labels, merged_masks(4), np.random.default_rng(2))
    def a_labelled_mask(target: np.ndarray, labels: np.ndarray) -> bool:
        """Whether ``target`` is exactly the mask of one class of ``labels``."""
        inside = np.unique(labels[target.astype(bool)])
        return len(inside) == 1 and np.array_equal(target.astype(bool), labels == inside[0])

    assert any(targets[i].any() and not a_labelled_mask(targets[i], chest_labels[i]) for i in range(4))  # a pseudo-object
    _, labelled = GuidanceSimulation("object", GuidanceSpec(), (3.0, 3.0), 10.0, 0.0).guide(images, chest_labels, merged_masks(4), np.random.default_rng(2))
    for sample in range(4):  # without them, every target is one labelled class's mask
        assert len(np.unique(chest_labels[sample][labelled[sample].astype(bool)])) == 1


def test_an_object_network_trains_and_loads_as_the_interactive_model(cli, chest_ct_path, chest_segmentation_path, tmp_path):
    from UNetSegmentationLib.interactive.predictor import InteractiveModel
    from UNetSegmentationLib.model.header import read_metadata

    output = tmp_path / "interactive.safetensors"
    result = cli("train", "--interactive", "object", "--image", chest_ct_path, "--label", chest_segmentation_path, *TINY, *FAST, output)
    assert result.code == 0, result.stderr
    metadata = read_metadata(output)
    assert metadata.role == "interactive" and [c.name for c in metadata.classes] == ["object"]
    assert metadata.kwargs["in_channels"] == 2 * metadata.context + 1 + 3 and metadata.kwargs["out_channels"] == 1
    assert GuidanceSpec.from_dict(metadata.guidance) == GuidanceSpec()
    record = metadata.training["interactive"]
    assert record["mode"] == "object" and record["no_guidance"] == NO_GUIDANCE_DEFAULTS["object"] and "right lung" in record["automatic_classes"]
    assert "role           interactive" in cli("info", output).stdout
    model = InteractiveModel.load(output)
    assert model.spacing == tuple(metadata.training_spacing[-2:]) and model.slice_distance == metadata.slice_distance
    probabilities = model.predict(np.zeros((2, 3, 37, 41), np.float32), np.zeros((2, 3, 37, 41), np.float32))
    assert probabilities.shape == (2, 37, 41) and probabilities.dtype == np.float32 and 0 <= probabilities.min() <= probabilities.max() <= 1


def test_a_joint_network_is_validated_with_zero_guidance_and_is_not_a_refinement_model(cli, chest_ct_path, chest_segmentation_path, tmp_path):
    from UNetSegmentationLib.interactive.predictor import InteractiveModel
    from UNetSegmentationLib.model.header import read_metadata

    output = tmp_path / "joint.safetensors"
    result = cli("train", "--interactive", "joint", "--image", chest_ct_path, "--label", chest_segmentation_path, "--val-slices", "0.2", *TINY, *FAST, output)
    assert result.code == 0, result.stderr
    metadata = read_metadata(output)
    assert metadata.role == "interactive" and len(metadata.classes) == 7 and metadata.kwargs["out_channels"] == 8
    assert metadata.training["validation"]["dice"] is not None  # the automatic role's Dice, without guidance
    with pytest.raises(UserError, match="joint interactive model"):
        InteractiveModel.load(output)
    with pytest.raises(UserError, match="not an interactive model"):
        InteractiveModel.load(cli("create", "--arch", "unet", "--classes", "liver", "--features", "4,8", tmp_path / "auto.safetensors") and tmp_path / "auto.safetensors")


@pytest.mark.onnx
def test_the_interactive_model_runs_through_its_checked_onnx_export_with_the_same_probabilities(cli, chest_ct_path, chest_segmentation_path, tmp_path):
    from UNetSegmentationLib.backends.device import onnx_runtime_available
    from UNetSegmentationLib.interactive.predictor import InteractiveModel

    if not onnx_runtime_available():
        pytest.skip("ONNX Runtime is not installed")
    output = tmp_path / "interactive.safetensors"
    assert cli("train", "--interactive", "object", "--image", chest_ct_path, "--label", chest_segmentation_path, *TINY, *FAST, output).code == 0
    torch_model, onnx_model = InteractiveModel.load(output), InteractiveModel.load(output, backend="onnx")
    assert (torch_model.backend, onnx_model.backend) == ("torch", "onnx") and onnx_model.spec == torch_model.spec
    rng = np.random.default_rng(0)
    images, guidance = rng.random((2, 3, 45, 51), dtype=np.float32), rng.random((2, 3, 45, 51), dtype=np.float32)
    assert np.abs(onnx_model.predict(images, guidance) - torch_model.predict(images, guidance)).max() < 1e-4
    assert InteractiveModel.load(output, backend="auto").backend == "onnx"  # the cached export, reused
    with pytest.raises(UserError, match="torch, onnx or auto"):
        InteractiveModel.load(output, backend="tensorrt")

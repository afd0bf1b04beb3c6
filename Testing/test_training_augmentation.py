"""The many-organ model's training options (issue 24): the acquisition augmentations chosen by
leave-one-patient-out measurement, the 2.5D neighbours' distance, and a class table with colours and
terminology. Each transform is checked on a real 2.5D crop of the slicerio chest CT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from UNetSegmentationLib.cli.main import build_parser
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.training.sampling import AugmentOptions
from UNetSegmentationLib.training.simulated_acquisition import RandFieldOfViewCut, RandThickSlice
from UNetSegmentationLib.training.train_options import TrainOptions


@pytest.fixture(scope="module")
def chest_crop(chest_ct_path):
    """Slices 15–17 of the chest CT (a 2.5D input, normalised to [0, 1]) and a label of its body."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(chest_ct_path))).astype(np.float32)
    image = np.clip((array[15:18, 16:112, 16:112] + 1000.0) / 2000.0, 0.0, 1.0)
    label = (array[16:17, 16:112, 16:112] > -500).astype(np.float32)
    return image, label


# --- simulated acquisition ------------------------------------------------------------------------------


def test_a_thick_slice_mixes_the_neighbours_into_the_centre_only(chest_crop):
    image, label = chest_crop
    transform = RandThickSlice(keys="image", prob=1.0, thickness=1.0)
    transform.set_random_state(seed=3)
    out = transform({"image": image, "label": label})
    weight = transform._weight
    assert 0.0 < weight <= 1.0
    np.testing.assert_allclose(out["image"][1], (1 - weight) * image[1] + weight * (image[0] + image[2]) / 2, atol=1e-6)
    np.testing.assert_array_equal(out["image"][[0, 2]], image[[0, 2]])
    np.testing.assert_array_equal(out["label"], label)


def test_a_field_of_view_cut_blanks_one_side_and_its_labels(chest_crop):
    image, label = chest_crop
    transform = RandFieldOfViewCut("image", "label", prob=1.0, depth=0.3)
    for seed in range(8):
        transform.set_random_state(seed=seed)
        out = transform({"image": image, "label": label})
        blank = (out["image"] == 0.0).all(axis=0) & (out["label"][0] == 0)
        changed = (out["image"] != image).any(axis=0) | (out["label"][0] != label[0])
        assert changed.any() and blank[changed].all()  # only the cut band changed, and it is air and background
        rows, columns = np.nonzero(changed)
        edge = rows.min() == 0 or rows.max() == image.shape[1] - 1 or columns.min() == 0 or columns.max() == image.shape[2] - 1
        assert edge, "the cut starts at a border of the crop"
        assert changed.sum() <= 0.31 * changed.size


def test_the_acquisition_candidates_are_off_by_default_and_each_switches_on_its_transform():
    assert [type(t).__name__ for t in AugmentOptions().transforms().transforms] == ["RandAffined", "RandScaleIntensityd", "RandShiftIntensityd"]
    on = AugmentOptions(contrast=0.3, noise=0.03, low_resolution=0.4, thickness=0.5, cut=0.2).transforms().transforms
    assert [type(t).__name__ for t in on][3:] == ["RandAdjustContrastd", "RandSimulateLowResolutiond", "RandThickSlice", "RandGaussianNoised", "RandFieldOfViewCut"]


def test_all_augmentations_keep_a_crops_shape_type_and_label_values(chest_crop):
    image, label = chest_crop
    compose = AugmentOptions(contrast=0.3, noise=0.03, low_resolution=0.4, thickness=0.5, cut=0.5, prob=1.0).transforms()
    compose.set_random_state(seed=0)
    for _ in range(5):
        out = compose({"image": image.copy(), "label": label.copy()})
        assert np.asarray(out["image"]).shape == image.shape and np.isfinite(np.asarray(out["image"])).all()
        assert set(np.unique(np.rint(np.asarray(out["label"])))) <= {0.0, 1.0}


# --- options -----------------------------------------------------------------------------------------------


def test_the_new_options_round_trip_through_the_command_line():
    options = TrainOptions("m.safetensors", datalist="d.json", contrast=0.3, noise=0.03, low_resolution=0.4, thickness=0.5, cut=0.2, slice_distance=5.0)
    arguments = options.to_arguments()
    assert arguments[:3] == ["train", "--datalist", "d.json"]
    assert TrainOptions.from_namespace(build_parser().parse_args(arguments)) == options
    config = options.to_config()
    assert config.slice_distance == 5.0 and config.augment.cut == 0.2 and config.augment.thickness == 0.5


@pytest.mark.parametrize("changes, named", [
    ({"cut": 1.5}, "--cut"), ({"noise": -0.1}, "--noise"), ({"contrast": 0.95}, "--contrast"), ({"low_resolution": 1.0}, "--low-resolution"),
    ({"thickness": 2.0}, "--thickness"), ({"slice_distance": 0.0}, "--slice-distance"),
    ({"slice_distance": 5.0, "init": "base.safetensors", "image": "a", "label": "b"}, "--slice-distance"),
])
def test_bad_values_are_one_message_naming_the_option(changes, named):
    data = {} if "init" in changes else {"datalist": "d.json"}  # a fine-tuning names its image and label instead
    with pytest.raises(UserError, match=named):
        TrainOptions("m.safetensors", **data, **changes)


def test_a_class_table_gives_the_classes_their_values_colours_and_terminology(tmp_path):
    table = [{"value": 1, "name": "liver", "color": [0.8, 0.5, 0.4],
              "terminology": {"contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
                              "category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]}},
             {"value": 2, "name": "spleen", "color": [0.6, 0.4, 0.6]}]
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(table))
    config = TrainOptions("m.safetensors", datalist="d.json", classes=str(path)).to_config()
    assert config.classes == ["liver", "spleen"] and config.class_table[0]["terminology"]["type"][2] == "Liver"
    path.write_text(json.dumps([{"value": 0, "name": "x", "color": [0, 0, 0]}]))
    with pytest.raises(UserError, match="label value"):
        TrainOptions("m.safetensors", datalist="d.json", classes=str(path)).to_config()

"""Training at one in-plane spacing, recorded in the checkpoint (issue 14, item 1), as a specification.

- ``unetseg train`` resamples every volume's slices (image and labels) to one target spacing: by default
  the median in-plane spacing of the training images, ``--spacing ROW[,COL]`` to set it, ``--spacing
  native`` to keep each grid as given; a fine-tuning run (``--init``) trains at its base's spacing.
- The checkpoint records the target as ``training_spacing`` (row, column) and the median slice spacing
  of the training images as ``slice_distance``.
- Images are resampled in raw intensity units (the intensity mapping comes after, as in ``predict``);
  labels keep their anatomy's size in millimetres; volumes are resampled slab by slab.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from support import create_checkpoint, make_volume

FAST = ("--threads", "1", "--progress", "none", "--device", "cpu")


def write_case(folder, name, spacing, size=(40, 36, 12)):
    """A CT-like volume of ``spacing`` (i, j, k) mm and its label map (1 'body', 2 'bone')."""
    image = make_volume(size=size, spacing=spacing)
    array = sitk.GetArrayFromImage(image)
    labels = (array > -500).astype(np.uint8) + (array > 400).astype(np.uint8)
    label = sitk.GetImageFromArray(labels)
    label.CopyInformation(image)
    sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
    sitk.WriteImage(label, str(folder / f"{name}_label.nrrd"))
    return {"image": f"{name}.nrrd", "label": f"{name}_label.nrrd"}


@pytest.fixture(scope="module")
def two_spacings(tmp_path_factory):
    """Two cases of the same anatomy: 0.8x0.8x3 mm (40x36 voxels) and 1.6x1.6x5 mm (20x18 voxels)."""
    folder = tmp_path_factory.mktemp("spacings")
    items = [write_case(folder, "fine", (0.8, 0.8, 3.0)), write_case(folder, "coarse", (1.6, 1.6, 5.0), size=(20, 18, 12))]
    (folder / "datalist.json").write_text(json.dumps({"training": items}))
    return folder


def training_data(folder, **config):
    from UNetSegmentationLib.training.cases import cases_from_datalist
    from UNetSegmentationLib.training.config import TrainConfig
    from UNetSegmentationLib.training.dataset import load_training_data

    cases = cases_from_datalist(folder / "datalist.json")
    return load_training_data(TrainConfig(classes=["body", "bone"], crop=(16, 16), **config), cases, [], None)


def test_every_volume_is_resampled_to_the_median_in_plane_spacing_and_the_geometry_is_recorded(two_spacings):
    data = training_data(two_spacings)
    assert data.metadata.training_spacing == pytest.approx([1.2, 1.2])  # the median of 0.8 and 1.6
    assert data.metadata.slice_distance == pytest.approx(4.0)  # the median of 3 and 5 mm
    fine, coarse = data.volumes
    # the same 28.8 x 32 mm field of view, now in 1.2 mm pixels: 24 x 27 (rows along j, columns along i)
    assert fine.slices.shape == coarse.slices.shape == (12, 24, 27)
    assert fine.spacing[1:] == pytest.approx((1.2, 32 / 27))
    assert fine.source_spacing == pytest.approx((3.0, 0.8, 0.8)) and fine.source_shape == (36, 40)
    # raw HU, not normalised: the mapping comes after resampling, as in predict
    assert fine.slices.dtype == np.float32 and fine.slices.min() < -900 and fine.slices.max() > 500
    # labels resampled with the image: the body keeps its area in mm² (within a pixel's rim)
    area = [np.count_nonzero(v.targets[6] >= 1) * v.spacing[1] * v.spacing[2] for v in data.volumes]
    assert area[0] == pytest.approx(area[1], rel=0.1)
    assert set(np.unique(fine.targets)) == {0, 1, 2}


def test_the_2_5d_neighbours_lie_the_slice_distance_away_in_every_volume(two_spacings):
    """Slices 3 mm and 5 mm apart, a slice distance of 4 mm: neighbours 4/3 and 4/5 slices away (interpolated),
    as predict takes them."""
    from UNetSegmentationLib.inference.slicing import gather_context

    fine, coarse = training_data(two_spacings).volumes
    assert fine.context_step == pytest.approx(4 / 3) and coarse.context_step == pytest.approx(4 / 5)
    neighbours = gather_context(fine.slices, np.array([6]), 1, fine.context_step)[0]
    expected_above = fine.slices[7] + (fine.slices[8] - fine.slices[7]) / 3.0
    np.testing.assert_allclose(neighbours[2], expected_above, rtol=1e-5, atol=1e-3)


def test_spacing_option_sets_the_target_or_keeps_the_grids_native(two_spacings):
    data = training_data(two_spacings, spacing=[2.0, 2.0])
    assert data.metadata.training_spacing == [2.0, 2.0]
    assert [v.slices.shape[1:] for v in data.volumes] == [(14, 16), (14, 16)]
    native = training_data(two_spacings, spacing="native")
    assert [v.slices.shape[1:] for v in native.volumes] == [(36, 40), (18, 20)]
    assert native.spacing is None and native.metadata.training_spacing == pytest.approx([1.2, 1.2])


def test_a_volume_already_at_the_target_is_not_copied(two_spacings):
    data = training_data(two_spacings, spacing=[0.8, 0.8])
    fine = data.volumes[0]
    assert fine.source_spacing is None and fine.slices.dtype == np.int16  # the view of the stored voxels


def test_volumes_are_resampled_slab_by_slab(two_spacings):
    from UNetSegmentationLib.inference.resolution import resample_images
    from UNetSegmentationLib.training.spacing import resample_volume

    native = training_data(two_spacings, spacing="native").volumes[0]
    calls = []

    def recording(batch, size):
        calls.append(batch.shape)
        return resample_images(batch, size)

    resampled = resample_volume(native, (1.2, 1.2), 3, slab_slices=5, images=recording)
    assert [shape[0] for shape in calls] == [5, 5, 2]  # 12 slices, five at a time: one slab in float32 at once
    assert resampled.slices.shape == (12, 24, 27)


def test_the_checkpoint_records_the_training_spacing_and_slice_distance(cli, two_spacings, tmp_path):
    from UNetSegmentationLib.model.checkpoint import read_metadata

    out = tmp_path / "m.safetensors"
    result = cli("train", "--datalist", two_spacings / "datalist.json", "--classes", "body,bone", "--features", "4,8", "--crop", "16",
                 "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "1", "--spacing", "1.5", *FAST, "--progress", "json", out)
    assert result.code == 0, result.stderr
    metadata = read_metadata(out)
    assert metadata.training_spacing == [1.5, 1.5] and metadata.slice_distance == pytest.approx(4.0)
    assert metadata.in_plane_spacing == (1.5, 1.5) and metadata.context_distance == pytest.approx(4.0)
    assert result.start["spacing"] == [1.5, 1.5]
    logs = [e["message"] for e in result.events if e["event"] == "log"]
    assert any("resampled in-plane from 0.8x0.8 mm (36x40) to" in m for m in logs), logs
    assert metadata.training["data"]["training"][0]["spacing"] == pytest.approx([3.0, 0.8, 0.8])


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1,2,3", "nan"])
def test_a_bad_spacing_stops_before_any_work(cli, two_spacings, tmp_path, value):
    out = tmp_path / "m.safetensors"
    result = cli("train", "--datalist", two_spacings / "datalist.json", "--classes", "body,bone", "--spacing", value, *FAST, out)
    assert result.code == 2 and "--spacing must be" in result.stderr and not out.exists()


def test_fine_tuning_trains_at_the_base_models_spacing(cli, two_spacings, tmp_path):
    from UNetSegmentationLib.model.checkpoint import read_metadata

    base = create_checkpoint(tmp_path / "base.safetensors", classes="body,bone", features="4,8")
    metadata = read_metadata(base)
    metadata.training_spacing, metadata.slice_distance = [2.0, 2.0], 6.0
    from UNetSegmentationLib.model.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(base, load_checkpoint(base).state_dict, metadata, overwrite=True)
    out = tmp_path / "tuned.safetensors"
    result = cli("train", "--datalist", two_spacings / "datalist.json", "--init", base, "--crop", "16", "--batch-size", "2",
                 "--epochs", "1", "--steps-per-epoch", "1", *FAST, "--progress", "json", out)
    assert result.code == 0, result.stderr
    assert result.start["spacing"] == [2.0, 2.0]
    tuned = read_metadata(out)
    assert tuned.training_spacing == [2.0, 2.0] and tuned.slice_distance == 6.0  # the base's 2.5D context distance
    refused = cli("train", "--datalist", two_spacings / "datalist.json", "--init", base, "--spacing", "1", *FAST, tmp_path / "x.safetensors")
    assert refused.code == 2 and "leave out --spacing" in refused.stderr

"""Issue 25: the work around the network removed without changing the labels.

Each shortcut is checked against the computation it replaces: the thin-slice path decides each network
position once and blends the channels only where two positions' choices differ; the body's boxes are
grown as boxes (not a dilated mask); the same labels and confidence come out.
"""

from __future__ import annotations

import numpy as np
import pytest

from UNetSegmentationLib.inference.decision import blended_decision, decided_in_numpy


@pytest.mark.parametrize("channels", [1, 2, 8])
def test_a_blend_decided_from_the_two_decisions_is_the_decision_of_the_blend(channels):
    """Where two probability maps choose the same channel their blend chooses it too; elsewhere the
    channels are blended: labels and confidence equal deciding the whole blend, for every weight."""
    rng = np.random.default_rng(channels)
    shape = (channels, 64, 48)
    lower, upper = (rng.dirichlet(np.ones(channels), size=shape[1:]).transpose(2, 0, 1).astype(np.float32) if channels > 1 else rng.random(shape, dtype=np.float32) for _ in range(2))
    upper[:, :32] = lower[:, :32] * 0.9 + 0.1 * upper[:, :32]  # half the plane: the same choice on both sides
    sides = [(p, *(a[0] for a in decided_in_numpy(p[None]))) for p in (lower, upper)]
    for weight in (0.0, 0.125, 0.5, 0.875, 1.0):
        chosen, confidence = blended_decision(sides[0], sides[1], weight)
        expected_chosen, expected_confidence = decided_in_numpy((lower + np.float32(weight) * (upper - lower))[None])
        assert (chosen == expected_chosen[0]).all()
        np.testing.assert_allclose(confidence, expected_confidence[0], atol=1e-6)


def _smooth_probabilities(channels: int, shape, seed: int) -> np.ndarray:
    """``(K, h, w)`` float32 probabilities with structures of a few pixels (softmax of smoothed noise; one sigmoid channel for K = 1)."""
    from scipy.ndimage import gaussian_filter

    logits = gaussian_filter(np.random.default_rng(seed).normal(size=(channels,) + tuple(shape)) * 6, (0, 2, 2))
    if channels == 1:
        return (1 / (1 + np.exp(-4 * logits))).astype(np.float32)
    logits[0] += 1.5  # mostly background, as a body is
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


@pytest.mark.parametrize("channels, model, size", [(8, (96, 112), (381, 450)), (3, (40, 30), (17, 95)), (1, (48, 48), (150, 190)), (5, (64, 64), (64, 64))])
def test_the_decision_made_on_the_model_grid_is_that_of_every_channel_resampled(channels, model, size):
    """Deciding on the model grid, resampling the confidence and the K channels only where the four model
    pixels around an input pixel disagree (inference/grid_decision.py) gives the labels and confidence of
    resampling all K channels onto the input's pixels and deciding there, bit for bit; and any input
    pixel's K resampled probabilities on demand, as the thin-slice path blends them."""
    from UNetSegmentationLib.inference.grid_decision import decide_on_input_grid
    from UNetSegmentationLib.inference.resolution import bilinear

    probabilities = _smooth_probabilities(channels, model, channels)
    resampled = bilinear(probabilities[None], size)
    expected_chosen, expected_confidence = decided_in_numpy(resampled)
    decision = decide_on_input_grid(probabilities, size)
    np.testing.assert_array_equal(decision.chosen, expected_chosen[0])
    np.testing.assert_array_equal(decision.confidence, expected_confidence[0])
    ys, xs = np.random.default_rng(0).integers(0, size[0], 500), np.random.default_rng(1).integers(0, size[1], 500)
    np.testing.assert_array_equal(decision.probabilities_at(ys, xs), resampled[0][:, ys, xs])


@pytest.mark.parametrize("case", ["a third channel wins between two", "exact ties", "noise"])
def test_a_mixed_pixel_decided_on_two_channels_is_decided_as_on_all_of_them(case, monkeypatch):
    """Where a cell's four model pixels choose two channels, those two decide its input pixels unless another
    channel comes close (grid_decision._decided_where_mixed): a third channel that wins between two corners
    that both reject it (decided on all channels), ties between the two (decided on the two; the lower channel
    wins), and per-pixel noise (both ways) all give the labels and confidence of resampling every channel."""
    from UNetSegmentationLib.inference.grid_decision import GridDecision, decide_on_input_grid
    from UNetSegmentationLib.inference.resolution import bilinear

    resampled_pixels = {"two channels": 0, "all channels": 0}  # which way the mixed pixels went
    for method, way in (("channels_at", "two channels"), ("probabilities_at", "all channels")):
        def counted(self, ys, *args, _original=getattr(GridDecision, method), _way=way, **kwargs):
            resampled_pixels[_way] += len(ys)
            return _original(self, ys, *args, **kwargs)
        monkeypatch.setattr(GridDecision, method, counted)
    if case == "a third channel wins between two":  # (0.55, 0, 0.45) beside (0, 0.55, 0.45): 0.45 wins halfway
        left, right = [0.55, 0.0, 0.45], [0.0, 0.55, 0.45]
    elif case == "exact ties":  # a quarter of the way (a weight an upsampling by 2 samples at): 0.5 and 0.5, exactly
        left, right = [0.625, 0.375, 0.0], [0.125, 0.875, 0.0]
    if case == "noise":
        probabilities = np.random.default_rng(3).dirichlet(np.ones(6), size=(12, 10)).transpose(2, 0, 1).astype(np.float32)
    else:
        probabilities = np.array([[left, right, left, right]] * 4, dtype=np.float32).transpose(2, 0, 1)  # (3, 4, 4) stripes
    size = (probabilities.shape[1] * 2, probabilities.shape[2] * 2)
    resampled = bilinear(probabilities[None], size)
    expected_chosen, expected_confidence = decided_in_numpy(resampled)
    decision = decide_on_input_grid(probabilities, size)
    np.testing.assert_array_equal(decision.chosen, expected_chosen[0])
    np.testing.assert_array_equal(decision.confidence, expected_confidence[0])
    if case == "exact ties":
        assert (resampled[0, 0] == resampled[0, 1]).any()
        assert resampled_pixels["two channels"] > 0 and resampled_pixels["all channels"] == 0
    if case == "a third channel wins between two":
        assert (decision.chosen == 2).any()
        assert resampled_pixels["two channels"] == 0 and resampled_pixels["all channels"] > 0
    if case == "noise":
        assert resampled_pixels["two channels"] > 0 and resampled_pixels["all channels"] > 0


@pytest.mark.parametrize("channels", [1, 8])
def test_the_slices_between_two_positions_are_decided_as_their_blend_on_the_union_of_their_boxes(channels):
    """Two network positions with different body boxes (one of them possibly without body): each slice between
    them gets the decision of the blend of the two positions' whole-slice probabilities (background outside a
    box), as blended_decision gives it from whole slices, on the union of the two boxes."""
    from UNetSegmentationLib.inference.grid_decision import decide_on_input_grid
    from UNetSegmentationLib.inference.model_slices import _Position, _PositionPair
    from UNetSegmentationLib.inference.resolution import bilinear

    slice_shape = (120, 140)
    boxes = [(10, 90, 20, 120), (30, 110, 0, 100)]
    positions, whole = [], []
    for n, box in enumerate(boxes):
        size = (box[1] - box[0], box[3] - box[2])
        model = _smooth_probabilities(channels, (size[0] // 3, size[1] // 3), 10 + n)
        positions.append(_Position(box, decide_on_input_grid(model, size)))
        plane = np.zeros((channels,) + slice_shape, dtype=np.float32)
        if channels > 1:
            plane[0] = 1.0
        plane[:, box[0]:box[1], box[2]:box[3]] = bilinear(model[None], size)[0]
        whole.append((plane, *(a[0] for a in decided_in_numpy(plane[None]))))
    empty = np.zeros((channels,) + slice_shape, dtype=np.float32)
    if channels > 1:
        empty[0] = 1.0
    nothing = (empty, *(a[0] for a in decided_in_numpy(empty[None])))
    for (lower, upper), (lower_whole, upper_whole) in [((positions[0], positions[1]), (whole[0], whole[1])), ((None, positions[1]), (nothing, whole[1]))]:
        pair = _PositionPair(lower, upper, channels)
        r0, r1, c0, c1 = pair.box
        for weight in (0.0, 0.3, 0.5, 0.9, 1.0):
            chosen, confidence = np.full((r1 - r0, c1 - c0), 255, np.uint8), np.full((r1 - r0, c1 - c0), np.nan, np.float32)
            pair.at(weight, chosen, confidence)  # written in place, every pixel
            expected_chosen, expected_confidence = blended_decision(lower_whole, upper_whole, weight)
            np.testing.assert_array_equal(chosen, expected_chosen[r0:r1, c0:c1])
            np.testing.assert_array_equal(confidence, expected_confidence[r0:r1, c0:c1])
            outside = np.ones(slice_shape, dtype=bool)
            outside[r0:r1, c0:c1] = False
            assert (expected_chosen[outside] == 0).all() and (expected_confidence[outside] == 1).all()


@pytest.mark.parametrize("radius", [(0, 0, 0), (1, 2, 3), (4, 1, 1)])
def test_the_body_boxes_grown_as_boxes_are_the_boxes_of_the_dilated_mask(radius):
    """The margin around the body is added to each slice's box and spread over the slices within the
    margin: the same boxes as dilating the coarse mask with SimpleITK's box kernel (what it replaces)."""
    import SimpleITK as sitk

    from UNetSegmentationLib.inference.body import _grown_boxes

    rng = np.random.default_rng(sum(radius))
    mask = np.zeros((30, 20, 24), dtype=bool)
    mask[5:9, 3:6, 10:12] = True
    mask[14, 18:, 0] = True
    mask[rng.integers(0, 30, 6), rng.integers(0, 20, 6), rng.integers(0, 24, 6)] = True
    dilated = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(mask.astype(np.uint8)), [radius[2], radius[1], radius[0]], sitk.sitkBox)).astype(bool)
    boxes = _grown_boxes(mask, radius)
    for index in range(mask.shape[0]):
        rows, columns = np.flatnonzero(dilated[index].any(axis=1)), np.flatnonzero(dilated[index].any(axis=0))
        expected = (rows[0], rows[-1] + 1, columns[0], columns[-1] + 1) if rows.size else None
        found = tuple(boxes[index]) if boxes[index, 1] > boxes[index, 0] else None
        assert found == expected, index


@pytest.mark.parametrize("shape, size", [((4, 3, 360, 452), (90, 113)), ((4, 8, 90, 113), (360, 452)), ((1, 1, 7, 5), (3, 11)), ((2, 2, 128, 128), (128, 97))])
def test_numpy_bilinear_resampling_gives_pytorch_interpolate_values(shape, size):
    """Numpy arrays (the ONNX path) are resampled in numpy, tensors by PyTorch: the same rule
    (``align_corners=False``, edges held), within float rounding, shrinking and enlarging."""
    import torch

    from UNetSegmentationLib.inference.resolution import bilinear

    batch = np.random.default_rng(0).random(shape, dtype=np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(batch), size=size, mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(bilinear(batch, size), expected, atol=1e-5)


def test_an_onnx_run_on_a_clinical_grid_imports_no_pytorch(tmp_path):
    """The ONNX path resamples in numpy: a predict at the model's spacing (a 512-pixel slice of a
    3 mm model) never imports PyTorch, whose import cost more than the whole resampling."""
    import subprocess
    import sys

    import SimpleITK as sitk

    from UNetSegmentationLib.protocol.child_environment import child_environment

    image = sitk.GetImageFromArray(np.full((12, 256, 256), -1000, dtype=np.int16))
    image.SetSpacing((1.5, 1.5, 2.5))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    script = ("import runpy, sys\nsys.argv = ['unetseg', 'predict', sys.argv[1], sys.argv[2], '--backend', 'onnx', '--precision', 'fp32', '--progress', 'none', '--no-crop']\n"
              "try:\n    runpy.run_module('UNetSegmentationLib', run_name='__main__')\nexcept SystemExit as end:\n    assert not end.code, end.code\n"
              "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ct.nrrd"), str(tmp_path / "labels.nrrd")], capture_output=True, text=True, cwd=tmp_path, env=child_environment())
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_compress_chooses_the_measured_level_and_can_be_overridden(tmp_path):
    """``--compress``: auto (a label map at ITK's default level, a float map at level 1: measured, io/compression.py),
    none (an uncompressed NRRD, read back the same), 1-9; anything else one message naming the option;
    a ``.nii.gz`` stays gzipped whatever is asked; the panel's command line carries it."""
    import SimpleITK as sitk

    from UNetSegmentationLib.errors import UserError
    from UNetSegmentationLib.inference.options import SegmentationOptions
    from UNetSegmentationLib.io.compression import level_for, write_arguments
    from UNetSegmentationLib.io.segmentations import write_scalar

    assert SegmentationOptions().compress is None and SegmentationOptions(compress="none").compress == 0 and SegmentationOptions(compress="9").compress == 9
    for bad in ("10", "fast", "-1"):
        with pytest.raises(UserError, match="--compress"):
            SegmentationOptions(compress=bad)
    assert level_for(None, floats=False) == -1 and level_for(None, floats=True) == 1 and level_for(0, floats=True) == 0
    assert write_arguments("a.nii.gz", 0) == {"useCompression": True}
    assert "--compress" in SegmentationOptions(compress="none").to_arguments("in.nrrd", "out.nrrd", "model.safetensors") and "--compress" not in SegmentationOptions().to_arguments("in.nrrd", "out.nrrd", "m")
    reference = sitk.Image(40, 30, 20, sitk.sitkFloat32)
    volume = np.round(np.random.default_rng(0).random((20, 30, 40), dtype=np.float32) * 4) / 4  # a few values, as confidence has
    sizes = {}
    for level in (None, 0, 9):
        path = tmp_path / f"map-{level}.nrrd"
        write_scalar(volume, reference, path, compress=level)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), volume)
        sizes[level] = path.stat().st_size
    assert sizes[0] > sizes[None] >= sizes[9]


@pytest.mark.parametrize("dtype, top", [(np.uint8, 14), (np.uint8, 7), (np.uint16, 63), (np.uint16, 300), (np.int16, 40)])
def test_every_segment_extent_found_in_one_pass_is_the_extent_of_that_value_alone(dtype, top):
    """A .seg.nrrd's Segment{N}_Extent fields: the one-pass extents (bits OR-reduced along each axis) equal each
    value's own mask's, for values present, absent and out of range, below 64 and above it (the per-value scan)."""
    from UNetSegmentationLib.io.segmentations import _label_extent, label_extents

    rng = np.random.default_rng(top)
    labels = np.zeros((37, 41, 29), dtype=dtype)
    for value in range(1, top + 1, 3):  # boxes of every third value, some of them single voxels
        k, j, i = rng.integers(0, 37), rng.integers(0, 41), rng.integers(0, 29)
        labels[k:k + rng.integers(1, 9), j:j + rng.integers(1, 9), i:i + rng.integers(1, 9)] = value
    values = [1, 2, top, top + 1, 0, 65]
    assert label_extents(labels, values) == [_label_extent(labels, v) for v in values]
    assert label_extents(np.zeros((3, 4, 5), dtype=dtype), [1, 2]) == [[0, -1, 0, -1, 0, -1]] * 2

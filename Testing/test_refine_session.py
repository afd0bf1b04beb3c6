"""A refinement session (interactive/session.py, session_grid.py, propagation.py) on the real slicerio chest
CT: a click changes the slice it lies on and answers with that slice's mask on the input's grid; the
model sees only that slice's channels on the model grid; ijk and LPS name the same click; propagation
carries an edit outwards and stops where the object ends, the change is negligible, or the user's own
slice begins; undo puts back exactly what was; a click outside the volume changes nothing.

The network is a stub whose answer is known (Testing/refine_support.py), so the bookkeeping is checked
exactly; one test runs the real InteractiveModel class (untrained) through the same session."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from refine_support import StubModel, interactive_metadata, left_lung, write_tiny_interactive_checkpoint
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.interactive.click_points import clicks_from_points, parse_click
from UNetSegmentationLib.interactive.propagation import PropagationRule, propagate
from UNetSegmentationLib.interactive.session import RefineSession, read_session_input
from UNetSegmentationLib.io.volumes import ijk_to_lps

SLICE = 17  # an axial slice through both lungs (the CT's slices run along k)


@pytest.fixture(scope="module")
def chest(chest_ct_path, chest_segmentation_path):
    """``(image, left lung [k, j, i])`` of the slicerio CT."""
    return read_session_input(chest_ct_path), left_lung(chest_segmentation_path, chest_ct_path)


def lung_centre(lung: np.ndarray, k: int = SLICE) -> list:
    """``[i, j, k]`` of a voxel inside the left lung on slice ``k`` (the deepest one: far from its edge)."""
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(lung[k])
    j, i = np.unravel_index(np.argmax(depth), depth.shape)
    return [float(i), float(j), float(k)]


def test_a_click_changes_only_its_slice_and_answers_its_mask_on_the_input_grid(chest):
    image, lung = chest
    model = StubModel()
    session = RefineSession.open(image, model, lung)
    before = session.mask.copy()
    answer = session.add(parse_click({"ijk": lung_centre(lung), "positive": False}))
    assert answer.slices == [SLICE] and answer.axis == 0  # slices along k: numpy axis 0 of [k, j, i]
    assert answer.masks.shape == (1, 128, 128) and answer.masks.dtype == bool
    assert np.array_equal(answer.masks[0], session.mask[SLICE])
    assert session.mask[SLICE].sum() < before[SLICE].sum()  # the negative click took voxels away
    others = np.ones(34, dtype=bool)
    others[SLICE] = False
    assert np.array_equal(session.mask[others], before[others])
    (images, guidance), = model.calls  # one call: one slice's 2c+1 channels and 3 guidance channels, around the object
    assert images[:2] == (1, 3) and guidance[:2] == (1, 3) and images[2:] == guidance[2:] and images[2] * images[3] < 128 * 128
    assert session.click_latency_ms and session.changed == {SLICE}


def test_ijk_and_lps_name_the_same_click(chest):
    image, lung = chest
    ijk = lung_centre(lung)
    lps = (ijk_to_lps(image) @ np.array(ijk + [1.0]))[:3]
    by_ijk = RefineSession.open(image, StubModel(), lung).add(parse_click({"ijk": ijk, "positive": False}))
    by_lps = RefineSession.open(image, StubModel(), lung).add(parse_click({"lps": lps.tolist(), "positive": False}))
    assert by_ijk.slices == by_lps.slices and np.array_equal(by_ijk.masks, by_lps.masks)


@pytest.mark.parametrize("click", [{"ijk": [130, 10, 5]}, {"ijk": [10, 10, 34]}, {"ijk": [-1, 0, 0]}, {"lps": [0, 0, 1e5]}])
def test_a_click_outside_the_volume_is_one_message_and_changes_nothing(chest, click):
    image, lung = chest
    session = RefineSession.open(image, StubModel(), lung)
    with pytest.raises(UserError, match="lies outside the volume"):
        session.add(parse_click(click))
    assert np.array_equal(session.mask, lung) and not session.clicks and not session.can_undo


def test_undo_puts_back_the_masks_and_the_clicks_of_each_edit_in_turn(chest):
    image, lung = chest
    session = RefineSession.open(image, StubModel(), lung)
    states = [session.mask.copy()]
    session.add(parse_click({"ijk": lung_centre(lung), "positive": False}))
    states.append(session.mask.copy())
    session.propagate()
    states.append(session.mask.copy())
    session.add(clicks_from_points([[20, 60, 20], [30, 60, 20]], positive=True))  # a scribble
    assert len(session.clicks) > 2
    for expected in reversed(states):
        answer = session.undo()
        assert np.array_equal(session.mask, expected) and answer.slices
    assert not session.clicks and not session.edited and not session.pending
    with pytest.raises(UserError, match="nothing to undo"):
        session.undo()


def test_propagation_carries_an_edit_outwards_until_the_object_ends(chest):
    image, _ = chest
    session = RefineSession.open(image, StubModel())  # from nothing
    ijk = [45.0, 64.0, float(SLICE)]  # in the left lung (air)
    session.add(parse_click({"ijk": ijk, "positive": True}))
    answer = session.propagate()
    assert answer.slices and SLICE not in answer.slices
    painted = np.flatnonzero(session.mask.any(axis=(1, 2)))
    assert list(painted) == list(range(painted[0], painted[-1] + 1)) and SLICE in painted  # one run of slices
    air = sitk.GetArrayViewFromImage(image) < -500
    for end, beyond in ((painted[0], painted[0] - 1), (painted[-1], painted[-1] + 1)):
        if 0 <= beyond < 34:  # it stopped where the air under the object ends (or all but a negligible few pixels)
            assert (session.mask[end] & air[beyond]).sum() <= PropagationRule().negligible_pixels
    assert session.propagate().slices == []  # nothing pending any more


def test_propagation_stops_at_the_users_own_slices_and_within_the_limit(chest):
    image, lung = chest
    rule = PropagationRule(max_slices=3)
    session = RefineSession.open(image, StubModel(), lung, rule=rule)
    far, near = 30, SLICE
    session.add(parse_click({"ijk": lung_centre(lung, near), "positive": False}))
    session.add(parse_click({"ijk": lung_centre(lung, far), "positive": False}))  # a click on a far slice corrects from there
    answer = session.propagate()
    assert set(answer.slices) <= set(range(near - 3, near + 4)) | set(range(far - 3, 34))
    assert near not in answer.slices and far not in answer.slices


def test_the_rule_stops_where_the_change_is_negligible_the_object_ends_or_the_answer_would_replace_the_slices_own_mask():
    slices, shape = 10, (8, 8)
    current = np.zeros((slices,) + shape, dtype=np.float32)
    current[:, 2:6, 2:6] = 1.0
    calls = []

    def segment(ks, priors):
        calls.append(list(ks))
        return np.stack(priors)  # each neighbour agrees with the slice before it

    assert propagate(5, slices, current[5].copy(), segment, current.__getitem__, directions=(+1,)) == [] and calls == [[6]]
    calls.clear()
    emptied = propagate(5, slices, np.zeros(shape, np.float32), segment, current.__getitem__)
    assert emptied == [] and calls == [[4, 6]]  # both sides in one call; empty: the object ends, nothing is written
    calls.clear()
    moved = np.zeros(shape, np.float32)
    moved[4:8, 4:8] = 1.0  # overlaps the slices' own 4 x 4 masks by one pixel: a replacement, not a correction
    assert propagate(5, slices, moved, segment, current.__getitem__) == [] and calls == [[4, 6]]
    calls.clear()
    grown = current[5].copy()
    grown[1:7, 1:7] = 1.0
    assert [k for k, _ in propagate(5, slices, grown, segment, current.__getitem__, edited={7}, rule=PropagationRule(max_slices=3))] == [4, 6, 3, 2]
    assert calls == [[4, 6], [3], [2]]  # the side above stops at the user's slice 7, the one below after 3 slices


def test_a_mask_that_grows_on_every_slice_stops_at_twice_the_edited_slices():
    """A network that dilates the previous mask it is given (seen with an early interactive model: a lung
    click grew slice after slice past the lung's end) is stopped before its mask doubles."""
    slices, shape = 12, (40, 40)
    nothing = np.zeros((slices,) + shape, dtype=np.float32)
    source = np.zeros(shape, np.float32)
    source[18:22, 18:22] = 1.0  # 16 pixels

    def dilating(ks, priors):
        from scipy.ndimage import binary_dilation

        return np.stack([binary_dilation(p >= 0.5).astype(np.float32) for p in priors])

    written = propagate(0, slices, source, dilating, nothing.__getitem__, directions=(+1,))
    assert [int((p >= 0.5).sum()) for _, p in written] == [32]  # 16 → 32 (written) → 52 > 2 x 16: stopped
    assert [k for k, _ in written] == [1]


def test_a_512_pixel_copy_runs_on_the_model_grid_and_answers_on_its_own(chest, tmp_path):
    image, _ = chest
    grid = sitk.Image([512, 512, 34], sitk.sitkInt16)
    grid.SetSpacing([image.GetSpacing()[0] / 4, image.GetSpacing()[1] / 4, image.GetSpacing()[2]])
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([-0.375, -0.375, 0.0]))
    fine = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    model = StubModel()
    session = RefineSession.open(fine, model, crop=False)
    answer = session.add(parse_click({"ijk": [45 * 4 + 1.5, 64 * 4 + 1.5, SLICE], "positive": True}))
    assert model.calls[0][0] == (1, 3, 128, 128)  # resampled once to the model's 3.05 mm
    assert answer.masks.shape == (1, 512, 512) and answer.masks[0].sum() > 16 * 4


def test_the_real_interactive_model_runs_in_a_session(chest, tmp_path):
    from UNetSegmentationLib.interactive.predictor import InteractiveModel

    image, lung = chest
    model = InteractiveModel.load(write_tiny_interactive_checkpoint(tmp_path / "interactive.safetensors"))
    session = RefineSession.open(image, model, lung)
    answer = session.add(parse_click({"ijk": lung_centre(lung), "positive": True}))
    assert answer.slices == [SLICE] and answer.masks.shape == (1, 128, 128)
    assert model.metadata.role == "interactive" and interactive_metadata().role == "interactive"


def test_an_automatic_model_or_a_tiny_volume_is_refused_in_one_message(chest, tmp_path, small_unet_one_class):
    from UNetSegmentationLib.interactive.predictor import InteractiveModel

    with pytest.raises(UserError, match="not an interactive model"):
        InteractiveModel.load(small_unet_one_class)
    tiny = sitk.Image([4, 4, 3], sitk.sitkInt16)
    tiny.SetSpacing([3.0, 3.0, 10.0])
    with pytest.raises(UserError, match="too small to refine"):
        RefineSession.open(tiny, StubModel(), source="tiny.nrrd")


def test_the_network_runs_around_the_object_and_the_clicks_with_the_whole_slices_answer(chest):
    """The stub answers pixel by pixel, so a crop that holds the object, the clicks and their surroundings
    gives exactly the whole slice's answer, for a fraction of its pixels."""
    image, lung = chest
    cropped, whole = StubModel(), StubModel()
    sessions = [RefineSession.open(image, cropped, lung), RefineSession.open(image, whole, lung, crop=False)]
    for click in ({"ijk": lung_centre(lung), "positive": False}, {"ijk": [60.0, 100.0, 5.0], "positive": True}):
        answers = [session.add(parse_click(click)) for session in sessions]
        assert np.array_equal(answers[0].masks, answers[1].masks)
    assert np.array_equal(sessions[0].mask, sessions[1].mask)
    assert np.array_equal(sessions[0].propagate().masks, sessions[1].propagate().masks)
    pixels = [sum(int(np.prod(shape[2:])) for shape, _ in model.calls) for model in (cropped, whole)]
    assert pixels[0] < 0.8 * pixels[1]
    idle = StubModel()
    assert RefineSession.open(image, idle)._segment([0], [np.zeros((128, 128), np.float32)]).max() == 0 and idle.calls == []  # nothing near: no call


def test_the_same_click_on_the_same_anatomy_stored_in_another_axis_order_gives_the_same_object(chest):
    """The CT stored with its axes permuted (slices along i, as a sagittally stored file might have them)
    is the same anatomy: the session slices it along the same physical axis, the click at the same point
    lands on the same slice, and the object (and every answer) is the same voxels in the other layout."""
    image, lung = chest
    permuted = sitk.PermuteAxes(image, [2, 0, 1])  # new (i, j, k) = old (k, i, j)
    click = lung_centre(lung)
    ijk = [click[2], click[0], click[1]]
    ours = RefineSession.open(image, StubModel(), lung)
    theirs = RefineSession.open(permuted, StubModel(), np.transpose(lung, (1, 2, 0)))  # [k, j, i] → [j, i, k] layout
    a, b = ours.add(parse_click({"ijk": click, "positive": False})), theirs.add(parse_click({"ijk": ijk, "positive": False}))
    assert b.axis == 2 and b.slices == a.slices == [SLICE] and b.masks.shape == (1, 128, 128)
    assert np.array_equal(theirs.mask, np.transpose(ours.mask, (1, 2, 0))) and np.array_equal(b.masks[0], a.masks[0])
    ours.propagate(), theirs.propagate()
    assert np.array_equal(theirs.mask, np.transpose(ours.mask, (1, 2, 0)))

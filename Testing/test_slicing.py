"""Slices, neighbours and orientation: how a volume becomes 2.5D network input."""

from __future__ import annotations

import numpy as np
import pytest

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.options import parse_axis
from UNetSegmentationLib.inference.slicing import SliceGeometry, context_indices, gather_context, padding_for

from support import rotation_matrix


def numbered_slices(count=5, rows=3, columns=4) -> np.ndarray:
    """Slice s is filled with the value s, so channels show which slice they came from."""
    return np.broadcast_to(np.arange(count)[:, None, None], (count, rows, columns)).astype(np.float32)


def test_first_slice_repeats_itself_for_the_missing_neighbours():
    batch = gather_context(numbered_slices(), np.array([0]), context=2)
    assert batch.shape == (1, 5, 3, 4)
    assert batch[0, :, 0, 0].tolist() == [0, 0, 0, 1, 2]


def test_middle_slice_gets_its_neighbours_in_order():
    assert gather_context(numbered_slices(), np.array([2]), context=1)[0, :, 0, 0].tolist() == [1, 2, 3]


def test_last_slice_repeats_itself_for_the_missing_neighbours():
    assert gather_context(numbered_slices(), np.array([4]), context=1)[0, :, 0, 0].tolist() == [3, 4, 4]


def test_context_zero_is_the_slice_alone_and_one_slice_volumes_work():
    assert context_indices(np.array([0]), 0, 1).tolist() == [[0]]
    assert context_indices(np.array([0]), 1, 1).tolist() == [[0, 0, 0]]


def test_padding_reaches_the_next_multiple():
    assert padding_for((97, 131), 16) == (15, 13)
    assert padding_for((96, 128), 16) == (0, 0)


def test_axial_volume_slices_along_k():
    assert SliceGeometry.from_direction(np.eye(3).ravel()).slice_axis == 2


def test_sagittal_acquisition_slices_along_the_axis_closest_to_superior():
    # stored sagittally: in each slice i runs toward superior and j toward posterior; k steps left
    direction = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)  # columns: i→S, j→P, k→L
    geometry = SliceGeometry.from_direction(direction.ravel())
    assert geometry.slice_axis == 0
    assert (geometry.row_axis, geometry.column_axis) == (1, 2)


def test_oblique_acquisition_slices_along_the_axis_closest_to_superior():
    direction = rotation_matrix(0.35, -0.26, 0.61)
    expected = int(np.argmax(np.abs(direction[2])))
    assert SliceGeometry.from_direction(direction.ravel()).slice_axis == expected


def test_the_same_anatomy_gives_the_same_slices_whatever_the_storage_order():
    """An axial LPS volume and the same voxels stored sagittally with flipped axes are seen identically."""
    rng = np.random.default_rng(1)
    axial = rng.normal(size=(6, 7, 8))  # [k, j, i] with i→L, j→P, k→S
    # store it as [k', j', i'] = [L reversed, P, S]: i' runs S, j' runs P, k' runs toward the right (-L)
    sagittal = axial.transpose(2, 1, 0)[::-1]  # [i reversed, j, k] → new [k', j', i']
    direction = np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], dtype=float)  # columns i'→S, j'→P, k'→-L
    view_axial = SliceGeometry.from_direction(np.eye(3).ravel()).slices_view(axial)
    view_sagittal = SliceGeometry.from_direction(direction.ravel()).slices_view(sagittal)
    np.testing.assert_array_equal(view_axial, view_sagittal)


def test_flipped_storage_is_shown_in_the_canonical_orientation():
    """RAS-stored (i→R, j→A) and LPS-stored slices look the same to the network."""
    lps = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    ras = lps[:, ::-1, ::-1]
    view_lps = SliceGeometry.from_direction(np.eye(3).ravel()).slices_view(lps)
    view_ras = SliceGeometry.from_direction(np.diag([-1.0, -1.0, 1.0]).ravel()).slices_view(ras)
    np.testing.assert_array_equal(view_lps, view_ras)


def test_writes_through_the_slices_view_land_in_the_original_array():
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    geometry = SliceGeometry.from_direction(np.diag([-1.0, 1.0, 1.0]).ravel(), slice_axis=1)
    geometry.slices_view(labels)[2, 0, 0] = 7
    assert np.argwhere(labels).tolist() == [[0, 2, 5]]  # j = 2; i reversed → 5


@pytest.mark.parametrize("text, axis", [("auto", None), (None, None), ("i", 0), ("J", 1), ("2", 2)])
def test_axis_option_names_image_axes(text, axis):
    assert parse_axis(text) == axis


def test_unknown_axis_is_a_clear_error():
    with pytest.raises(UserError, match="--axis"):
        parse_axis("z")

"""Slices, neighbours and orientation: how a volume becomes 2.5D network input (examples, then
properties over every axis-aligned storage order, with hypothesis)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.options import parse_axis
from UNetSegmentationLib.inference.slicing import SliceGeometry, context_indices, gather_context, padding_for

from support import BOUNDED, rotation_matrix


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


# --- the 2.5D slice assembly ----------------------------------------------------------------------------

SIGNED_PERMUTATIONS = [
    tuple((np.eye(3)[list(order)].T * np.array(signs)).ravel())
    for order in itertools.permutations(range(3))
    for signs in itertools.product((1, -1), repeat=3)
]


@BOUNDED
@given(slice_count=st.integers(1, 40), context=st.integers(0, 6), data=st.data())
def test_context_indices_are_the_neighbours_clipped_at_the_ends(slice_count, context, data):
    indices = data.draw(st.lists(st.integers(0, slice_count - 1), min_size=1, max_size=12))
    result = context_indices(np.array(indices), context, slice_count)
    assert result.shape == (len(indices), 2 * context + 1)
    assert (result[:, context] == indices).all(), "the centre channel is the slice itself"
    offsets = np.arange(-context, context + 1)
    expected = np.clip(np.array(indices)[:, None] + offsets, 0, slice_count - 1)
    assert (result == expected).all()
    assert result.min() >= 0 and result.max() <= slice_count - 1
    assert (np.diff(result, axis=1) >= 0).all() and (np.diff(result, axis=1) <= 1).all(), "neighbours in order, edge slice repeated"


@BOUNDED
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 6), st.integers(1, 6)),
    direction=st.sampled_from(SIGNED_PERMUTATIONS),
    context=st.integers(0, 4),
    data=st.data(),
)
def test_gathered_batches_hold_each_slice_and_its_clipped_neighbours(shape, direction, context, data):
    volume = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)  # [k, j, i], every voxel distinct
    geometry = SliceGeometry.from_direction(direction)
    slices = geometry.slices_view(volume)
    assert np.shares_memory(slices, volume), "slices are a view, never a copy of the volume"
    assert sorted(slices.ravel().tolist()) == sorted(volume.ravel().tolist()), "every voxel once"
    count = slices.shape[0]
    indices = data.draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=6))
    batch = gather_context(slices, np.array(indices), context)
    assert batch.shape == (len(indices), 2 * context + 1) + slices.shape[1:]
    assert np.array_equal(batch[:, context], slices[indices])
    for b, k in enumerate(indices):
        for channel in range(2 * context + 1):
            neighbour = min(max(k + channel - context, 0), count - 1)
            assert np.array_equal(batch[b, channel], slices[neighbour])

"""Clicks and scribbles become the interactive network's guidance images (interactive/guidance.py):
disks or Gaussians of a radius in mm at the model's spacing, fading linearly across slices, one image
per sign; the encoding is recorded in the checkpoint as a GuidanceSpec and read back from there."""

from __future__ import annotations

import numpy as np
import pytest

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.interactive.guidance import GUIDANCE_CHANNELS, Click, GuidanceSpec, guidance_maps, scribble_clicks

SPEC = GuidanceSpec(click_radius_mm=6.0, fade_mm=10.0, encoding="disk")


def test_a_click_is_a_disk_of_its_radius_in_mm_at_the_model_spacing():
    maps = guidance_maps([Click((5.0, 20.0, 30.0), True)], 5.0, (64, 64), (2.0, 3.0), 5.0, SPEC)
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    positive, negative = maps
    assert not negative.any()
    assert positive[20, 30] == 1.0
    # 6 mm: three rows of 2 mm and two columns of 3 mm each way, nothing beyond
    assert positive[23, 30] == 1.0 and positive[24, 30] == 0.0
    assert positive[20, 32] == 1.0 and positive[20, 33] == 0.0
    area_mm2 = positive.sum() * 2.0 * 3.0
    assert abs(area_mm2 - np.pi * 36) < 0.35 * np.pi * 36


def test_a_negative_click_goes_to_the_second_image_and_clicks_of_one_sign_combine_by_their_maximum():
    clicks = [Click((0, 10, 10), True), Click((0, 12, 10), True), Click((0, 40, 40), False)]
    positive, negative = guidance_maps(clicks, 0.0, (64, 64), (1.0, 1.0), 1.0, SPEC)
    assert positive.max() == 1.0 and negative[40, 40] == 1.0 and positive[40, 40] == 0.0
    assert negative[10, 10] == 0.0


def test_a_click_fades_linearly_with_the_distance_across_slices_and_is_gone_at_fade_mm():
    click = [Click((10.0, 32.0, 32.0), True)]
    weights = [guidance_maps(click, s, (64, 64), (1.0, 1.0), 2.5, SPEC)[0].max() for s in (10, 11, 12, 13, 14, 6)]
    assert weights == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])


def test_gaussian_clicks_peak_at_the_click_and_fall_with_the_radius_as_sigma():
    spec = GuidanceSpec(click_radius_mm=4.0, fade_mm=10.0, encoding="gaussian")
    positive = guidance_maps([Click((0, 32, 32), True)], 0.0, (64, 64), (1.0, 1.0), 1.0, spec)[0]
    assert positive[32, 32] == pytest.approx(1.0)
    assert positive[32, 36] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert positive[32, 32 + 13] == 0.0  # cut at 3 sigma


def test_clicks_at_the_edge_or_outside_the_slice_are_clipped_not_refused():
    maps = guidance_maps([Click((0, -1, 0), True), Click((0, 500, 500), False)], 0.0, (32, 32), (1.0, 1.0), 1.0, SPEC)
    assert maps[0, 0, 0] == 1.0 and not maps[1].any()


def test_the_spec_goes_through_the_checkpoint_metadata_and_refuses_what_it_cannot_be():
    assert GuidanceSpec.from_dict(SPEC.to_dict()) == SPEC
    assert GUIDANCE_CHANNELS == 3
    for bad in ({"encoding": "square"}, {"click_radius_mm": 0}, {"fade_mm": float("nan")}, {"fade_mm": True}, {"radius": 3}):
        with pytest.raises(UserError):
            GuidanceSpec.from_dict({**SPEC.to_dict(), **bad})


def test_a_scribble_is_a_row_of_clicks_one_step_apart_along_its_polyline():
    clicks = scribble_clicks([(3, 10, 10), (3, 10, 20), (3, 14, 20)], positive=False)
    assert all(not c.positive and c.position[0] == 3 for c in clicks)
    assert clicks[0].position == (3.0, 10.0, 10.0) and clicks[-1].position == (3.0, 14.0, 20.0)
    assert len(clicks) == 1 + 10 + 4
    steps = np.linalg.norm(np.diff([c.position for c in clicks], axis=0), axis=1)
    assert np.allclose(steps, 1.0)
    stroke = guidance_maps(clicks, 3.0, (32, 32), (1.0, 1.0), 1.0, GuidanceSpec(click_radius_mm=1.0))[1]
    assert stroke[10, 10:21].all() and stroke[10:15, 20].all()
    assert scribble_clicks([], True) == []
    with pytest.raises(UserError):
        scribble_clicks([(0, 1)], True)

"""The slices to review first (issue 16): ``predict`` ranks every slice by the model's uncertainty near
its predicted boundaries, lists the top ones in the ``done`` event and all of them in ``--review-list``.

On the real chest CT with the bundled model at a weak depth (L2: there are errors to find), the
first-ranked slices are the ones with the lower Dice against the ground truth."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from support import assert_refused
from UNetSegmentationLib.inference.quality import boundary_band, boundary_uncertainty
from UNetSegmentationLib.inference.review import REVIEW_TOP, ReviewRanking

BUNDLED = Path(__file__).resolve().parent / "Data" / "chest-ct-unetplusplus.safetensors"
CT_SLICES = 34  # the chest CT's slices along k


@pytest.fixture(scope="module")
def ranked_run(tmp_path_factory, chest_ct_path):
    """The bundled model at depth 2 on the chest CT, once with a JSON and once with a CSV review list."""
    from support import run_cli

    folder = tmp_path_factory.mktemp("review")
    runs = {}
    for extension in (".json", ".csv"):
        output, review = folder / f"labels{extension}.seg.nrrd", folder / f"review{extension}"
        result = run_cli("predict", "--checkpoint", BUNDLED, "--depth", "2", "--progress", "json", "--review-list", review, chest_ct_path, output)
        assert result.code == 0, result.stderr
        runs[extension] = (result, output, review)
    return runs


def done_event(result) -> dict:
    return next(e for e in result.events if e["event"] == "done")


def per_slice_dice(predicted: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """``[slice]`` mean Dice over the classes present in the slice's prediction or truth ([slice, row, column] channel maps)."""
    dice = []
    for p_slice, t_slice in zip(predicted, truth):
        values = [2.0 * ((p_slice == c) & (t_slice == c)).sum() / ((p_slice == c).sum() + (t_slice == c).sum())
                  for c in range(1, classes + 1) if (p_slice == c).any() or (t_slice == c).any()]
        dice.append(np.mean(values) if values else np.nan)
    return np.array(dice)


# --- the ranking ---------------------------------------------------------------------------------------


def test_the_done_event_lists_the_ten_most_uncertain_slices_along_the_slice_axis(ranked_run):
    review = done_event(ranked_run[".json"][0])["review"]
    assert len(review) == REVIEW_TOP
    assert {entry["axis"] for entry in review} == {"k"}
    assert len({entry["slice"] for entry in review}) == REVIEW_TOP
    assert all(0 <= entry["slice"] < CT_SLICES for entry in review)
    scores = [entry["score"] for entry in review]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] < 1


def test_the_review_list_holds_every_slice_ranked_in_json_and_in_csv(ranked_run):
    result, _, path = ranked_run[".json"]
    listed = json.loads(path.read_text())["slices"]
    assert [entry["rank"] for entry in listed] == list(range(1, CT_SLICES + 1))
    assert sorted(entry["slice"] for entry in listed) == list(range(CT_SLICES))
    assert [{k: e[k] for k in ("slice", "axis", "score")} for e in listed[:REVIEW_TOP]] == done_event(result)["review"]

    result, _, path = ranked_run[".csv"]
    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["rank", "slice", "axis", "score"]
    assert [int(row["slice"]) for row in rows[:REVIEW_TOP]] == [entry["slice"] for entry in done_event(result)["review"]]
    assert sorted(int(row["slice"]) for row in rows) == list(range(CT_SLICES))
    assert [float(row["score"]) for row in rows] == sorted((float(row["score"]) for row in rows), reverse=True)


def test_the_first_ranked_slices_have_lower_dice_than_the_median_slice(ranked_run, chest_ct_path, chest_segmentation_path):
    from UNetSegmentationLib.cli.evaluate import labelled_volumes
    from UNetSegmentationLib.inference.slicing import SliceGeometry
    from UNetSegmentationLib.model.header import read_metadata
    from UNetSegmentationLib.training.cases import Case

    result, output, _ = ranked_run[".json"]
    classes = read_metadata(BUNDLED).classes
    truth, predicted = labelled_volumes([Case("truth", chest_ct_path, chest_segmentation_path), Case("predicted", chest_ct_path, output)], classes, "background")
    geometry = SliceGeometry.from_direction(truth.direction)
    dice = per_slice_dice(geometry.slices_view(predicted.truth), geometry.slices_view(truth.truth), len(classes))
    first = [entry["slice"] for entry in done_event(result)["review"][:5]]
    assert np.mean(dice[first]) < np.nanmedian(dice) - 0.05, (dice[first], np.nanmedian(dice))


def test_slices_along_another_axis_are_numbered_along_that_image_axis(cli, chest_ct_path, tmp_path):
    result = cli("predict", "--checkpoint", BUNDLED, "--depth", "1", "--axis", "i", "--progress", "json", chest_ct_path, tmp_path / "labels.nrrd")
    assert result.code == 0, result.stderr
    review = done_event(result)["review"]
    assert {entry["axis"] for entry in review} == {"i"}
    assert all(0 <= entry["slice"] < 128 for entry in review)


def test_the_boundary_band_is_the_pixels_on_both_sides_of_a_label_change():
    labels = np.zeros((1, 5, 6), dtype=np.uint8)
    labels[0, :, 3:] = 2
    band = boundary_band(labels)
    assert band[0].sum(axis=0).tolist() == [0, 0, 5, 5, 0, 0]
    assert boundary_band(labels, 2)[0].sum(axis=0).tolist() == [0, 5, 5, 5, 5, 0]


def test_the_score_is_the_mean_doubt_near_boundaries_and_zero_for_a_slice_of_one_label():
    labels = np.zeros((2, 4, 4), dtype=np.uint8)
    labels[0, :, 2:] = 1
    confidence = np.ones((2, 4, 4), dtype=np.float32)
    confidence[0, :, 1:3] = 0.6  # the two boundary columns
    confidence[1] = 0.5  # doubtful everywhere, but no boundary
    assert boundary_uncertainty(labels, confidence).tolist() == pytest.approx([0.4, 0.0])


def test_the_ranking_puts_the_most_uncertain_first_and_ties_in_slice_order(tmp_path):
    ranking = ReviewRanking("k", score=lambda labels, confidence: 1.0 - confidence.mean(axis=(1, 2)))
    ranking.observe(np.array([0, 1]), np.zeros((2, 2, 2)), np.array([0.9, 0.5])[:, None, None] * np.ones((2, 2, 2)))
    ranking.observe(np.array([2]), np.zeros((1, 2, 2)), np.full((1, 2, 2), 0.9))
    assert [(e.rank, e.slice) for e in ranking.ranked()] == [(1, 1), (2, 0), (3, 2)]
    assert ranking.finish(None) == {"review": [{"slice": 1, "axis": "k", "score": 0.5}, {"slice": 0, "axis": "k", "score": 0.1}, {"slice": 2, "axis": "k", "score": 0.1}]}


# --- refusals before any work --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, prepare, phrase",
    [
        ("review.txt", None, "unsupported file type"),
        ("review.json", "file", "already exists"),
        ("review.csv", "folder", "is a folder"),
        ("missing/review.csv", None, "does not exist"),
        ("review/", None, "names a folder"),
    ],
)
def test_a_bad_review_list_is_refused_before_any_work(cli, tmp_path, name, prepare, phrase):
    review = tmp_path / name
    if prepare == "file":
        review.write_text("mine")
    elif prepare == "folder":
        review.mkdir()
    output = tmp_path / "labels.nrrd"
    missing_input = tmp_path / "no-such-input.nrrd"  # the refusal comes before the input is even looked at
    text = str(review) + ("/" if name.endswith("/") else "")
    assert_refused(cli("predict", "--checkpoint", BUNDLED, "--review-list", text, missing_input, output), output, "--review-list", phrase)
    if prepare == "file":
        assert review.read_text() == "mine"


def test_a_review_list_that_is_the_output_or_the_input_is_refused(cli, tmp_path, chest_ct_path):
    output = tmp_path / "labels.nrrd"
    result = cli("predict", "--checkpoint", BUNDLED, "--review-list", tmp_path / "labels.csv", "--probabilities", tmp_path / "labels.csv", chest_ct_path, output)
    assert result.code != 0 and not output.exists()
    copy = tmp_path / "input.json"
    copy.write_text("{}")
    assert_refused(cli("predict", "--checkpoint", BUNDLED, "--overwrite", "--review-list", copy, copy, output), output)

"""Evaluation metrics (MONAI's, through ``evaluation.metrics.class_metrics``) match values computed by
hand on synthetic masks — including HD95 in millimetres with anisotropic spacing — and ``unetseg
evaluate`` runs what ``predict`` runs (its plan, its predictor, its batches, timed after a warm-up),
reports progress in the one event schema and writes the table, CSV, JSON and the accuracy-vs-speed plot."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

import SimpleITK as sitk

from support import create_checkpoint
from support import write_tiny_case
from UNetSegmentationLib.backends.factory import create_predictor
from UNetSegmentationLib.backends.plan import ExecutionRequest
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.evaluation.evaluate import EvaluationOptions, LabelledVolume, evaluate_cases
from UNetSegmentationLib.grammar.slice_ranges import parse_slice_selection as parse_slices
from UNetSegmentationLib.evaluation.metrics import class_metrics, dice_per_class
from UNetSegmentationLib.model.checkpoint import load_checkpoint


def cube(shape=(12, 12, 12), start=(3, 3, 3), size=3) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def test_overlap_metrics_match_hand_counts():
    truth = cube(start=(3, 3, 3))  # 27 voxels
    prediction = cube(start=(3, 3, 4))  # shifted one voxel along the last axis: 18 shared, 9 extra, 9 missed
    metrics = class_metrics(prediction, truth, spacing=(1.0, 1.0, 1.0))
    tp, fp, fn = 18, 9, 9
    assert metrics["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # 0.6667
    assert metrics["iou"] == pytest.approx(tp / (tp + fp + fn))  # 0.5
    assert metrics["precision"] == pytest.approx(tp / (tp + fp))
    assert metrics["recall"] == pytest.approx(tp / (tp + fn))
    assert metrics["f1"] == pytest.approx(metrics["dice"])


def test_precision_and_recall_differ_when_the_prediction_is_a_superset():
    truth = cube(size=2)  # 8 voxels
    prediction = cube(size=4)  # 64 voxels containing the truth
    metrics = class_metrics(prediction, truth, spacing=(1.0, 1.0, 1.0))
    assert metrics["recall"] == pytest.approx(1.0)
    assert metrics["precision"] == pytest.approx(8 / 64)
    assert metrics["dice"] == pytest.approx(2 * 8 / (8 + 64))
    assert metrics["iou"] == pytest.approx(8 / 64)


def test_hd95_of_two_single_voxels_uses_the_anisotropic_spacing():
    truth = np.zeros((10, 10, 10), dtype=bool)
    prediction = np.zeros_like(truth)
    truth[5, 5, 5] = True
    prediction[6, 7, 5] = True  # one step along axis 0 (3 mm), two along axis 1 (0.5 mm each)
    metrics = class_metrics(prediction, truth, spacing=(3.0, 0.5, 0.5))
    assert metrics["hd95_mm"] == pytest.approx(math.hypot(1 * 3.0, 2 * 0.5), rel=1e-5)  # sqrt(10) mm
    assert metrics["dice"] == 0.0


def test_hd95_is_the_95th_percentile_not_the_maximum():
    """A 20-voxel line and the same line plus two isolated voxels 3 steps (4.5 mm) away across the
    1.5 mm axis: the 22 prediction-to-truth distances are 20 × 0 and 2 × 4.5 mm; their 95th
    percentile (linear interpolation at rank 0.95·21 = 19.95) is 0.95·4.5 mm. Truth-to-prediction
    distances are all 0, so the symmetric HD95 is 4.275 mm while the Hausdorff distance is 4.5 mm."""
    spacing = (2.0, 0.5, 1.5)
    truth = np.zeros((24, 10, 12), dtype=bool)
    truth[2:22, 5, 5] = True
    prediction = truth.copy()
    prediction[6, 5, 8] = True
    prediction[17, 5, 8] = True
    metrics = class_metrics(prediction, truth, spacing=spacing)
    assert metrics["hd95_mm"] == pytest.approx(0.95 * 3 * 1.5, rel=1e-5)  # float32 distances
    assert metrics["recall"] == 1.0 and metrics["precision"] == pytest.approx(20 / 22)


def test_hd95_is_symmetric_under_swapping_prediction_and_truth():
    rng = np.random.default_rng(3)
    a = rng.random((10, 12, 8)) > 0.8
    b = rng.random((10, 12, 8)) > 0.8
    spacing = (2.5, 0.7, 1.2)
    assert class_metrics(a, b, spacing)["hd95_mm"] == pytest.approx(class_metrics(b, a, spacing)["hd95_mm"])


def test_empty_masks_give_no_value_instead_of_a_misleading_number():
    empty = np.zeros((8, 8, 8), dtype=bool)
    present = cube(shape=(8, 8, 8), size=2)
    absent_everywhere = class_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert all(absent_everywhere[m] is None for m in ("dice", "iou", "hd95_mm", "precision", "recall", "f1"))
    missed = class_metrics(empty, present, (1.0, 1.0, 1.0))  # the structure exists and nothing was found
    assert missed["dice"] == 0.0 and missed["recall"] == 0.0 and missed["hd95_mm"] is None and missed["precision"] is None
    false_alarm = class_metrics(present, empty, (1.0, 1.0, 1.0))  # nothing to find, something predicted
    assert false_alarm["dice"] is None and false_alarm["precision"] == 0.0 and false_alarm["hd95_mm"] is None


def test_validation_dice_per_class_uses_channel_indices():
    truth = np.zeros((2, 4, 4), dtype=np.uint8)
    truth[:, :2] = 1  # 16 voxels of class 1
    truth[0, 3, 3] = 2  # 1 voxel of class 2
    prediction = truth.copy()
    prediction[1, 0] = 0  # 4 voxels of class 1 missed
    dice = dice_per_class(prediction, truth, class_count=3)
    assert dice[0] == pytest.approx(2 * 12 / (12 + 16))
    assert dice[1] == pytest.approx(1.0)
    assert np.isnan(dice[2])  # class 3 absent from the truth


def test_slice_selection_syntax():
    assert parse_slices(None) is None and parse_slices("all") is None
    assert parse_slices("checkpoint") == "checkpoint"
    assert parse_slices("4-6,16,17") == "4-6,16,17"  # expanded per volume, against its slice count
    with pytest.raises(UserError, match="--slices"):
        parse_slices("6-4")
    with pytest.raises(UserError, match="--slices: '0-99999999999' is beyond"):  # refused before any set is built
        parse_slices("0-99999999999")


# --- unetseg evaluate on a synthetic volume -------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_case(tmp_path_factory):
    """A CT-like volume (anisotropic) and its two-class label map ('body', 'bone')."""
    return write_tiny_case(tmp_path_factory.mktemp("evaluate"))


def evaluate_case(cli, checkpoint, case, output_dir, *options, label=None):
    """``unetseg evaluate`` of ``case``'s volume against ``label`` (default: the case's own label map)."""
    return cli("evaluate", "--checkpoint", checkpoint, "--image", case / "case.nrrd", "--label", label or case / "case_label.nrrd",
               "--output-dir", output_dir, *options)


def test_evaluate_writes_table_csv_json_and_plot_for_every_depth(cli, synthetic_case, tmp_path):
    checkpoint = create_checkpoint(tmp_path / "untrained.safetensors", classes="body,bone", features="4,8,16")
    out = tmp_path / "results"
    result = evaluate_case(cli, checkpoint, synthetic_case, out, "--progress", "none", "--device", "cpu")
    assert result.code == 0, result.stderr
    # the screen table: one row per class and depth, then a per-depth summary with ms/slice
    assert "hd95 mm" in result.stdout and "ms/slice" in result.stdout
    rows = list(csv.DictReader(open(out / "evaluation.csv")))
    assert sorted({r["depth"] for r in rows}) == ["L1", "L2"]
    assert sorted({r["class"] for r in rows}) == ["body", "bone"]
    assert {"dice", "iou", "hd95_mm", "precision", "recall", "f1", "ms_per_slice"} <= set(rows[0])
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["summary"]) == {"L1", "L2"}
    assert all(s["ms_per_slice"] > 0 and s["parameters"] > 0 for s in report["summary"].values())
    assert report["summary"]["L1"]["parameters"] < report["summary"]["L2"]["parameters"]
    assert (out / "accuracy-vs-speed.png").read_bytes().startswith(b"\x89PNG")
    # a second run refuses to overwrite without --overwrite
    again = evaluate_case(cli, checkpoint, synthetic_case, out, "--progress", "none")
    assert again.code == 2 and "already exists" in again.stderr


def test_evaluate_restricted_to_slices_scores_only_those(cli, synthetic_case, tmp_path):
    checkpoint = create_checkpoint(tmp_path / "u.safetensors", arch="unet", classes="body,bone", features="4,8")
    out = tmp_path / "r"
    result = evaluate_case(cli, checkpoint, synthetic_case, out, "--slices", "2-4", "--progress", "none")
    assert result.code == 0, result.stderr
    rows = list(csv.DictReader(open(out / "evaluation.csv")))
    assert {r["depth"] for r in rows} == {"full"} and {r["slices"] for r in rows} == {"3"}  # a network that cannot be pruned: depth_tag(None)
    assert not (out / "accuracy-vs-speed.png").exists()  # one depth: no trade-off to plot
    bad = evaluate_case(cli, checkpoint, synthetic_case, tmp_path / "r2", "--slices", "10-40", "--progress", "none")
    assert bad.code == 2 and "12 slices" in bad.stderr


def test_evaluate_scores_exactly_the_labels_predict_writes(cli, synthetic_case, tmp_path):
    """predict's output as the ground truth: evaluate, on the same plan and depth, finds every voxel."""
    checkpoint = create_checkpoint(tmp_path / "untrained.safetensors", classes="body,bone", features="4,8,16")
    predicted = tmp_path / "predicted.nrrd"
    same_run = ["--depth", "2", "--precision", "fp32", "--backend", "torch", "--device", "cpu", "--batch-size", "3"]
    assert cli("predict", "--checkpoint", checkpoint, "--progress", "none", *same_run, synthetic_case / "case.nrrd", predicted).code == 0
    result = evaluate_case(cli, checkpoint, synthetic_case, tmp_path / "results", "--progress", "none", *same_run, label=predicted)
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "results" / "evaluation.json").read_text())
    assert report["execution"]["backend"] == "torch" and report["execution"]["precision"] == "fp32"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(predicted)))
    for row in report["rows"]:
        value = report["classes"].index(row["class"]) + 1
        assert row["truth_voxels"] == row["predicted_voxels"] == int((labels == value).sum())
        assert row["dice"] == (1.0 if row["truth_voxels"] else None)


def test_evaluate_reports_progress_in_the_one_event_schema(cli, synthetic_case, tmp_path):
    checkpoint = create_checkpoint(tmp_path / "untrained.safetensors", classes="body,bone", features="4,8,16")
    out = tmp_path / "results"
    result = evaluate_case(cli, checkpoint, synthetic_case, out, "--progress", "json", "--device", "cpu")
    assert result.code == 0, result.stderr
    assert all("event" in e for e in result.events)  # every stdout line is an event: no table in JSON mode
    start, *progress, done = [e for e in result.events if e["event"] != "log"]  # log lines may come first (an ONNX export)
    assert start["event"] == "start" and start["version"] == 1 and start["command"] == "evaluate"
    assert start["total"] == 2 and start["unit"] == "case" and start["depths"] == ["L1", "L2"] and start["cases"] == ["case"]
    assert [(e["event"], e["done"], e["total"], e["case"], e["depth"]) for e in progress] == [("progress", 1, 2, "case", "L1"), ("progress", 2, 2, "case", "L2")]
    assert done["event"] == "done" and set(done["summary"]) == {"L1", "L2"}
    assert done["outputs"] == [str(out / "evaluation.csv"), str(out / "evaluation.json"), str(out / "accuracy-vs-speed.png")]


class RecordingPredictor:
    """Wraps the engine's predictor and records the batch sizes it is called with."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, batch):
        self.calls.append(len(batch))
        return self.inner(batch)


def test_evaluate_runs_predicts_plan_and_predictor_and_warms_up_before_timing(synthetic_case, tmp_path):
    """The predictor comes from predict's factory with the plan of --device/--backend/--precision/--threads,
    once per depth; each volume gets one untimed warm-up batch, then predict's batches."""
    checkpoint = load_checkpoint(create_checkpoint(tmp_path / "untrained.safetensors", classes="body,bone", features="4,8,16"))
    made = []

    def recording_factory(checkpoint, plan, depth, classification_guidance):
        predictor, notes = create_predictor(checkpoint, plan, depth, classification_guidance)
        made.append((plan, depth, RecordingPredictor(predictor)))
        return made[-1][2], notes

    image = sitk.ReadImage(str(synthetic_case / "case.nrrd"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(synthetic_case / "case_label.nrrd")))
    volume = LabelledVolume("case", synthetic_case / "case.nrrd", sitk.GetArrayFromImage(image), image.GetDirection(), image.GetSpacing(), truth)
    options = EvaluationOptions(execution=ExecutionRequest("cpu", "torch", "fp32", threads=1), batch_size=5)
    evaluation = evaluate_cases(checkpoint, [volume, volume], options, predictor_factory=recording_factory)
    assert [(plan.backend, plan.precision, plan.threads, str(plan.device), depth) for plan, depth, _ in made] == [("torch", "fp32", 1, "cpu", 1), ("torch", "fp32", 1, "cpu", 2)]
    for _, _, predictor in made:  # 12 slices in batches of 5: a warm-up batch, then 5, 5, 2 — for each of the two volumes
        assert predictor.calls == [5, 5, 5, 2] * 2
    assert evaluation.execution == {"backend": "torch", "precision": "fp32", "threads": 1, "workers": 1}
    assert all(evaluation.speed[tag]["ms_per_slice"] > 0 for tag in ("L1", "L2"))


def test_evaluate_options_refuse_a_batch_size_below_one():
    with pytest.raises(UserError, match="--batch-size must be a positive integer"):
        EvaluationOptions(batch_size=0)


def test_evaluate_reads_labels_as_train_does(cli, synthetic_case, tmp_path):
    """Issue 22, defect 10: --label-map as train's, and labels outside the classes are an error, or background with a warning."""
    checkpoint = create_checkpoint(tmp_path / "u.safetensors", arch="unet", classes="body,bone", features="4,8")
    mapped = evaluate_case(cli, checkpoint, synthetic_case, tmp_path / "a", "--label-map", "1:body,2:bone", "--progress", "none")
    assert mapped.code == 0, mapped.stderr
    partial = evaluate_case(cli, checkpoint, synthetic_case, tmp_path / "b", "--label-map", "2:bone", "--progress", "none")
    assert partial.code == 2 and "value(s) the --label-map does not name: 1" in partial.stderr and not (tmp_path / "b" / "evaluation.csv").exists()
    warned = evaluate_case(cli, checkpoint, synthetic_case, tmp_path / "c", "--label-map", "2:bone", "--other-labels", "background", "--progress", "json")
    assert warned.code == 0, warned.stderr
    assert any(e["event"] == "warning" and "read as background" in e["message"] for e in warned.events)
    assert not (tmp_path / "b").exists()  # refused before any folder was made


def test_evaluate_never_writes_over_what_it_reads(cli, synthetic_case, tmp_path):
    """Issue 23: every output passes the output gate; the results go into --output-dir, never onto an input."""
    checkpoint = create_checkpoint(tmp_path / "u.safetensors", arch="unet", classes="body,bone", features="4,8")
    folder = evaluate_case(cli, checkpoint, synthetic_case, synthetic_case / "case.nrrd", "--progress", "none")
    assert folder.code == 2 and "case.nrrd" in folder.stderr


def test_a_refused_slice_bomb_stays_small(tmp_path):
    """Issue 23 HIGH 3: evaluate --slices 0-99999999999 was OOM-killed; now refused before any import (VmHWM since exec)."""
    import subprocess
    import sys

    code = ("import sys; from UNetSegmentationLib.cli.main import main; "
            "rc = main(['evaluate', '--image', 'a.nrrd', '--label', 'b.nrrd', '--slices', '0-99999999999']); "
            "print(rc, next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    rc, peak_kb = result.stdout.split()
    assert rc == "2" and int(peak_kb) < 200 * 1024 and "--slices: '0-99999999999' is beyond" in result.stderr

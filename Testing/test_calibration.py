"""Probabilities that mean something (issue 24, item 4): a checkpoint's calibration temperature, applied
where probabilities are made, and its fit on held-out patients through the engine's own path.

- The temperature is checkpoint metadata: 1.0 (absent) for every checkpoint made before it, a number in
  the allowed range otherwise; ``unetseg info`` shows it.
- It divides the logits before the softmax (PyTorch and the ONNX export alike): labels stay exactly as
  they are, the confidence map softens; a recalibrated checkpoint never runs an ONNX export made before.
- The fit: the marginal likelihood over a case's labelled classes, recovering a known temperature;
  calibration error counts only voxels whose correctness is known.
- ``Resources/Tools/calibrate_model.py`` writes the calibrated copy through the engine's writer, the
  weights unchanged, never over an existing file or the model it reads.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import write_two_fold_chest_datalist
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.evaluation.calibration import (
    CalibrationBins, FitSample, known_correctness, lopo_temperatures, marginal_nll, fit_temperature,
)
from UNetSegmentationLib.model.header import read_metadata
from UNetSegmentationLib.model.metadata import ModelMetadata

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = Path(__file__).resolve().parent / "Data" / "chest-ct-unetplusplus.safetensors"


def calibrated_copy(source: Path, target: Path, temperature: float) -> Path:
    from UNetSegmentationLib.model.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(source)
    return save_checkpoint(target, checkpoint.state_dict, dataclasses.replace(checkpoint.metadata, temperature=temperature))


def calibrate_tool():
    spec = importlib.util.spec_from_file_location("calibrate_model", ROOT / "Resources" / "Tools" / "calibrate_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the metadata field ------------------------------------------------------------------------------


def test_a_checkpoint_made_before_calibration_reads_as_temperature_one_and_keeps_its_bytes():
    metadata = read_metadata(BUNDLED)
    assert metadata.temperature == 1.0
    assert "temperature" not in metadata.to_json()  # so its ONNX exports' binding is what it was


@pytest.mark.parametrize("value", [0, -1.5, float("nan"), float("inf"), "2", True, 1e6, 1e-9])
def test_a_temperature_that_is_no_calibration_is_refused_naming_the_field(value):
    data = read_metadata(BUNDLED).to_json()
    data["temperature"] = value
    with pytest.raises(UserError, match="temperature"):
        ModelMetadata.loads(json.dumps(data))


def test_a_temperature_round_trips_through_the_checkpoint_and_info_shows_it(tmp_path, cli):
    path = calibrated_copy(BUNDLED, tmp_path / "calibrated.safetensors", 1.75)
    assert read_metadata(path).temperature == 1.75
    result = cli("info", path)
    assert result.code == 0 and "temperature    1.75" in result.stdout
    assert "not calibrated" in cli("info", BUNDLED).stdout


def test_training_from_a_calibrated_model_starts_uncalibrated():
    from UNetSegmentationLib.training.dataset import model_metadata

    calibrated = dataclasses.replace(read_metadata(BUNDLED), temperature=2.0)
    assert model_metadata(None, calibrated.classes, calibrated).temperature == 1.0  # new weights: the old fit says nothing


# --- where it is applied ---------------------------------------------------------------------------------


def test_the_probability_network_divides_the_logits_by_the_temperature_and_keeps_the_argmax():
    import torch

    from UNetSegmentationLib.backends.torch_network import ProbabilityNetwork

    logits = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(0)) * 4
    identity = torch.nn.Identity()
    plain, tempered = ProbabilityNetwork(identity, None, True)(logits), ProbabilityNetwork(identity, None, True, 2.5)(logits)
    assert torch.allclose(tempered, torch.softmax(logits / 2.5, dim=1), atol=1e-6)
    assert torch.equal(plain.argmax(1), tempered.argmax(1))
    assert tempered.max(1).values.mean() < plain.max(1).values.mean()
    sigmoid = ProbabilityNetwork(identity, None, False, 0.5)(logits[:, :1])
    assert torch.allclose(sigmoid, torch.sigmoid(logits[:, :1] / 0.5), atol=1e-6)


def test_a_recalibrated_checkpoint_never_runs_an_onnx_export_made_before(tmp_path):
    from UNetSegmentationLib.backends.onnx_cache import cache_key
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    plain = load_checkpoint(BUNDLED, weights=False)
    calibrated = load_checkpoint(calibrated_copy(BUNDLED, tmp_path / "calibrated.safetensors", 1.5), weights=False)
    assert cache_key(plain, 2, True) != cache_key(calibrated, 2, True)
    plain.path = calibrated.path  # the same bytes: the metadata alone (temperature included) changes the key
    assert cache_key(plain, 2, True) != cache_key(calibrated, 2, True)


@pytest.mark.onnx
def test_predict_with_a_calibrated_model_gives_the_same_labels_and_softer_confidence_on_both_backends(tmp_path, cli, chest_ct_path):
    calibrated = calibrated_copy(BUNDLED, tmp_path / "calibrated.safetensors", 2.0)
    maps = {}
    for name, checkpoint, backend in (("plain", BUNDLED, "torch"), ("torch", calibrated, "torch"), ("onnx", calibrated, "onnx")):
        labels, confidence = tmp_path / f"{name}.nrrd", tmp_path / f"{name}-p.nrrd"
        result = cli("predict", "--checkpoint", checkpoint, "--depth", "2", "--backend", backend, "--threads", "1", "--progress", "none",
                     "--probabilities", confidence, chest_ct_path, labels)
        assert result.code == 0, result.stderr
        maps[name] = (sitk.GetArrayFromImage(sitk.ReadImage(str(labels))), sitk.GetArrayFromImage(sitk.ReadImage(str(confidence))))
    assert (maps["plain"][0] != maps["torch"][0]).mean() < 0.001  # the argmax; only resampling ties may move
    assert np.array_equal(maps["torch"][0], maps["onnx"][0]) or (maps["torch"][0] != maps["onnx"][0]).mean() < 1e-4
    assert np.abs(maps["torch"][1] - maps["onnx"][1]).max() < 1e-3
    assert maps["torch"][1].mean() < maps["plain"][1].mean()


# --- the fit ---------------------------------------------------------------------------------------------


def test_the_fit_recovers_the_temperature_the_truth_was_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40_000, 4)) * 3
    drawn = np.exp(logits / 2.0)
    drawn /= drawn.sum(axis=1, keepdims=True)
    truth = (drawn.cumsum(axis=1) > rng.random((len(logits), 1))).argmax(axis=1)
    sample = FitSample(logits, truth, np.tile([True, False, False, False], (len(logits), 1)))
    assert fit_temperature([sample]) == pytest.approx(2.0, rel=0.05)
    assert marginal_nll(sample, 2.0) < marginal_nll(sample, 1.0)


def test_a_voxel_labelled_zero_in_a_case_that_leaves_a_class_out_is_scored_by_the_merged_probability():
    log_p = np.log(np.array([[0.2, 0.1, 0.7]]))  # background, labelled class, unlabelled class
    partial = FitSample(log_p, np.array([0]), np.array([[True, False, True]]))
    complete = FitSample(log_p, np.array([0]), np.array([[True, False, False]]))
    assert marginal_nll(partial, 1.0) == pytest.approx(-math.log(0.9))
    assert marginal_nll(complete, 1.0) == pytest.approx(-math.log(0.2))


def test_each_fold_is_scored_with_a_temperature_fitted_on_the_other_folds_only():
    rng = np.random.default_rng(1)

    def sample(temperature: float) -> FitSample:
        logits = rng.normal(size=(20_000, 3)) * 3
        drawn = np.exp(logits / temperature)
        drawn /= drawn.sum(axis=1, keepdims=True)
        truth = (drawn.cumsum(axis=1) > rng.random((len(logits), 1))).argmax(axis=1)
        return FitSample(logits, truth, np.tile([True, False, False], (len(logits), 1)))

    fits = lopo_temperatures({0: sample(1.0), 1: sample(3.0), 2: sample(3.0)})
    assert fits.own[0] == pytest.approx(1.0, rel=0.1) and fits.own[1] == pytest.approx(3.0, rel=0.1)
    assert fits.held_out[0] == pytest.approx(3.0, rel=0.1)  # fold 0's own data had no say
    assert 1.0 < fits.held_out[1] < 3.0 and 1.0 < fits.shipped < 3.0


def test_calibration_error_counts_only_voxels_whose_correctness_is_known():
    truth = np.array([0, 0, 0, 1, 2])
    predicted = np.array([0, 3, 1, 1, 0])
    labelled = frozenset({1, 2})  # class 3 is unknown in this case
    assert known_correctness(predicted, truth, labelled).tolist() == [False, False, True, True, True]
    assert known_correctness(predicted, truth, None).all()
    bins = CalibrationBins().add(np.array([0.95, 0.95, 0.55, 0.55]), np.array([True, False, True, True]))
    assert bins.ece() == pytest.approx(0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.55))


# --- the engine path and the tool, on the real chest CT --------------------------------------------------


@pytest.fixture(scope="module")
def two_fold_datalist(tmp_path_factory, chest_ct_path, chest_segmentation_path):
    """The chest CT as two 'patients' (folds 0 and 1; fold 1 labels only the lungs and ribs), the bundled model as both fold models."""
    folder = tmp_path_factory.mktemp("calibration")
    for fold in (0, 1):
        shutil.copyfile(BUNDLED, folder / f"fold{fold}.safetensors")
    return write_two_fold_chest_datalist(folder, chest_ct_path, chest_segmentation_path, ["ribs", "right lung", "left lung"])


def test_replaying_the_recorded_outputs_gives_predicts_labels_and_each_class_probability(two_fold_datalist):
    from UNetSegmentationLib.evaluation.calibration import class_probabilities, replay, tempered

    tool = calibrate_tool()
    runs = tool.held_out_runs(two_fold_datalist, str(two_fold_datalist.parent / "fold{fold}.safetensors"), 2, 1)
    recorded = runs[1][1][0]
    again = replay(recorded, tempered(1.0))
    assert np.array_equal(again.labels, recorded.result.labels) and np.allclose(again.confidence, recorded.result.confidence)
    voxels = np.flatnonzero(recorded.body.reshape(-1))[::50]
    probabilities = class_probabilities(recorded, voxels)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(probabilities.max(axis=1), recorded.result.confidence.reshape(-1)[voxels], atol=1e-5)  # the chest CT is at the model's spacing
    softer = replay(recorded, tempered(2.0))
    assert (softer.labels != recorded.result.labels).mean() < 0.001 and softer.confidence.mean() < recorded.result.confidence.mean()
    assert recorded.unknown_channels().tolist() == [True, False, True, True, True, False, False, True]  # background, vertebrae, tissue


def test_the_tool_writes_the_calibrated_model_through_the_engines_writer(two_fold_datalist, tmp_path, capsys):
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    tool = calibrate_tool()
    folds = str(two_fold_datalist.parent / "fold{fold}.safetensors")
    output, report = tmp_path / "calibrated.safetensors", tmp_path / "fit.json"
    assert tool.main(["--datalist", str(two_fold_datalist), "--fold-models", folds, "--model", str(BUNDLED), "--output", str(output),
                      "--depth", "2", "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "| fold |" in printed and "shipped temperature" in printed
    fit = json.loads(report.read_text())
    assert read_metadata(output).temperature == pytest.approx(fit["shipped_temperature"], abs=1e-4)
    assert 0.05 < fit["shipped_temperature"] < 20 and {row["fold"] for row in fit["folds"]} == {0, 1}
    original, written = load_checkpoint(BUNDLED).state_dict, load_checkpoint(output).state_dict
    assert original.keys() == written.keys() and all(np.array_equal(original[k].numpy(), written[k].numpy()) for k in original)
    before = output.read_bytes()
    assert tool.main(["--datalist", str(two_fold_datalist), "--fold-models", folds, "--model", str(BUNDLED), "--output", str(output)]) == 2
    assert output.read_bytes() == before  # an existing file is replaced only with --overwrite
    assert "overwrite" in capsys.readouterr().err
    model = two_fold_datalist.parent / "fold0.safetensors"
    unchanged = model.read_bytes()
    assert tool.main(["--datalist", str(two_fold_datalist), "--fold-models", folds, "--model", str(model), "--output", str(model), "--overwrite"]) == 2
    assert model.read_bytes() == unchanged


@pytest.mark.onnx
def test_int8_quantises_the_calibrated_export_with_its_temperature(tmp_path, cli, chest_ct_path):
    calibrated = calibrated_copy(BUNDLED, tmp_path / "calibrated.safetensors", 2.0)
    maps = {}
    for precision in ("fp32", "int8"):
        labels, confidence = tmp_path / f"{precision}.nrrd", tmp_path / f"{precision}-p.nrrd"
        result = cli("predict", "--checkpoint", calibrated, "--depth", "2", "--backend", "onnx", "--precision", precision, "--threads", "1",
                     "--progress", "json", "--probabilities", confidence, chest_ct_path, labels)
        assert result.code == 0, result.stderr
        assert not [e for e in result.events if e["event"] == "warning" and "int8" in e["message"]]  # no fallback to float32
        maps[precision] = (sitk.GetArrayFromImage(sitk.ReadImage(str(labels))), sitk.GetArrayFromImage(sitk.ReadImage(str(confidence))))
    assert (maps["fp32"][0] == maps["int8"][0]).mean() > 0.99
    assert abs(float(maps["int8"][1].mean()) - float(maps["fp32"][1].mean())) < 0.02  # softened alike: the division is inside what is quantised

"""Calibration on held-out patients: fitting the checkpoint's temperature and measuring calibration error.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) divides the
logits by one number T before the softmax; T > 1 softens over-confident probabilities, and the argmax,
so every label, stays as it is. The checkpoint stores T
(:attr:`~UNetSegmentationLib.model.metadata.ModelMetadata.temperature`) and the one place probabilities
are made applies it (:class:`~UNetSegmentationLib.backends.torch_network.ProbabilityNetwork`, so the
ONNX export and int8 too). This module measures what a fit needs, through the path ``predict`` takes:

- :func:`record_volume`: the volume segmented by :func:`~UNetSegmentationLib.inference.pipeline.predict_volume`
  with the run's own predictor (layout, body crop, batches, resampling, decision: predict's), the network's
  output of every batch kept (:class:`RecordingPredictor`).
- :func:`replay`: the same pipeline again with those outputs (no network), tempered by a ratio on the
  model's grid exactly as a checkpoint with that temperature computes them: the labels and confidence
  ``predict`` would give, hence the calibration error after a fit (:func:`expected_calibration_error`)
  and the review ranking (an observer) at any temperature.
- :func:`class_probabilities`: every class's probability on the input's grid at sampled voxels, each
  class replayed as a one-class (sigmoid) model: the pipeline is linear in the network's output up to
  the decision, and a one-class decision gives back p or 1 − p exactly.
- :func:`marginal_nll` / :func:`fit_temperature`: the mean negative log-likelihood of the truth, over the
  classes the case labels only. A voxel labelled 0 in a case that leaves classes out says "background or
  one of those", so its likelihood is the merged probability of that group (the marginal treatment of
  Shi et al. 2021 that training uses, training/partial_labels.py). The fit tempers the input-grid
  log-probabilities (exact where the scan is at the model's spacing; close where it was resampled), then
  :func:`replay` measures the result as ``predict`` computes it.

Calibration error counts the voxels inside the body boxes the network ran on (outside them the engine
decides background with certainty) whose correctness is known (:func:`known_correctness`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from UNetSegmentationLib.inference.layout import VolumeLayout
from UNetSegmentationLib.inference.normalization import IntensityMapping
from UNetSegmentationLib.inference.pipeline import PredictionResult, SliceObserver, predict_volume
from UNetSegmentationLib.inference.slicing import SliceGeometry
from UNetSegmentationLib.model.metadata import TEMPERATURE_RANGE, ModelMetadata

#: equal-width confidence bins of the expected calibration error (Guo et al. 2017 use 15)
ECE_BINS = 15
#: voxels per volume the fit samples (the likelihood of a million voxels is no better determined)
FIT_SAMPLE = 200_000
#: probabilities below this are taken as this before their logarithm (float32 softmax underflows to 0)
TINY = 1e-30


def _as_numpy(output) -> np.ndarray:
    if isinstance(output, np.ndarray):
        return output.astype(np.float32, copy=False)
    return output.detach().float().cpu().numpy()


class RecordingPredictor:
    """A predictor that keeps (as float32 numpy) what the predictor it wraps returns, call by call."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.outputs: List[np.ndarray] = []

    def __getattr__(self, name: str):
        return getattr(self.predictor, name)

    def __call__(self, batch: np.ndarray):
        output = self.predictor(batch)
        self.outputs.append(_as_numpy(output))
        return output


class ReplayPredictor:
    """Gives back recorded outputs in order, transformed (tempered, one channel): the network never runs."""

    backend = "replay"
    device = "cpu"

    def __init__(self, outputs: Sequence[np.ndarray], metadata: ModelMetadata, required_multiple: int, transform: Callable[[np.ndarray], np.ndarray]) -> None:
        self.outputs, self.metadata, self.required_multiple, self.transform = outputs, metadata, required_multiple, transform
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        output = self.outputs[self.calls]
        if len(batch) != len(output):
            raise RuntimeError(f"replay: batch {self.calls} holds {len(batch)} slices, {len(output)} were recorded")
        self.calls += 1
        return self.transform(output)


def log_probabilities(probabilities: np.ndarray, axis: int = 1) -> np.ndarray:
    """``log p`` (K ≥ 2 channels), or for one sigmoid channel ``[log(1 − p), log p]``: logits up to a
    per-voxel constant, which a softmax ignores, so ``softmax(log p / t)`` is the temperature-``t`` softmax."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape[axis] == 1:
        p = np.concatenate([1.0 - p, p], axis=axis)
    return np.log(np.maximum(p, TINY))


def _softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def tempered(ratio: float) -> Callable[[np.ndarray], np.ndarray]:
    """``(B, K, H, W)`` probabilities → those of logits divided by ``ratio`` more (sigmoid: one channel kept)."""
    def transform(output: np.ndarray) -> np.ndarray:
        if ratio == 1.0:
            return output
        result = _softmax(log_probabilities(output) / ratio, axis=1).astype(np.float32)
        return result[:, 1:] if output.shape[1] == 1 else result

    return transform


@dataclass
class RecordedVolume:
    """One held-out volume segmented once: the network's outputs, and what replaying them needs."""

    name: str
    volume: np.ndarray  # [k, j, i]
    truth: np.ndarray  # [k, j, i] channel numbers of the checkpoint's classes (0: background or unknown)
    labelled: Optional[frozenset]  # channels the labels cover; None: all
    geometry: SliceGeometry
    layout: VolumeLayout
    mapping: IntensityMapping
    batch_size: int
    metadata: ModelMetadata
    required_multiple: int
    outputs: List[np.ndarray] = field(default_factory=list)
    result: Optional[PredictionResult] = None  # labels and confidence at the checkpoint's own temperature

    @property
    def body(self) -> np.ndarray:
        """[k, j, i] bool: the voxels inside the body boxes the network ran on."""
        mask = np.zeros(self.volume.shape, dtype=bool)
        view = self.geometry.slices_view(mask)
        for index in self.layout.bodies.slices_with_body:
            r0, r1, c0, c1 = (int(v) for v in self.layout.bodies.boxes[index])
            view[index, r0:r1, c0:c1] = True
        return mask

    def channels(self, labels: np.ndarray) -> np.ndarray:
        """Label values → channel numbers of the checkpoint's classes."""
        out = np.zeros(labels.shape, dtype=np.uint8)
        for channel, info in enumerate(self.metadata.classes, 1):
            out[labels == info.value] = channel
        return out

    def unknown_channels(self) -> np.ndarray:
        """``(K,)`` bool over background + classes: the channels a truth of 0 may be (background and the unlabelled)."""
        count = len(self.metadata.classes)
        merged = np.zeros(count + 1, dtype=bool)
        merged[0] = True
        if self.labelled is not None:
            merged[1:] = [channel not in self.labelled for channel in range(1, count + 1)]
        return merged


def record_volume(predictor, name: str, volume: np.ndarray, truth: np.ndarray, labelled: Optional[frozenset], geometry: SliceGeometry,
                  layout: VolumeLayout, mapping: IntensityMapping, batch_size: int, observers: Sequence[SliceObserver] = ()) -> RecordedVolume:
    """Segment ``volume`` as predict does with ``predictor``, keeping every network output for :func:`replay`."""
    recording = RecordingPredictor(predictor)
    recorded = RecordedVolume(name, volume, truth, labelled, geometry, layout, mapping, batch_size, predictor.metadata, int(predictor.required_multiple))
    recorded.result = predict_volume(volume, geometry, recording, mapping, batch_size, want_confidence=True, observers=observers, grid=layout.grid, bodies=layout.bodies)
    recorded.outputs = recording.outputs
    return recorded


def replay(recorded: RecordedVolume, transform: Callable[[np.ndarray], np.ndarray], metadata: Optional[ModelMetadata] = None,
           observers: Sequence[SliceObserver] = ()) -> PredictionResult:
    """The pipeline once more on the recorded outputs, each ``transform`` ed: labels and confidence as predict decides them."""
    predictor = ReplayPredictor(recorded.outputs, metadata or recorded.metadata, recorded.required_multiple, transform)
    result = predict_volume(recorded.volume, recorded.geometry, predictor, recorded.mapping, recorded.batch_size, want_confidence=True,
                            observers=observers, grid=recorded.layout.grid, bodies=recorded.layout.bodies)
    if predictor.calls != len(recorded.outputs):
        raise RuntimeError(f"replay of {recorded.name}: {predictor.calls} batches, {len(recorded.outputs)} recorded")
    return result


def class_probabilities(recorded: RecordedVolume, voxels: np.ndarray) -> np.ndarray:
    """``(N, K)`` float64 probabilities of background + classes (K = 2 for one sigmoid class) at the flat
    indices ``voxels`` of the input's grid, as the pipeline resamples them: each class replayed alone."""
    metadata = recorded.metadata
    if not metadata.uses_softmax:
        result = replay(recorded, lambda output: output)
        foreground = _probability_of_label(result, voxels)
        return np.stack([1.0 - foreground, foreground], axis=1)
    columns = []
    for channel, info in enumerate(metadata.classes, 1):
        one_class = dataclasses.replace(metadata, classes=[info])
        result = replay(recorded, lambda output, c=channel: output[:, c:c + 1], metadata=one_class)
        columns.append(_probability_of_label(result, voxels))
    classes = np.stack(columns, axis=1)
    background = np.clip(1.0 - classes.sum(axis=1, keepdims=True), 0.0, 1.0)
    return np.concatenate([background, classes], axis=1)


def _probability_of_label(result: PredictionResult, voxels: np.ndarray) -> np.ndarray:
    """p of a one-class decision's foreground at ``voxels``: its confidence where chosen, else 1 − confidence."""
    confidence = result.confidence.reshape(-1)[voxels].astype(np.float64)
    chosen = result.labels.reshape(-1)[voxels] != 0
    return np.where(chosen, confidence, 1.0 - confidence)


@dataclass
class FitSample:
    """What the likelihood of one patient's held-out voxels needs: log-probabilities, truth, merged channels."""

    log_p: np.ndarray  # (N, K) float64
    truth: np.ndarray  # (N,) channel numbers
    merged: np.ndarray  # (N, K) bool: the channels a truth of 0 stands for (background and the case's unlabelled classes)

    @staticmethod
    def join(samples: Sequence["FitSample"]) -> "FitSample":
        return FitSample(*(np.concatenate([getattr(s, f.name) for s in samples]) for f in dataclasses.fields(FitSample)))


def fit_sample(recorded: RecordedVolume, limit: int = FIT_SAMPLE, seed: int = 0) -> FitSample:
    """Up to ``limit`` voxels inside the body boxes, drawn at random (seeded), with their class log-probabilities."""
    inside = np.flatnonzero(recorded.body.reshape(-1))
    rng = np.random.default_rng(seed)
    voxels = np.sort(rng.choice(inside, size=min(limit, inside.size), replace=False))
    # times the checkpoint's own temperature: the logits themselves (up to a per-voxel constant), so a fitted ratio is a temperature
    log_p = log_probabilities(class_probabilities(recorded, voxels)) * recorded.metadata.temperature
    truth = recorded.truth.reshape(-1)[voxels].astype(np.int64)
    merged = np.broadcast_to(recorded.unknown_channels()[: log_p.shape[1]], log_p.shape).copy()
    return FitSample(log_p, truth, merged)


def marginal_nll(sample: FitSample, ratio: float) -> float:
    """Mean −log likelihood of the truth with the logits divided by ``ratio``: the truth's class, or for a
    truth of 0 the merged probability of background and the case's unlabelled classes."""
    logits = sample.log_p / ratio
    top = logits.max(axis=1, keepdims=True)
    log_total = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    labelled = sample.truth > 0
    target = np.empty(len(logits))
    target[labelled] = logits[labelled, sample.truth[labelled]]
    merged = np.where(sample.merged[~labelled], logits[~labelled] - top[~labelled], -np.inf)
    target[~labelled] = np.log(np.exp(merged).sum(axis=1)) + top[~labelled, 0]
    return float(np.mean(log_total - target))


def fit_temperature(samples: Sequence[FitSample]) -> float:
    """The ratio t minimising the mean of the samples' :func:`marginal_nll` (each patient weighs the same),
    searched on log t within :data:`~UNetSegmentationLib.model.metadata.TEMPERATURE_RANGE`."""
    from scipy.optimize import minimize_scalar

    low, high = (math.log(v) for v in TEMPERATURE_RANGE)
    result = minimize_scalar(lambda log_t: float(np.mean([marginal_nll(s, math.exp(log_t)) for s in samples])),
                             bounds=(max(low, math.log(0.05)), min(high, math.log(20.0))), method="bounded", options={"xatol": 1e-3})
    return float(math.exp(result.x))


@dataclass(frozen=True)
class FoldTemperatures:
    """Temperatures fitted leave one patient out: ``own[k]`` on fold k's held-out data, ``held_out[k]`` on
    every other fold's (what an honest after-calibration figure for fold k uses), ``shipped`` on all of them."""

    own: dict
    held_out: dict
    shipped: float


def lopo_temperatures(samples: dict) -> FoldTemperatures:
    """``samples``: fold → :class:`FitSample` of that fold model on its held-out patient. Each patient weighs the same."""
    folds = sorted(samples)
    own = {k: fit_temperature([samples[k]]) for k in folds}
    held_out = {k: fit_temperature([samples[j] for j in folds if j != k]) if len(folds) > 1 else float("nan") for k in folds}
    return FoldTemperatures(own, held_out, fit_temperature([samples[k] for k in folds]))


def known_correctness(predicted: np.ndarray, truth: np.ndarray, labelled: Optional[frozenset]) -> np.ndarray:
    """bool: the voxels where whether the predicted channel is right is known. Everywhere when the case
    labels every class; else where the truth is a labelled class, or the prediction is one (then right
    exactly when it equals the truth). A voxel labelled 0 predicted as background or as an unlabelled
    class may be right or wrong: it is left out."""
    if labelled is None:
        return np.ones(truth.shape, dtype=bool)
    known_labels = np.zeros(max(int(predicted.max(initial=0)), int(truth.max(initial=0)), max(labelled, default=0)) + 1, dtype=bool)
    known_labels[list(labelled)] = True
    return known_labels[truth] | known_labels[predicted]


@dataclass
class CalibrationBins:
    """Counts, summed confidence and summed correctness per equal-width confidence bin (they add up over volumes)."""

    count: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))
    correct: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))

    def add(self, confidence: np.ndarray, correct: np.ndarray) -> "CalibrationBins":
        index = np.minimum((np.asarray(confidence, dtype=np.float64) * ECE_BINS).astype(np.int64), ECE_BINS - 1)
        self.count += np.bincount(index, minlength=ECE_BINS)
        self.confidence += np.bincount(index, weights=confidence, minlength=ECE_BINS)
        self.correct += np.bincount(index, weights=correct.astype(np.float64), minlength=ECE_BINS)
        return self

    def ece(self) -> float:
        """Expected calibration error: Σ_bins (n_b / n) |accuracy_b − mean confidence_b| (Naeini et al. 2015)."""
        total = self.count.sum()
        return float(np.abs(self.correct - self.confidence).sum() / total) if total else float("nan")


def calibration_bins(recorded: RecordedVolume, result: PredictionResult) -> CalibrationBins:
    """The bins of one segmentation's confidence (of the chosen label) over the known voxels inside the body."""
    predicted = recorded.channels(result.labels)
    counted = recorded.body & known_correctness(predicted, recorded.truth, recorded.labelled)
    return CalibrationBins().add(result.confidence[counted], predicted[counted] == recorded.truth[counted])


def expected_calibration_error(recorded: Sequence[RecordedVolume], ratio: float = 1.0) -> Tuple[float, CalibrationBins]:
    """ECE over the volumes' known voxels inside the body, the logits divided by ``ratio`` more than the checkpoint does."""
    bins = CalibrationBins()
    for volume in recorded:
        result = volume.result if ratio == 1.0 else replay(volume, tempered(ratio))
        added = calibration_bins(volume, result)
        bins.count += added.count
        bins.confidence += added.confidence
        bins.correct += added.correct
    return bins.ece(), bins


def record_held_out(checkpoint, volumes: Sequence, depth=None, execution=None, batch_size: Optional[int] = None, reporter=None) -> List[RecordedVolume]:
    """Every :class:`~UNetSegmentationLib.evaluation.evaluate.LabelledVolume` segmented with ``checkpoint``
    as ``predict`` would (its plan, predictor, depth, layout and body crop; :func:`record_volume`)."""
    from UNetSegmentationLib.backends.factory import create_predictor
    from UNetSegmentationLib.backends.plan import ExecutionRequest, plan_execution
    from UNetSegmentationLib.inference.layout import layout_volume
    from UNetSegmentationLib.inference.normalization import fit_normalization
    from UNetSegmentationLib.inference.options import DEFAULTS
    from UNetSegmentationLib.model.depth import resolve_depth

    metadata = checkpoint.metadata
    plan = plan_execution(execution or ExecutionRequest())
    log = reporter.log if reporter is not None else None
    predictor, _ = create_predictor(checkpoint, plan, resolve_depth(metadata, depth), DEFAULTS.classification_guidance, log=log)
    recorded = []
    for volume in volumes:
        geometry = SliceGeometry.from_direction(volume.direction)
        layout = layout_volume(volume.volume, geometry, volume.spacing, metadata, True, True)
        recorded.append(record_volume(predictor, volume.name, volume.volume, volume.truth, volume.labelled, geometry, layout,
                                      fit_normalization(metadata.normalization, volume.volume), batch_size or DEFAULTS.batch_size))
    return recorded

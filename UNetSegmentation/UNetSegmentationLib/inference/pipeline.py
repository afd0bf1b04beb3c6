"""Volume in, label map out: 2.5D slice-wise inference at the model's resolution, streamed batch by batch.

read → slices (a view: slice axis first, canonical in-plane orientation) → batches of the slices that
have body (:mod:`.body`), each cut to its slices' body box, with 2.5D neighbours at the model's slice
distance, resampled to the model's in-plane spacing, normalised and padded (:mod:`.slicing`,
:mod:`.resolution`) → network → probabilities → resampled back onto the input's pixels of the box →
labels (written into the output array through the same view; outside the boxes: background) → write
(temporary file, then rename). Memory is bounded by the batch plus the uint8/uint16 label volume (and
the float32 confidence map when asked for); the input is never copied as a whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Protocol, Sequence, Tuple, TYPE_CHECKING

import numpy as np

from UNetSegmentationLib.backends.memory import MemoryGuard
from UNetSegmentationLib.inference.normalization import IntensityMapping
from UNetSegmentationLib.inference.prefetch import prefetch
from UNetSegmentationLib.inference.body import BodyBoxes
from UNetSegmentationLib.inference.decision import labels_from_probabilities
from UNetSegmentationLib.inference.grid_decision import decide_on_input_grid
from UNetSegmentationLib.inference.model_slices import decided_by_network, interpolated_decisions, position_batches
from UNetSegmentationLib.inference.resolution import ModelGrid, resample_probabilities
from UNetSegmentationLib.inference.slicing import SliceGeometry, input_batches, model_batches, padding_for
from UNetSegmentationLib.io.segmentations import label_dtype
from UNetSegmentationLib.protocol.reporters import Reporter

if TYPE_CHECKING:  # only for annotations: torch is imported where it is used
    from UNetSegmentationLib.backends.torch_predictor import SlicePredictor


class SliceObserver(Protocol):
    """Sees each batch's result as it is decided (e.g. the review ranking of :mod:`.review`):
    ``indices`` of the slices (along the slice axis), their ``(B, rows, columns)`` labels and the
    probability of each chosen label, on the input's grid in the slice view's orientation: on the
    batch's body box grown by :data:`OBSERVED_MARGIN` pixels (clipped to the slice), outside which every
    pixel of these slices is background with confidence 1. Sums over labelled pixels and scores local to a
    change of label (the review's boundary band) are those of whole slices."""

    def observe(self, indices: np.ndarray, labels: np.ndarray, confidence: np.ndarray) -> None: ...


#: observers see the body box grown by this many pixels: a band of up to 3 pixels around a change of label
#: at the box's edge (the widest of bench/review_ranking.py's scores) lies inside
OBSERVED_MARGIN = 4


def _observed(indices, count: int, box, shape, batch_labels: np.ndarray, batch_confidence: np.ndarray, label_slices: np.ndarray) -> tuple:
    """``(labels, confidence)`` as observers see them: ``box`` grown by :data:`OBSERVED_MARGIN` (clipped to the
    slice ``shape``), the box's written labels of the ``count`` slices ``indices`` (an index array or a slice)
    read back and its confidence in a frame of certain background."""
    r0, r1, c0, c1 = box
    if r1 <= r0 or c1 <= c0:
        return np.zeros((count, 0, 0), dtype=batch_labels.dtype), np.ones((count, 0, 0), dtype=np.float32)
    w0, w1 = max(r0 - OBSERVED_MARGIN, 0), min(r1 + OBSERVED_MARGIN, shape[0])
    v0, v1 = max(c0 - OBSERVED_MARGIN, 0), min(c1 + OBSERVED_MARGIN, shape[1])
    if (w0, w1, v0, v1) == (r0, r1, c0, c1):
        return batch_labels, batch_confidence
    confidence = np.ones((count, w1 - w0, v1 - v0), dtype=np.float32)
    confidence[:, r0 - w0:r1 - w0, c0 - v0:c1 - v0] = batch_confidence
    return label_slices[indices, w0:w1, v0:v1], confidence


def _filled(shape: Tuple[int, ...], dtype, value) -> np.ndarray:
    """A whole-volume array of ``value``. ``np.empty`` then ``fill`` rather than ``np.zeros``/``np.ones``: numpy
    asks the kernel for huge pages for the memory ``np.empty`` allocates, not for ``np.zeros``' (calloc), whose 4 kB
    pages then fault one by one as the slices are written: 0.02-0.34 s for a 512×512×600 label map on this machine,
    against 0.03 s for this, measured in fresh processes."""
    array = np.empty(shape, dtype=dtype)
    array.fill(value)
    return array


@dataclass
class PredictionResult:
    labels: np.ndarray  # [k, j, i], the input's grid
    confidence: Optional[np.ndarray]
    timings: Dict[str, float] = field(default_factory=dict)


def predict_volume(
    volume: np.ndarray,
    geometry: SliceGeometry,
    predictor: SlicePredictor,
    mapping: IntensityMapping,
    batch_size: int,
    want_confidence: bool = False,
    reporter: Optional[Reporter] = None,
    observers: Sequence[SliceObserver] = (),
    grid: Optional[ModelGrid] = None,
    bodies: Optional[BodyBoxes] = None,
) -> PredictionResult:
    """Segment a [k, j, i] volume slice by slice; returns labels on the same grid.

    ``grid``: how the slices meet the model (default: the input's own grid, neighbours one slice
    apart); ``bodies``: the body's box in each slice (default: whole slices). Each of ``observers``
    sees every batch's labels and confidence (on the body box and a margin, :class:`SliceObserver`).
    """
    metadata = predictor.metadata
    reporter = reporter or Reporter()
    slices = geometry.slices_view(volume)
    count, rows, columns = slices.shape
    grid = grid or ModelGrid((1.0, 1.0))
    bodies = bodies or BodyBoxes.whole(slices.shape)
    label_values = np.array([0] + [c.value for c in metadata.classes], dtype=label_dtype(max(c.value for c in metadata.classes)))
    if not metadata.uses_softmax:
        label_values = label_values[:2]
    labels = _filled(volume.shape, label_values.dtype, 0)
    label_slices = geometry.slices_view(labels)
    confidence = _filled(volume.shape, np.float32, 1.0) if want_confidence else None  # outside the body: certain background
    confidence_slices = geometry.slices_view(confidence) if want_confidence else None
    timings = {"preprocess_s": 0.0, "network_s": 0.0, "postprocess_s": 0.0, "resample_s": 0.0}
    guarded = MemoryGuard(predictor, reporter)  # out of memory: smaller batches, then the CPU (backends/memory.py)

    def put(indices: np.ndarray, box, batch_labels: np.ndarray, batch_confidence: np.ndarray) -> None:
        """Write the decided labels of ``indices`` on ``box`` (and what observers see)."""
        r0, r1, c0, c1 = box
        consecutive = len(indices) and int(indices[-1]) - int(indices[0]) == len(indices) - 1
        chosen = slice(int(indices[0]), int(indices[-1]) + 1) if consecutive else indices  # a slice: no fancy-index copy
        label_slices[chosen, r0:r1, c0:c1] = batch_labels
        if confidence_slices is not None:
            confidence_slices[chosen, r0:r1, c0:c1] = batch_confidence
        if observers:
            whole_labels, whole_confidence = _observed(chosen, len(indices), box, (rows, columns), batch_labels, batch_confidence, label_slices)
            for observer in observers:
                observer.observe(indices, whole_labels, whole_confidence)
        reporter.progress(int(indices[-1]) + 1)

    positions = grid.network_positions(count)
    if len(positions) < count:  # thin slices: the network at the model's slice distance, probabilities interpolated between
        _segment_thin_slices(slices, positions, batch_size, mapping, grid, bodies, guarded, put, label_values, timings)
        return PredictionResult(labels, confidence, timings)

    # the next batch is gathered, resampled, normalised and padded on a thread while the network runs (prefetch.py)
    batches = prefetch(model_batches(slices, batch_size, metadata.context, mapping, grid, bodies, predictor.required_multiple))
    for _ in range(0, len(bodies.slices_with_body), batch_size):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        model_rows, model_columns = batch.model_size
        output = guarded(batch.inputs)[:, :, :model_rows, :model_columns]  # probabilities on the model's grid
        t2 = time.perf_counter()
        batch_labels, batch_confidence, resample_s = _decided_on_box(output, batch.box_size, label_values)  # on the input's pixels of the box
        put(batch.indices, batch.box, batch_labels, batch_confidence)
        t4 = time.perf_counter()
        timings["preprocess_s"] += t1 - t0
        timings["network_s"] += t2 - t1
        timings["resample_s"] += batch.resample_s + resample_s  # inputs (on the prefetch thread) and probabilities
        timings["postprocess_s"] += t4 - t2 - resample_s
    if not len(bodies.slices_with_body) or bodies.slices_with_body[-1] < count - 1:
        reporter.progress(count)  # the last slices hold no body: nothing to compute there
    return PredictionResult(labels, confidence, timings)


def _segment_thin_slices(slices: np.ndarray, positions: np.ndarray, batch_size: int, mapping: IntensityMapping, grid: ModelGrid, bodies: BodyBoxes,
                         guarded: MemoryGuard, put: Callable, label_values: np.ndarray, timings: Dict[str, float]) -> None:
    """:func:`predict_volume`'s thin-slice path: the network at ``positions`` (:mod:`.model_slices`), every slice's
    labels decided between them and ``put``. The network computes the next batch of positions and decides each of
    them on the input's pixels on a thread (its inputs gathered on another) while this thread blends the slices of
    the batch before: all release the GIL, so the decisions overlap the network instead of following it. The
    network's thread keeps its own timings, added to ``timings`` at the end (no two threads add to one entry)."""
    metadata = guarded.predictor.metadata
    count = slices.shape[0]
    network_timings = dict.fromkeys(("network_s", "resample_s", "postprocess_s"), 0.0)
    network = decided_by_network(guarded, network_timings)
    batches = prefetch(position_batches(slices, positions, batch_size, metadata.context, mapping, grid, bodies, guarded.predictor.required_multiple))
    computed = prefetch(network(batch) for batch in batches)
    started = time.perf_counter()
    decided = interpolated_decisions(computed, positions, metadata.out_channels, count, batch_size, timings)
    channels_are_labels = label_values.dtype == np.uint8 and np.array_equal(label_values, np.arange(len(label_values)))
    for indices, box, chosen, chosen_confidence in decided:
        placing = time.perf_counter()
        put(indices, box, chosen if channels_are_labels else label_values[chosen], chosen_confidence)
        timings["postprocess_s"] += time.perf_counter() - placing
    for key, seconds in network_timings.items():
        timings[key] += seconds
    timings["preprocess_s"] = max(0.0, time.perf_counter() - started - sum(timings.values()))


def _decided_on_box(output, size: Tuple[int, int], label_values: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
    """``(labels, confidence, seconds resampling)`` on ``size`` input pixels of ``(B, K, h, w)`` model-grid
    probabilities: numpy (ONNX Runtime's, or a CPU run) decided on the model grid and resampled where that
    decides (:mod:`.grid_decision`); a tensor resampled on its device and decided there."""
    if not isinstance(output, np.ndarray):
        started = time.perf_counter()
        probabilities = resample_probabilities(output, size)
        resample_s = time.perf_counter() - started
        return (*labels_from_probabilities(probabilities, label_values), resample_s)
    decisions = [decide_on_input_grid(plane, size) for plane in output]
    chosen = np.stack([d.chosen for d in decisions])
    return label_values[chosen], np.stack([d.confidence for d in decisions]), sum(d.resample_s for d in decisions)


def predict_slices(predictor: SlicePredictor, slices: np.ndarray, mapping: IntensityMapping, indices: Sequence[int], batch_size: int = 4, step: float = 1.0) -> np.ndarray:
    """Channel numbers ``(len(indices), rows, columns)`` uint8 (0 background, c the c-th class) for
    ``indices`` of a [slice, row, column] view: the held-out slices that training validates on.

    The batches of :func:`predict_volume` (:func:`~UNetSegmentationLib.inference.slicing.input_batches`,
    restricted to ``indices``) and its label decision, with channel numbers in place of label values.
    """
    metadata = predictor.metadata
    rows, columns = slices.shape[1:]
    padding = padding_for((rows, columns), predictor.required_multiple)
    channels = np.arange(metadata.out_channels if metadata.uses_softmax else 2)
    out = np.zeros((len(indices), rows, columns), dtype=np.uint8)
    done = 0
    for batch_indices, batch in input_batches(slices, batch_size, metadata.context, mapping, padding, indices, step):
        out[done:done + len(batch_indices)] = labels_from_probabilities(predictor(batch)[:, :, :rows, :columns], channels)[0]
        done += len(batch_indices)
    return out

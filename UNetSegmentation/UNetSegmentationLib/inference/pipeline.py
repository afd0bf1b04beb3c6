"""Volume in, label map out: 2.5D slice-wise inference, streamed batch by batch.

read → slices (a view: slice axis first, canonical in-plane orientation) → batches of 2.5D inputs
(normalised, padded) → network → probabilities → labels (written into the output array through the
same view) → write (temporary file, then rename). Memory is bounded by the batch plus the uint8/uint16
label volume (and the float32 confidence map when asked for); the input is never copied as a whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Protocol, Sequence, TYPE_CHECKING

import numpy as np

from UNetSegmentationLib.backends.memory import MemoryGuard
from UNetSegmentationLib.inference.normalization import IntensityMapping
from UNetSegmentationLib.inference.prefetch import prefetch
from UNetSegmentationLib.inference.slicing import SliceGeometry, input_batches, padding_for
from UNetSegmentationLib.io.segmentations import label_dtype
from UNetSegmentationLib.protocol.reporters import Reporter

if TYPE_CHECKING:  # only for annotations: torch is imported where it is used
    import torch

    from UNetSegmentationLib.backends.torch_predictor import SlicePredictor


def labels_from_probabilities(probabilities: "torch.Tensor", label_values: np.ndarray) -> tuple:
    """``(labels, confidence)`` from ``(B, K, H, W)`` probabilities.

    One class (K = 1): foreground where p ≥ 0.5, confidence p or 1 - p. Several: argmax over
    background + classes, confidence the winning probability. ``label_values[c]`` is the label of
    channel c (``label_values[0] == 0`` for background).
    """
    import torch

    if probabilities.shape[1] == 1:
        foreground = probabilities[:, 0]
        chosen = (foreground >= 0.5).long()
        confidence = torch.where(chosen.bool(), foreground, 1 - foreground)
    else:
        confidence, chosen = probabilities.max(dim=1)
    return label_values[chosen.numpy()], confidence.numpy()


def labels_from_decision(decision: np.ndarray, label_values: np.ndarray) -> tuple:
    """``(labels, confidence)`` from a predictor that decides the labels itself (``decides_labels``):
    ``(B, 2, H, W)`` float32, the chosen channel and its probability
    (:class:`~UNetSegmentationLib.backends.torch_network.LabelDecisionNetwork`)."""
    chosen = decision[:, 0].astype(np.intp)  # small whole numbers, exact in float32
    return label_values[chosen], decision[:, 1]


def label_decision(predictor) -> Callable[[object, np.ndarray], tuple]:
    """How ``predictor``'s output becomes ``(labels, confidence)``: :func:`labels_from_decision` for a
    predictor that decides the labels itself, else :func:`labels_from_probabilities`."""
    return labels_from_decision if getattr(predictor, "decides_labels", False) else labels_from_probabilities


class SliceObserver(Protocol):
    """Sees each batch's result as it is decided (e.g. the review ranking of :mod:`.review`):
    ``indices`` of the slices (along the slice axis), their ``(B, rows, columns)`` labels and the
    probability of each chosen label, on the input's grid in the slice view's orientation."""

    def observe(self, indices: np.ndarray, labels: np.ndarray, confidence: np.ndarray) -> None: ...


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
) -> PredictionResult:
    """Segment a [k, j, i] volume slice by slice; returns labels on the same grid. Each of
    ``observers`` sees every batch's labels and confidence."""
    metadata = predictor.metadata
    reporter = reporter or Reporter()
    slices = geometry.slices_view(volume)
    rows, columns = slices.shape[1:]
    label_values = np.array([0] + [c.value for c in metadata.classes], dtype=label_dtype(max(c.value for c in metadata.classes)))
    if not metadata.uses_softmax:
        label_values = label_values[:2]
    labels = np.zeros(volume.shape, dtype=label_values.dtype)
    label_slices = geometry.slices_view(labels)
    confidence = np.zeros(volume.shape, dtype=np.float32) if want_confidence else None
    confidence_slices = geometry.slices_view(confidence) if want_confidence else None
    padding = padding_for((rows, columns), predictor.required_multiple)
    timings = {"preprocess_s": 0.0, "network_s": 0.0, "postprocess_s": 0.0}
    guarded = MemoryGuard(predictor, reporter)  # out of memory: smaller batches, then the CPU (backends/memory.py)
    # the next batch is gathered, normalised and padded on a thread while the network runs (prefetch.py)
    batches = prefetch(input_batches(slices, batch_size, metadata.context, mapping, padding))

    for _ in range(0, slices.shape[0], batch_size):
        t0 = time.perf_counter()
        indices, batch = next(batches)  # padding: zero in normalised units, at the far edges; cropped off below
        t1 = time.perf_counter()
        output = guarded(batch)[:, :, :rows, :columns]  # probabilities, or the decision of a predictor that makes it
        t2 = time.perf_counter()
        batch_labels, batch_confidence = label_decision(guarded.predictor)(output, label_values)
        label_slices[indices] = batch_labels
        if confidence_slices is not None:
            confidence_slices[indices] = batch_confidence
        for observer in observers:
            observer.observe(indices, batch_labels, batch_confidence)
        t3 = time.perf_counter()
        timings["preprocess_s"] += t1 - t0
        timings["network_s"] += t2 - t1
        timings["postprocess_s"] += t3 - t2
        reporter.progress(int(indices[-1]) + 1)
    return PredictionResult(labels, confidence, timings)


def predict_slices(predictor: SlicePredictor, slices: np.ndarray, mapping: IntensityMapping, indices: Sequence[int], batch_size: int = 4) -> np.ndarray:
    """Channel numbers ``(len(indices), rows, columns)`` uint8 (0 background, c the c-th class) for
    ``indices`` of a [slice, row, column] view: the held-out slices that training validates on.

    The batches of :func:`predict_volume` (:func:`~UNetSegmentationLib.inference.slicing.input_batches`,
    restricted to ``indices``) and its label decision, with channel numbers in place of label values.
    """
    metadata = predictor.metadata
    rows, columns = slices.shape[1:]
    padding = padding_for((rows, columns), predictor.required_multiple)
    channels = np.arange(metadata.out_channels if metadata.uses_softmax else 2)
    decide = label_decision(predictor)
    out = np.zeros((len(indices), rows, columns), dtype=np.uint8)
    done = 0
    for batch_indices, batch in input_batches(slices, batch_size, metadata.context, mapping, padding, indices):
        out[done:done + len(batch_indices)] = decide(predictor(batch)[:, :, :rows, :columns], channels)[0]
        done += len(batch_indices)
    return out

"""Segmenting at the model's slice distance: the network runs on fewer slices than a thin-slice scan has,
and the probabilities of the slices between are interpolated along the slice axis.

A model that learned from slices 10 mm apart has never seen a 2.5 mm slice; the slices it can judge
lie its slice distance apart. Where a scan's slices lie closer together, the network runs at the
centres of cells of that distance covering the scan's extent (:meth:`~.resolution.ModelGrid.network_positions`,
each position's input interpolated between the two nearest slices, its neighbours the slice distance
away) and every input slice gets the probabilities of the two nearest network positions, interpolated
linearly, before its labels are decided: the slice axis is treated as the in-plane axes are. It also
runs the network on a fraction of the slices (a quarter for 2.5 mm slices and a 10 mm model).

Memory: the full-slice probabilities of one batch of network positions and the one before it, and
those of one batch of input slices.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Iterator, Tuple

import numpy as np

from UNetSegmentationLib.inference.body import BodyBoxes
from UNetSegmentationLib.inference.decision import blended_decision, decided_in_numpy
from UNetSegmentationLib.inference.resolution import ModelGrid, resample_probabilities
from UNetSegmentationLib.inference.slicing import ModelBatch, body_batch


def neighbours_of(slice_count: int, cells: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each input slice: the network positions below and above it (indices into the positions) and
    the weight of the one above, for ``cells`` positions at cell centres over ``slice_count`` slices."""
    t = (np.arange(slice_count) + 0.5) * cells / slice_count - 0.5  # input slice k in position units
    below = np.clip(np.floor(t), 0, cells - 1).astype(np.int64)
    above = np.minimum(below + 1, cells - 1)
    return below, above, np.clip(t - below, 0.0, 1.0).astype(np.float32)


def position_batches(slices: np.ndarray, positions: np.ndarray, batch_size: int, context: int, mapping: Callable, grid: ModelGrid, bodies: BodyBoxes, multiple: int) -> Iterator[ModelBatch]:
    """Network inputs for ``positions`` (fractional slices) that touch the body, each batch cut to the body
    boxes of the slices its positions lie between."""
    count = slices.shape[0]
    touching = [j for j, p in enumerate(positions) if bodies.union([int(np.floor(p)), min(int(np.ceil(p)), count - 1)]) is not None]
    for start in range(0, len(touching), batch_size):
        chosen = np.asarray(touching[start:start + batch_size])
        around = np.unique(np.concatenate([np.floor(positions[chosen]), np.minimum(np.ceil(positions[chosen]), count - 1)]).astype(np.int64))
        batch = body_batch(slices, positions[chosen], context, mapping, grid, bodies, multiple, around)
        batch.indices = chosen  # which positions, not which slices
        yield batch


def interpolated_decisions(
    batches: Iterator[ModelBatch], network: Callable, positions: np.ndarray, slice_shape: Tuple[int, int], channels: int, slice_count: int, slices_per_step: int,
    timings: Dict[str, float],
) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(input slices, their chosen channels (B, rows, columns), confidence)`` in slice order, at most
    ``slices_per_step`` slices at a time, decided on the probabilities interpolated between the full-slice
    probabilities of the network positions around them (background where no position touched the body).
    Each position is decided once; a slice between two positions blends the K channels only where their
    choices differ (:func:`~.decision.blended_decision`: the same labels and confidence as deciding the
    whole blend). ``network(batch) -> (probabilities on the model grid, their box)``; the seconds spent
    deciding go to ``timings["postprocess_s"]``."""
    cells = len(positions)
    below, above, weight = neighbours_of(slice_count, cells)
    background = _background(channels, slice_shape)
    known: Dict[int, tuple] = {}
    pending = iter(batches)
    computed_up_to = -1  # every position up to here is known (computed, or background)
    next_slice = 0
    while next_slice < slice_count:
        if above[next_slice] > computed_up_to:
            batch = next(pending, None)
            last = cells - 1 if batch is None else int(batch.indices[-1])
            if batch is not None:
                probabilities, box = network(batch)
                started = time.perf_counter()
                for position, plane in zip(batch.indices, probabilities):
                    known[int(position)] = _decided_plane(background, plane, box)
                timings["postprocess_s"] += time.perf_counter() - started
            for position in range(computed_up_to + 1, last + 1):
                known.setdefault(position, background)
            computed_up_to = last
            continue
        started = time.perf_counter()
        ready = np.arange(next_slice, min(slice_count, next_slice + slices_per_step))
        ready = ready[above[ready] <= computed_up_to]
        chosen = np.empty((len(ready),) + tuple(slice_shape), dtype=np.uint8)
        confidence = np.empty((len(ready),) + tuple(slice_shape), dtype=np.float32)
        for n, k in enumerate(ready):
            chosen[n], confidence[n] = blended_decision(known[int(below[k])], known[int(above[k])], float(weight[k]))
        timings["postprocess_s"] += time.perf_counter() - started
        yield ready, chosen, confidence
        next_slice = int(ready[-1]) + 1
        for position in [p for p in known if p < below[min(next_slice, slice_count - 1)]]:
            del known[position]


def _background(channels: int, slice_shape: Tuple[int, int]) -> tuple:
    """The decided plane of a position that holds no body: background, certain."""
    probabilities = np.zeros((channels,) + tuple(slice_shape), dtype=np.float32)
    if channels > 1:
        probabilities[0] = 1.0  # softmax: background; one sigmoid channel: foreground 0
    chosen, confidence = decided_in_numpy(probabilities[None])
    return probabilities, chosen[0], confidence[0]


def _decided_plane(background: tuple, plane: np.ndarray, box: Tuple[int, int, int, int]) -> tuple:
    """``(probabilities, chosen, confidence)`` of one position: its ``(K, box rows, box columns)``
    probabilities placed on the whole slice (background outside the box), decided once."""
    probabilities, chosen, confidence = (a.copy() for a in background)
    inside = (slice(box[0], box[1]), slice(box[2], box[3]))
    probabilities[(slice(None),) + inside] = plane
    box_chosen, box_confidence = decided_in_numpy(plane[None])
    chosen[inside], confidence[inside] = box_chosen[0], box_confidence[0]
    return probabilities, chosen, confidence


def network_on_batch(guarded: Callable, timings: Dict[str, float]) -> Callable:
    """``batch -> (probabilities resampled onto the input's pixels of its box, the box)``, timed."""
    def run(batch: ModelBatch):
        started = time.perf_counter()
        rows, columns = batch.model_size
        output = guarded(batch.inputs)[:, :, :rows, :columns]
        computed = time.perf_counter()
        probabilities = _as_numpy(resample_probabilities(output, batch.box_size))
        timings["network_s"] += computed - started
        timings["resample_s"] += batch.resample_s + time.perf_counter() - computed
        return probabilities, batch.box

    return run


def _as_numpy(probabilities) -> np.ndarray:
    """float32 numpy probabilities from a predictor's tensor (on any device) or numpy array."""
    if isinstance(probabilities, np.ndarray):
        return probabilities.astype(np.float32, copy=False)
    return probabilities.detach().float().cpu().numpy()

"""Segmenting at the model's slice distance: the network runs on fewer slices than a thin-slice scan has,
and the probabilities of the slices between are interpolated along the slice axis.

A model that learned from slices 10 mm apart has never seen a 2.5 mm slice; the slices it can judge
lie its slice distance apart. Where a scan's slices lie closer together, the network runs at the
centres of cells of that distance covering the scan's extent (:meth:`~.resolution.ModelGrid.network_positions`,
each position's input interpolated between the two nearest slices, its neighbours the slice distance
away) and every input slice gets the probabilities of the two nearest network positions, interpolated
linearly, before its labels are decided: the slice axis is treated as the in-plane axes are. It also
runs the network on a fraction of the slices (a quarter for 2.5 mm slices and a 10 mm model).

Memory: the model-grid probabilities and the input-grid decisions of the positions of one batch and
the one before it; the decided labels and confidence of one step of input slices, on their body box.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from UNetSegmentationLib.inference.body import Box, BodyBoxes
from UNetSegmentationLib.inference.decision import decided_in_numpy
from UNetSegmentationLib.inference.grid_decision import GridDecision, decide_on_input_grid
from UNetSegmentationLib.inference.resolution import ModelGrid
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
    computed: Iterator[Tuple[ModelBatch, List[GridDecision]]], positions: np.ndarray, channels: int, slice_count: int, slices_per_step: int,
    timings: Dict[str, float],
) -> Iterator[Tuple[np.ndarray, Box, np.ndarray, np.ndarray]]:
    """``(input slices, box, their chosen channels (B, box rows, box columns), confidence)`` in slice order, at
    most ``slices_per_step`` slices of the same two network positions at a time, decided on the probabilities
    interpolated between those of the positions around them; outside ``box`` (the union of the two positions'
    body boxes) background, certain. ``computed`` gives each batch of positions with each position's decision on
    the input's pixels of the batch's box, made once from its model-grid probabilities (:func:`decided_by_network`;
    the pipeline computes the next batch on a thread while this decides the slices of the one before). A slice
    between two positions blends their confidence, and their K channels only where their choices differ
    (:class:`_PositionPair`: the same labels and confidence as deciding the whole blend); the seconds spent here go
    to ``timings["postprocess_s"]``."""
    cells = len(positions)
    below, above, weight = neighbours_of(slice_count, cells)
    known: Dict[int, Optional[_Position]] = {}
    pairs: Dict[Tuple[int, int], _PositionPair] = {}
    pending = iter(computed)
    computed_up_to = -1  # every position up to here is known (computed, or background: None)
    next_slice = 0
    while next_slice < slice_count:
        if above[next_slice] > computed_up_to:
            batch, decisions = next(pending, (None, None))
            last = cells - 1 if batch is None else int(batch.indices[-1])
            if batch is not None:
                for position, decision in zip(batch.indices, decisions):
                    known[int(position)] = _Position(batch.box, decision)
            for position in range(computed_up_to + 1, last + 1):
                known.setdefault(position, None)
            computed_up_to = last
            continue
        started = time.perf_counter()
        pair = (int(below[next_slice]), int(above[next_slice]))
        ready = np.arange(next_slice, min(slice_count, next_slice + slices_per_step))
        ready = ready[(below[ready] == pair[0]) & (above[ready] == pair[1])]
        if pair not in pairs:
            pairs.clear()  # the slices of the pair before are all decided
            pairs[pair] = _PositionPair(known[pair[0]], known[pair[1]], channels)
        blend = pairs[pair]
        shape = (len(ready), blend.box[1] - blend.box[0], blend.box[3] - blend.box[2])  # ready holds next_slice at least
        chosen, confidence = np.empty(shape, dtype=np.uint8), np.empty(shape, dtype=np.float32)
        for n, k in enumerate(ready):  # each slice decided into its place (no list of slices stacked again)
            blend.at(float(weight[k]), chosen[n], confidence[n])
        timings["postprocess_s"] += time.perf_counter() - started
        yield ready, blend.box, chosen, confidence
        next_slice = int(ready[-1]) + 1
        for position in [p for p in known if p < below[min(next_slice, slice_count - 1)]]:
            del known[position]


@dataclass(frozen=True)
class _Position:
    """A network position's body ``box`` (input pixels of the whole slice) and its decision there."""

    box: Box
    decision: GridDecision


class _PositionPair:
    """The slices between two network positions (``lower``, ``upper``; None: a position without body, certain
    background): both decisions placed on the union of their boxes, and where their choices differ, both
    positions' K probabilities (background outside a position's box), so that each slice between them is
    decided by blending the confidence everywhere and the channels only there (:meth:`at`)."""

    def __init__(self, lower: Optional[_Position], upper: Optional[_Position], channels: int) -> None:
        boxes = [p.box for p in (lower, upper) if p is not None]
        self.box: Box = (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes)) if boxes else (0, 0, 0, 0)
        self.same = upper is lower
        self.background = np.zeros(channels, dtype=np.float32)
        if channels > 1:
            self.background[0] = 1.0  # softmax: background; one sigmoid channel: foreground 0
        self.lower, self.upper = self._placed(lower), self._placed(upper)
        self.confidence_step = self.upper[1] - self.lower[1]  # once per pair: the same values the blend subtracts per slice
        differ = np.flatnonzero(self.lower[0] != self.upper[0]) if not self.same else np.zeros(0, np.int64)
        self.differ = differ
        ys, xs = np.divmod(differ, max(self.box[3] - self.box[2], 1))
        self.lower_probabilities = self._probabilities(lower, ys + self.box[0], xs + self.box[2])
        self.upper_probabilities = self._probabilities(upper, ys + self.box[0], xs + self.box[2])

    def _placed(self, position: Optional[_Position]) -> Tuple[np.ndarray, np.ndarray]:
        """``(chosen, confidence)`` of ``position`` on this pair's box (background, certain, outside its own)."""
        shape = (self.box[1] - self.box[0], self.box[3] - self.box[2])
        background_chosen, background_confidence = decided_in_numpy(self.background[None, :, None, None])
        chosen = np.full(shape, background_chosen.item(), dtype=np.uint8)
        confidence = np.full(shape, background_confidence.item(), dtype=np.float32)
        if position is not None:
            inside = (slice(position.box[0] - self.box[0], position.box[1] - self.box[0]), slice(position.box[2] - self.box[2], position.box[3] - self.box[2]))
            chosen[inside], confidence[inside] = position.decision.chosen, position.decision.confidence
        return chosen, confidence

    def _probabilities(self, position: Optional[_Position], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """``(K, n)``: ``position``'s resampled probabilities at whole-slice pixels ``(ys, xs)`` (background outside its box)."""
        values = np.repeat(self.background[:, None], len(ys), axis=1)
        if position is not None and len(ys):
            box = position.box
            inside = np.flatnonzero((ys >= box[0]) & (ys < box[1]) & (xs >= box[2]) & (xs < box[3]))
            values[:, inside] = position.decision.probabilities_at(ys[inside] - box[0], xs[inside] - box[2])
        return values

    def at(self, weight: float, chosen: np.ndarray, confidence: np.ndarray) -> None:
        """Write ``(chosen, confidence)`` on the box of the slice ``weight`` of the way from the lower position to
        the upper into ``chosen`` and ``confidence`` (the step's arrays: no slice-sized temporary): the decision
        of ``lower + weight · (upper - lower)`` (:func:`~.decision.blended_decision`'s rule)."""
        if weight <= 0.0 or self.same:
            chosen[...], confidence[...] = self.lower
            return
        if weight >= 1.0:
            chosen[...], confidence[...] = self.upper
            return
        w = np.float32(weight)
        chosen[...] = self.lower[0]
        np.multiply(self.confidence_step, w, out=confidence)
        confidence += self.lower[1]  # lower + w · step, in the order the whole blend computes it
        if self.differ.size:
            mixed_chosen, mixed_confidence = decided_in_numpy((self.lower_probabilities + w * (self.upper_probabilities - self.lower_probabilities))[None, :, :, None])
            chosen.reshape(-1)[self.differ] = mixed_chosen.reshape(-1)
            confidence.reshape(-1)[self.differ] = mixed_confidence.reshape(-1)


def decided_by_network(guarded: Callable, timings: Dict[str, float]) -> Callable:
    """``batch -> (batch, each of its positions decided on the input's pixels of ``batch.box``)``, timed: the network's
    model-grid probabilities, then each position's decision (:mod:`.grid_decision`). The pipeline runs it on the
    network's thread while its own thread decides the slices between the positions before (the decisions on a
    third thread of their own measured slower)."""
    def run(batch: ModelBatch) -> Tuple[ModelBatch, List[GridDecision]]:
        started = time.perf_counter()
        rows, columns = batch.model_size
        output = guarded(batch.inputs)[:, :, :rows, :columns]
        computed = time.perf_counter()
        box = batch.box
        decisions = [decide_on_input_grid(plane, (box[1] - box[0], box[3] - box[2])) for plane in _as_numpy(output)]
        resampled = sum(decision.resample_s for decision in decisions)
        timings["network_s"] += computed - started
        timings["resample_s"] += batch.resample_s + resampled
        timings["postprocess_s"] += time.perf_counter() - computed - resampled
        return batch, decisions

    return run


def _as_numpy(probabilities) -> np.ndarray:
    """float32 numpy probabilities from a predictor's tensor (on any device) or numpy array."""
    if isinstance(probabilities, np.ndarray):
        return probabilities.astype(np.float32, copy=False)
    return probabilities.detach().float().cpu().numpy()

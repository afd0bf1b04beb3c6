"""A ``segment`` or ``segment_slices`` request run as ``unetseg predict`` runs a volume, with its model
from the warm engine's cache.

The order is predict's (:func:`~..inference.predict_file.predict_file`): the outputs through the output
gate and the input from its header before any lock, model or voxel; a slice range checked against the
volume's slices from the header; the outputs claimed; the model (from the cache, or opened now after the
memory and data checks, as predict opens it); then predict's one case runner
(:func:`~..inference.predict_file.segment_volume`), which writes every output together and reports
``done``. A cancel or a failure leaves by the same ``finally`` blocks as predict's SIGTERM.
"""

from __future__ import annotations

import time
from typing import List, Optional

from UNetSegmentationLib.engine.model_cache import ModelCache
from UNetSegmentationLib.engine.request_reporter import RequestReporter
from UNetSegmentationLib.engine.requests import SEGMENT_SLICES, Request
from UNetSegmentationLib.grammar.slice_ranges import parse_slice_ranges
from UNetSegmentationLib.inference.predict_file import checked_input, checked_outputs, open_model, prepare_input, segment_volume
from UNetSegmentationLib.inference.slicing import SliceGeometry
from UNetSegmentationLib.io.input_header import InputHeader
from UNetSegmentationLib.io.outputs import claim_outputs, claiming_outputs
from UNetSegmentationLib.model.bundled import checkpoint_path
from UNetSegmentationLib.model.checkpoint import load_checkpoint
from UNetSegmentationLib.model.depth import resolve_depth


def run_segment(request: Request, cache: ModelCache, reporter: RequestReporter) -> dict:
    """Run one segmenting request; returns its ``done`` summary (the events went to ``reporter``)."""
    options = request.options
    checkpoint = checkpoint_path(request.checkpoint)
    outputs = checked_outputs(request.input, request.output, options, protected=[checkpoint])
    header = prepare_input(request.input, outputs[0], request.series)
    wanted = _wanted_slices(request, header)
    with claiming_outputs():
        claim_outputs(outputs)
        key = cache.key(checkpoint, options)
        model = cache.get(key)
        loaded = model is None
        if model is None:  # predict's order: metadata, depth, memory and data checks, then the model
            opened = load_checkpoint(checkpoint, None, weights=False)  # weights read when the network is built
            resolve_depth(opened.metadata, options.depth)
            header = checked_input(header, opened.metadata, options)
            model = open_model(opened, options, reporter)
            cache.put(key, model)
        else:
            header = checked_input(header, model.metadata, options)
        reporter.extra["model"] = "loaded" if loaded else "cached"
        t_start = time.perf_counter() - (model.seconds if loaded else 0.0)  # load_model_s: what this request paid for its model
        return segment_volume(header, outputs, model, options, reporter, t_start, slices=wanted)


def _wanted_slices(request: Request, header: InputHeader) -> Optional[List[int]]:
    """``segment_slices``: the slices asked for, each checked against the volume's slices along its slice axis."""
    if request.type != SEGMENT_SLICES:
        return None
    geometry = SliceGeometry.from_direction(header.direction, request.options.axis)
    return parse_slice_ranges(str(request.slices), header.size[geometry.slice_axis], option="slices")


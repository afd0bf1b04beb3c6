"""``unetseg evaluate``: segment labelled volumes with a checkpoint and score them against their ground truth.

Evaluation runs what ``unetseg predict`` runs, so its numbers are the numbers a user gets:

- the same plan: :func:`~UNetSegmentationLib.backends.plan.plan_execution` on an
  :class:`~UNetSegmentationLib.backends.plan.ExecutionRequest` made of ``--device``, ``--backend``,
  ``--precision`` and ``--threads`` (predict's options, defaults and choices);
- the same predictor: :func:`~UNetSegmentationLib.backends.factory.create_predictor` on the checkpoint,
  once per depth (with ``--precision int8`` quantised for each volume, as predict does);
- the same layout: :func:`~UNetSegmentationLib.inference.layout.layout_volume` (the model's spacing and
  slice distance unless ``--spacing native``, the body crop unless ``--no-crop``: predict's defaults);
- the same batches: :func:`~UNetSegmentationLib.inference.pipeline.predict_volume` on the whole volume;
  the slices to score (``--slices``) are selected from its labels afterwards.

ms/slice is the wall-clock time of that ``predict_volume`` call (batches gathered and normalised,
network, label decision: the path predict takes between reading and writing) divided by the volume's
slice count, summed over volumes per depth. It is measured after a warm-up: one batch of the same
volume through the same predictor, untimed, so no depth is charged for first-call set-up.

Per volume, per depth and per class: the metrics of :mod:`.metrics` on the volume's own grid, for the
classes its labels cover only (a datalist case's ``labelled_classes``: a class its labels do not cover is
unknown there, so it gets no row at all, neither a 0 nor a 1, and no mean counts it). The
run reports ``start("evaluate", cases × depths, "case", ...)`` and ``progress(done, case=..., depth=...)``
after each volume at each depth; the caller reports ``done`` once the results are written
(:mod:`.report` writes the table, CSV, JSON and plot).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from UNetSegmentationLib.backends.factory import create_predictor
from UNetSegmentationLib.backends.plan import ExecutionPlan, ExecutionRequest, check_positive, plan_execution
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.grammar.slice_ranges import CHECKPOINT_SLICES, parse_slice_ranges
from UNetSegmentationLib.evaluation.metrics import METRICS, class_metrics
from UNetSegmentationLib.inference.normalization import IntensityMapping, fit_normalization
from UNetSegmentationLib.inference.options import DEFAULTS, SPACING_MODEL
from UNetSegmentationLib.inference.pipeline import predict_volume
from UNetSegmentationLib.backends.factory import PredictorFactory
from UNetSegmentationLib.inference.predict_file import quantized_for_volume
from UNetSegmentationLib.inference.layout import VolumeLayout, layout_volume
from UNetSegmentationLib.inference.slicing import SliceGeometry, model_batches
from UNetSegmentationLib.model.checkpoint import Checkpoint
from UNetSegmentationLib.model.depth import Depth, depth_tag, resolve_depth
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.protocol.reporters import Reporter

# dice_per_class and predict_slices are re-exported for training/validation.py, which imports them
# from here; their homes are .metrics and inference.pipeline


# --- slices to score -----------------------------------------------------------------------------------


def held_out_slices_of(metadata: ModelMetadata, image_path: Path) -> np.ndarray:
    """The held-out slices the checkpoint's training recorded for an image of this file name."""
    entries = (metadata.training.get("data") or {}).get("held_out_slices") or []
    matches = [e for e in entries if isinstance(e, dict) and e.get("image") == Path(image_path).name]
    if not matches:
        known = ", ".join(sorted({str(e.get("image")) for e in entries if isinstance(e, dict)})) or "none"
        raise UserError(f"--slices checkpoint: the checkpoint records no held-out slices for {Path(image_path).name} (it has them for: {known})")
    return np.array(sorted({int(s) for e in matches for s in e.get("slices", [])}), dtype=int)


def _scored_slices(slice_count: int, slices: Optional[str], metadata: ModelMetadata, volume: "LabelledVolume") -> np.ndarray:
    """``(slice_count,)`` bool: the slices along the slice axis that are scored."""
    selected = np.ones(slice_count, dtype=bool)
    if slices is None:
        return selected
    if slices == CHECKPOINT_SLICES:
        indices = held_out_slices_of(metadata, volume.image)
    else:
        indices = np.asarray(parse_slice_ranges(slices, slice_count, option=f"--slices ({volume.name})"), dtype=int)
    if indices.size and indices.max() >= slice_count:
        raise UserError(f"--slices: {volume.name} has {slice_count} slices (0..{slice_count - 1}); got index {indices.max()}")
    selected[:] = False
    selected[indices] = True
    return selected


# --- the run -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledVolume:
    """A volume to segment and its ground truth on the same grid."""

    name: str  # the case's name in reports
    image: Path  # the image file (``--slices checkpoint`` looks its held-out slices up by file name)
    volume: np.ndarray  # [k, j, i] voxels
    direction: Tuple[float, ...]  # the image's direction matrix, row-major
    spacing: Tuple[float, float, float]  # mm along i, j, k
    truth: np.ndarray  # [k, j, i] channel numbers: 0 background, c the c-th class of the checkpoint
    labelled: Optional[frozenset] = None  # the channels its labels cover (a datalist's labelled_classes); None: every class


@dataclass(frozen=True)
class EvaluationOptions:
    """What ``unetseg evaluate`` lets the user choose; ``execution`` is resolved exactly as predict's."""

    depths: Optional[List[Depth]] = None  # None: every depth of a prunable network, else the whole network
    execution: ExecutionRequest = ExecutionRequest()  # --device, --backend, --precision, --threads
    batch_size: int = DEFAULTS.batch_size
    axis: Optional[int] = None  # image axis to slice along; None: the one closest to superior-inferior
    slices: Optional[str] = None  # None (all), "checkpoint" or range text (grammar/slice_ranges)
    spacing: str = DEFAULTS.spacing  # model or native, as for predict
    crop: bool = DEFAULTS.crop  # the body crop, as for predict

    def __post_init__(self) -> None:
        check_positive(self.batch_size, "--batch-size")


@dataclass
class Evaluation:
    checkpoint: str
    classes: List[str]
    rows: List[dict] = field(default_factory=list)  # one per volume × depth × class
    speed: Dict[str, Dict[str, float]] = field(default_factory=dict)  # depth tag → {"ms_per_slice", "parameters"}
    execution: Dict[str, Any] = field(default_factory=dict)  # what ran: device, backend, precision, threads

    def summary(self) -> Dict[str, dict]:
        """Per depth: mean of each metric over volumes and classes (ignoring ``None``), ms/slice, parameters."""
        out = {}
        for depth in dict.fromkeys(row["depth"] for row in self.rows):
            rows = [r for r in self.rows if r["depth"] == depth]
            means = {}
            for metric in METRICS:
                values = [r[metric] for r in rows if r[metric] is not None]
                means[f"mean_{metric}"] = float(np.mean(values)) if values else None
            out[depth] = {**means, **self.speed.get(depth, {})}
        return out

    def to_json(self) -> dict:
        return {"checkpoint": self.checkpoint, "classes": self.classes, "execution": self.execution, "summary": self.summary(), "rows": self.rows}


class _WarningsTo(Reporter):
    """Hands the warnings and log lines of one ``predict_volume`` (e.g. out of memory, smaller batches)
    to the run's reporter; its per-slice progress is not the run's (the run counts cases)."""

    def __init__(self, run_reporter: Reporter) -> None:
        super().__init__()
        self.run_reporter = run_reporter

    def log(self, message: str) -> None:
        self.run_reporter.log(message)

    def warning(self, message: str) -> None:
        self.run_reporter.warning(message)


def evaluate_cases(
    checkpoint: Checkpoint,
    volumes: Sequence[LabelledVolume],
    options: EvaluationOptions,
    reporter: Optional[Reporter] = None,
    predictor_factory: PredictorFactory = create_predictor,
) -> Evaluation:
    """Segment every volume at every requested depth as predict does, and score it against its truth.

    ``predictor_factory``: as for :func:`~UNetSegmentationLib.inference.predict_file.predict_file`.
    """
    reporter = reporter or Reporter()
    metadata = checkpoint.metadata
    depths = _depths_to_evaluate(metadata, options.depths)
    plan = plan_execution(options.execution)  # device, precision, backend, threads: decided as for predict
    if predictor_factory is create_predictor:  # the engine's own factory announces a first-run ONNX export before it starts
        predictor_factory = partial(create_predictor, log=reporter.log)
    predictors = {depth_tag(d): predictor_factory(checkpoint, plan, d, DEFAULTS.classification_guidance) for d in depths}
    evaluation = Evaluation(str(checkpoint.path), [c.name for c in metadata.classes], execution=_execution(plan, predictors))
    reporter.start("evaluate", len(volumes) * len(depths), "case", arch=metadata.architecture, device=str(plan.device),
                   depths=list(predictors), cases=[v.name for v in volumes], **evaluation.execution)
    # e.g. an ONNX export that fell back to PyTorch; the plan's own notes (a capped --threads) come with every depth: once each
    for note in dict.fromkeys(note for _, notes in predictors.values() for note in notes):
        reporter.warning(note)
    seconds = {tag: [0.0, 0] for tag in predictors}  # depth tag → [seconds, slices predicted]
    done = 0
    for volume in volumes:
        geometry = SliceGeometry.from_direction(volume.direction, options.axis)
        selected = _scored_slices(geometry.slices_view(volume.volume).shape[0], options.slices, metadata, volume)
        scored = np.zeros(volume.volume.shape, dtype=bool)
        geometry.slices_view(scored)[selected] = True
        truth = np.where(scored, volume.truth, 0)
        spacing = tuple(float(s) for s in reversed(volume.spacing))  # [k, j, i] axes
        mapping = fit_normalization(metadata.normalization, volume.volume)
        layout = layout_volume(volume.volume, geometry, volume.spacing, metadata, options.spacing == SPACING_MODEL, options.crop)
        for tag, (predictor, _) in predictors.items():
            if plan.quantizes_per_volume:  # --precision int8: quantised for this volume, as predict does
                predictor, _ = quantized_for_volume(predictor, volume.volume, geometry, metadata, mapping, reporter, layout)
            labels, elapsed = _timed_prediction(predictor, volume.volume, geometry, mapping, options.batch_size, reporter, layout)
            seconds[tag][0] += elapsed
            seconds[tag][1] += selected.size
            predicted = _channels(labels, metadata)
            predicted[~scored] = 0
            evaluation.rows += _class_rows(volume, tag, predicted, truth, spacing, metadata, int(selected.sum()))
            done += 1
            reporter.progress(done, case=volume.name, depth=tag)
    parameters = _parameter_counts(checkpoint, depths)
    for tag, (total_s, count) in seconds.items():
        evaluation.speed[tag] = {"ms_per_slice": 1000.0 * total_s / max(count, 1), "parameters": parameters[tag]}
    return evaluation


def _depths_to_evaluate(metadata: ModelMetadata, requested: Optional[List[Depth]]) -> List[Depth]:
    """The requested depths, checked; None: every depth of a prunable network, else the whole network."""
    from UNetSegmentationLib.networks.registry import get_architecture, prune_depths_of

    if requested is None:
        return list(prune_depths_of(get_architecture(metadata.architecture), metadata.kwargs)) or [None]
    return [resolve_depth(metadata, d) for d in requested]


def _execution(plan: ExecutionPlan, predictors: Dict[str, Tuple[Any, List[str]]]) -> Dict[str, Any]:
    """What computes the labels, as predict's ``start`` event says it (the backend after any fallback)."""
    first = next(iter(predictors.values()))[0]
    backends = dict.fromkeys(getattr(p, "backend", "torch") for p, _ in predictors.values())
    return {
        "backend": ", ".join(backends),
        "precision": "int8" if plan.quantizes_per_volume else getattr(first, "precision", "fp32"),
        "threads": plan.threads,
        "workers": getattr(first, "workers", 1),
    }


def _timed_prediction(predictor, volume: np.ndarray, geometry: SliceGeometry, mapping: IntensityMapping, batch_size: int, reporter: Reporter, layout: VolumeLayout) -> Tuple[np.ndarray, float]:
    """``(labels, seconds)``: predict's :func:`predict_volume` on the whole volume, timed after one untimed warm-up batch."""
    slices = geometry.slices_view(volume)
    warm_up = next(model_batches(slices, batch_size, predictor.metadata.context, mapping, layout.grid, layout.bodies, predictor.required_multiple), None)
    if warm_up is not None:
        predictor(warm_up.inputs)  # first calls set up kernels and thread pools for this shape: not what a slice costs
    start = time.perf_counter()
    result = predict_volume(volume, geometry, predictor, mapping, batch_size, reporter=_WarningsTo(reporter), grid=layout.grid, bodies=layout.bodies)
    return result.labels, time.perf_counter() - start


def _channels(labels: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """Label values → channel numbers (0 background, c the c-th class), uint8."""
    channels = np.zeros(labels.shape, dtype=np.uint8)
    for channel, info in enumerate(metadata.classes, 1):
        channels[labels == info.value] = channel
    return channels


def _class_rows(volume: LabelledVolume, tag: str, predicted: np.ndarray, truth: np.ndarray, spacing, metadata: ModelMetadata, slices: int) -> List[dict]:
    """One row per class the volume's labels cover: its metrics and voxel counts on the scored slices."""
    rows = []
    for channel, info in enumerate(metadata.classes, 1):
        if volume.labelled is not None and channel not in volume.labelled:
            continue  # unknown in this volume: not scored
        rows.append(
            {
                "volume": volume.name,
                "depth": tag,
                "class": info.name,
                **class_metrics(predicted == channel, truth == channel, spacing),
                "truth_voxels": int((truth == channel).sum()),
                "predicted_voxels": int((predicted == channel).sum()),
                "slices": slices,
            }
        )
    return rows


def _parameter_counts(checkpoint: Checkpoint, depths: List[Depth]) -> Dict[str, int]:
    """Depth tag → parameters of the sub-network that runs at that depth (the whole network otherwise)."""
    from UNetSegmentationLib.model.checkpoint import build_model

    model = build_model(checkpoint)
    counts = {}
    for depth in depths:
        if isinstance(depth, int) and hasattr(model, "parameter_count"):
            counts[depth_tag(depth)] = int(model.parameter_count(depth))
        else:
            counts[depth_tag(depth)] = int(sum(p.numel() for p in model.parameters()))
    return counts

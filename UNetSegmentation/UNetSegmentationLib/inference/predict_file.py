"""``unetseg predict``: one volume file in, one label file (and optionally a confidence map) out.

Everything is checked before the first slice runs; outputs appear only when complete (:mod:`..io.outputs`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from UNetSegmentationLib.backends.factory import PredictorFactory, create_predictor
from UNetSegmentationLib.backends.plan import ExecutionPlan, plan_execution
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.normalization import fit_normalization
from UNetSegmentationLib.inference.options import SPACING_MODEL, SPACING_NATIVE, SegmentationOptions
from UNetSegmentationLib.inference.pipeline import predict_volume
from UNetSegmentationLib.inference.postprocess import keep_largest_component
from UNetSegmentationLib.inference.quality import segment_volumes_ml
from UNetSegmentationLib.inference.scan_check import check_scan, scan_flags, scan_warnings
from UNetSegmentationLib.inference.review import check_review_list, review_list_text, review_ranking
from UNetSegmentationLib.inference.layout import VolumeLayout, layout_volume, slice_view_spacing
from UNetSegmentationLib.inference.resolution import plan_model_grid
from UNetSegmentationLib.inference.slice_subset import blank_other_slices, only_slices
from UNetSegmentationLib.inference.slicing import SliceGeometry, body_batch
from UNetSegmentationLib.io.case_outputs import DICOM_SEG_EXTENSION, CaseOutputs, DicomSource, write_case_outputs, writes_dicom_seg
from UNetSegmentationLib.io.dicom_seg import AlgorithmInfo, algorithm_of, check_dicom_seg, check_dicom_segments
from UNetSegmentationLib.io.file_digest import file_sha256
from UNetSegmentationLib.io.input_header import InputHeader
from UNetSegmentationLib.io.memory_budget import available_memory, check_memory, estimate_prediction_memory
from UNetSegmentationLib.io.outputs import check_output_path, claim_outputs, claiming_outputs
from UNetSegmentationLib.io.segmentations import label_dtype
from UNetSegmentationLib.io.volumes import check_finite, check_slice_size, max_slice_pixels, constant_value, inspect_input, read_voxels, verify_data
from UNetSegmentationLib.model.checkpoint import Checkpoint, load_checkpoint
from UNetSegmentationLib.model.depth import Depth, resolve_depth
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.protocol.events import PredictDone
from UNetSegmentationLib.protocol.reporters import Reporter


def _spacing_note(layout: VolumeLayout, metadata: ModelMetadata, options: SegmentationOptions) -> Optional[str]:
    """A warning when the network runs on the input's grid although it learned at a very different spacing."""
    trained = metadata.in_plane_spacing
    if trained is None or layout.grid.model_spacing is not None:
        return None
    in_plane = layout.grid.input_spacing
    if any(not 0.5 <= have / want <= 2.0 for have, want in zip(in_plane, trained)):
        how = "--spacing native was asked for" if options.spacing == SPACING_NATIVE else "the checkpoint records no spacing"
        return (
            f"in-plane spacing {in_plane[0]:.2f}x{in_plane[1]:.2f} mm differs more than 2x from the training spacing "
            f"{trained[0]:.2f}x{trained[1]:.2f} mm and {how}; results may be poor"
        )
    return None


def checked_outputs(input_path, output_path, options: SegmentationOptions, protected: Sequence[Path] = (), inside: Optional[Path] = None) -> List[Path]:
    """The labels output (``output_path`` as typed: a trailing '/' names a folder; a ``.dcm`` name a DICOM
    SEG), and the probability map when asked for: each checked by the output gate before any work (claimed
    later, once the input is known to be safe to open), never the input nor one of ``protected`` (the
    checkpoint), the labels inside ``inside`` when given (a cohort's output folder); the review list too."""
    protected = [Path(input_path), *map(Path, protected)]
    if writes_dicom_seg(output_path):
        labels = check_output_path(output_path, options.overwrite, what="DICOM SEG", extensions=(DICOM_SEG_EXTENSION,), inside=inside, protected=protected)
    else:
        labels = check_output_path(output_path, options.overwrite, inside=inside, protected=protected)
    outputs = [labels]
    if options.probabilities is not None:
        probabilities_path = check_output_path(Path(options.probabilities), options.overwrite, what="probability map", extensions=(".nrrd", ".nii.gz", ".nii", ".mha"), protected=protected)
        if probabilities_path.resolve() == outputs[0].resolve():
            raise UserError("--probabilities must name a different file than the output")
        outputs.append(probabilities_path)
    check_review_list(options.review_list, options.overwrite, [*protected, *outputs])  # --review-list checked before any work too
    return outputs


def prepare_input(input_path, labels_output: Path, series_uid: Optional[str] = None) -> InputHeader:
    """The input inspected from its header (series ``series_uid`` of a DICOM folder, when given) and, for a
    DICOM SEG output, the series checked to be one a SEG can be made of: before any lock, model or voxel."""
    header = inspect_input(input_path, series_uid)
    if writes_dicom_seg(labels_output):
        if not header.dicom_files:
            raise UserError(f"{labels_output}: a DICOM SEG needs a DICOM series as input, and {input_path} is a volume file; write a label map (.nrrd, .seg.nrrd) instead")
        check_dicom_seg(header.dicom_files)
    return header


def _input_warnings(volume: np.ndarray, layout: VolumeLayout, metadata: ModelMetadata, options: SegmentationOptions) -> List[str]:
    """What the user should know about this input before trusting the result (the run goes on)."""
    warnings = []
    spacing = _spacing_note(layout, metadata, options)
    if spacing:
        warnings.append(spacing)
    constant = constant_value(volume)
    if constant is not None:
        warnings.append(f"the input is constant (every voxel is {constant:g}): there is no structure to segment, expect an empty or meaningless result")
    return warnings


@dataclass
class SegmentationModel:
    """The model of a run, made ready once and then used for every volume of the run (``predict`` on
    one file, a cohort on many): the checkpoint, the depth it runs at, the resolved execution plan,
    the predictor, and what could not be done as planned (``notes``, reported as warnings)."""

    checkpoint: Checkpoint
    depth: Depth
    plan: ExecutionPlan
    predictor: Any
    notes: List[str]
    seconds: float

    @property
    def metadata(self) -> ModelMetadata:
        return self.checkpoint.metadata


def open_model(
    checkpoint: Checkpoint,
    options: SegmentationOptions,
    reporter: Reporter,
    predictor_factory: PredictorFactory = create_predictor,
) -> SegmentationModel:
    """Plan the execution (device, precision, backend, threads: decided once) and build the predictor."""
    t0 = time.perf_counter()
    depth = resolve_depth(checkpoint.metadata, options.depth)
    plan = plan_execution(options.execution_request())
    if predictor_factory is create_predictor:  # the engine's own factory announces a first-run ONNX export before it starts
        predictor_factory = partial(create_predictor, log=reporter.log)
    predictor, notes = predictor_factory(checkpoint, plan, depth, options.classification_guidance)  # notes: e.g. an ONNX fallback
    return SegmentationModel(checkpoint, depth, plan, predictor, list(notes), time.perf_counter() - t0)


def predict_file(
    input_path,
    output_path,
    checkpoint_path,
    options: SegmentationOptions,
    reporter: Optional[Reporter] = None,
    plain_torch_metadata: Optional[ModelMetadata] = None,
    predictor_factory: PredictorFactory = create_predictor,
    memory_available: Callable[[], Optional[int]] = available_memory,
    series_uid: Optional[str] = None,
) -> dict:
    """``unetseg predict``: everything is checked before the first slice runs; outputs appear only when complete.
    ``output_path`` may be a label map, a Slicer segmentation or (for a DICOM series) a DICOM SEG.

    ``predictor_factory`` builds the predictor from the checkpoint and the resolved plan (default: the
    engine's :func:`~UNetSegmentationLib.backends.factory.create_predictor`); ``memory_available`` says how
    many bytes the run may allocate (default: what the machine says). Returns the ``done`` summary.
    """
    t_start = time.perf_counter()
    reporter = reporter or Reporter()
    outputs = checked_outputs(input_path, output_path, options, protected=[Path(checkpoint_path)])  # before any work
    header = prepare_input(input_path, outputs[0], series_uid)  # a regular file or a DICOM folder, complete, from its header: before any lock
    with claiming_outputs():  # a lock per output while the run lasts: a second run on the same output is refused
        claim_outputs(outputs)
        header, model = model_for_input(checkpoint_path, header, options, reporter, plain_torch_metadata, predictor_factory, memory_available)
        return segment_volume(header, outputs, model, options, reporter, t_start)


def model_for_input(
    checkpoint_path,
    header: InputHeader,
    options: SegmentationOptions,
    reporter: Reporter,
    plain_torch_metadata: Optional[ModelMetadata] = None,
    predictor_factory: PredictorFactory = create_predictor,
    memory_available: Callable[[], Optional[int]] = available_memory,
) -> Tuple[InputHeader, SegmentationModel]:
    """``(checked input, opened model)`` for one inspected input, in predict's order: the checkpoint's
    metadata, the depth, the memory and data checks (before PyTorch or the model loads), then the model."""
    # weights read when a network is built: a cached ONNX export of this very file needs only the metadata
    checkpoint: Checkpoint = load_checkpoint(checkpoint_path, plain_torch_metadata, weights=False)
    resolve_depth(checkpoint.metadata, options.depth)  # a --depth this network cannot run at: before any voxel is decoded
    header = checked_input(header, checkpoint.metadata, options, memory_available)
    return header, open_model(checkpoint, options, reporter, predictor_factory)


def checked_input(header: InputHeader, metadata: ModelMetadata, options: SegmentationOptions, memory_available: Callable[[], Optional[int]] = available_memory) -> InputHeader:
    """The input's header once the run is known to fit in memory (from the header: before any voxel is
    allocated) and its compressed voxel data decoded and counted (a cut or corrupt stream is refused)."""
    _check_memory(header, metadata, options, memory_available())
    return verify_data(header)


def segment_volume(
    header: InputHeader,
    outputs: List[Path],
    model: SegmentationModel,
    options: SegmentationOptions,
    reporter: Reporter,
    t_start: Optional[float] = None,
    observers: Sequence = (),
    algorithm: Optional[AlgorithmInfo] = None,
    measure: bool = False,
    slices: Optional[Sequence[int]] = None,
) -> dict:
    """The one case runner of ``predict`` and of a cohort's cases: segment one checked input
    (:func:`checked_input`) with an opened model and write ``outputs`` (checked by :func:`checked_outputs`
    and claimed by the caller; ``outputs[0]`` a label map, ``.seg.nrrd`` or DICOM SEG, then the probability
    map) and the review list, all renamed into place together; only then is ``done`` reported. Returns the
    ``done`` summary, with ``volumes_ml`` (each class's volume, from the labels in memory) when ``measure``.
    ``observers`` (:class:`~.pipeline.SliceObserver`) see every batch's labels and confidence;
    ``algorithm`` names the model in a DICOM SEG (default: from the checkpoint); ``slices``: only these
    slices along the slice axis are segmented, the others left background (:mod:`.slice_subset`)."""
    t_start = time.perf_counter() - model.seconds if t_start is None else t_start
    metadata, plan, depth, predictor = model.metadata, model.plan, model.depth, model.predictor
    dicom = _dicom_source(header, outputs[0], model, algorithm)  # a SEG's segments checked before the volume is read
    t_model = time.perf_counter()

    voxels = read_voxels(header.path, header)
    volume, t_read = voxels.volume, time.perf_counter()

    geometry = SliceGeometry.from_direction(voxels.direction, options.axis)
    slice_count = geometry.slices_view(volume).shape[0]
    quantize_int8 = plan.quantizes_per_volume  # --precision int8: the export is quantised for this volume, below
    layout = layout_volume(volume, geometry, voxels.spacing, metadata, options.spacing == SPACING_MODEL, options.crop)
    voxels.wait()  # a compressed input's checksum where ITK read it, computed beside the body's search: a corrupt file is refused here
    check_finite(volume, source=str(header.path))
    mapping = fit_normalization(metadata.normalization, volume)
    layout = only_slices(layout, slices, plan.batch_size, slice_count)  # the warm engine's segment_slices (None: all)
    _report_start(reporter, plan, predictor, metadata, depth, geometry, slice_count, layout)
    findings = check_scan(header, volume, metadata)  # the scan against what the model was made for: modality, values, header fields
    for warning in [*model.notes, *header.warnings, *scan_warnings(findings), *_input_warnings(volume, layout, metadata, options)]:
        reporter.warning(warning)
    quantize_s = 0.0
    if quantize_int8:  # after the start event: the progress bar is up while calibration runs (seconds to a minute)
        predictor, quantize_s = quantized_for_volume(predictor, volume, geometry, metadata, mapping, reporter, layout)
    t_prepared = time.perf_counter()

    review = review_ranking(options, geometry)  # the slices ranked by uncertainty (inference/review.py)
    result = predict_volume(volume, geometry, predictor, mapping, plan.batch_size, options.probabilities is not None, reporter, observers=[review, *observers], grid=layout.grid, bodies=layout.bodies)
    blank_other_slices(geometry.slices_view(result.labels), None if result.confidence is None else geometry.slices_view(result.confidence), slices)
    if options.largest_component:
        t_clean = time.perf_counter()
        result.labels = keep_largest_component(result.labels, [c.value for c in metadata.classes])
        result.timings["postprocess_s"] += time.perf_counter() - t_clean
    if not result.labels.any():
        reporter.warning("no voxel was labelled: the model found none of its classes in this volume")
    t_predicted = time.perf_counter()

    reference = voxels.reference  # the input's grid without its voxels: they go before the outputs are written
    del voxels, volume, mapping  # (the writers copy the labels into an image: the input's memory is free for it)
    case_outputs = CaseOutputs(outputs[0], outputs[1] if len(outputs) > 1 else None, Path(options.review_list) if options.review_list is not None else None)
    review_text = review_list_text(review.ranked(), case_outputs.review_list.suffix.lower()) if case_outputs.review_list is not None else None
    write_case_outputs(case_outputs, result.labels, reference, metadata.classes, confidence=result.confidence, review_text=review_text, dicom=dicom, overwrite=options.overwrite, compress=options.compress)
    t_written = time.perf_counter()

    timings = {
        "load_model_s": min(model.seconds, t_model - t_start), "check_s": max(0.0, t_model - t_start - model.seconds),  # the model; the checks before it
        "read_s": t_read - t_model,
        "prepare_s": t_prepared - t_read - quantize_s - layout.body_s,
        "body_s": layout.body_s,
        **({"quantize_s": quantize_s} if quantize_s else {}),
        **result.timings,
        "write_s": t_written - t_predicted,
        "total_s": t_written - t_start,
    }
    summary = _summary(outputs, depth, predictor, timings)
    summary["scan_flags"] = scan_flags(findings)  # what the scan check found ([]: nothing); the manifest and the QC report carry it
    summary.update(review.finish(None))  # the most uncertain slices in the done event (all of them in --review-list, written above)
    if measure:
        summary["volumes_ml"] = segment_volumes_ml(result.labels, reference.GetSpacing(), metadata.classes)
    reporter.done(**summary)  # after every output is in place
    return summary


def _dicom_source(header: InputHeader, labels_output: Path, model: SegmentationModel, algorithm: Optional[AlgorithmInfo]) -> Optional[DicomSource]:
    """For a DICOM SEG output: the series' files and the algorithm, once the SEG is known to be possible
    with this model's segments (:func:`~UNetSegmentationLib.io.dicom_seg.check_dicom_segments`; the series by :func:`prepare_input`); else None."""
    if not writes_dicom_seg(labels_output):
        return None
    if not header.dicom_files:
        raise UserError(f"{labels_output}: a DICOM SEG needs a DICOM series as input; write a label map (.nrrd, .seg.nrrd) instead")
    check_dicom_segments(model.metadata.classes)  # the series' files were checked by prepare_input, before the model: not read again
    if algorithm is None:
        path = model.checkpoint.path
        algorithm = algorithm_of(path, file_sha256(path), model.metadata.architecture)
    return DicomSource(list(header.dicom_files), algorithm)


def _check_memory(header: InputHeader, metadata: ModelMetadata, options: SegmentationOptions, available: Optional[int]) -> None:
    """Refuse, from the input's header, slices too large for one network call and a run too large for the memory left."""
    geometry = SliceGeometry.from_direction(header.direction, options.axis)
    rows, columns = header.size[geometry.row_axis], header.size[geometry.column_axis]
    slices = header.size[geometry.slice_axis]  # a batch holds no more slices than the volume has, whatever --batch-size says
    check_slice_size((rows, columns), source=str(header.path))
    grid = plan_model_grid(slice_view_spacing(header.spacing, geometry), metadata, options.spacing == SPACING_MODEL)
    model_rows, model_columns = grid.model_size((rows, columns))
    if model_rows * model_columns > max_slice_pixels():
        raise UserError(
            f"{header.path}: at the model's spacing of {grid.model_spacing[0]:g}x{grid.model_spacing[1]:g} mm its slices of "
            f"{rows}x{columns} pixels ({grid.input_spacing[0]:g}x{grid.input_spacing[1]:g} mm) become {model_rows}x{model_columns} pixels, "
            "more than one network call can hold in memory; crop the volume first, or run on its own grid with --spacing native"
        )
    estimate = estimate_prediction_memory(
        voxels=header.voxels,
        input_bytes_per_voxel=header.bytes_per_voxel,
        reader_copies=header.reader_copies,
        label_bytes_per_voxel=label_dtype(max(c.value for c in metadata.classes)).itemsize,
        # float32 2.5D inputs gathered on the input's grid, and the probabilities resampled back onto it
        batch_bytes=min(options.batch_size, slices) * ((2 * metadata.context + 1 + metadata.out_channels) * rows * columns + (2 * metadata.context + 1) * model_rows * model_columns) * 4,
        volume_statistics=metadata.normalization.kind != "ct",  # MR: percentiles of the whole volume copy it once
        confidence=options.probabilities is not None,
        largest_component=options.largest_component,
    )
    check_memory(estimate, available, str(header.path))


def _report_start(reporter: Reporter, plan: ExecutionPlan, predictor, metadata: ModelMetadata, depth: Depth, geometry: SliceGeometry, slice_count: int, layout: VolumeLayout) -> None:
    """The ``start`` event: what runs, where, on what (see :mod:`~UNetSegmentationLib.protocol.events`)."""
    reporter.start(
        "predict",
        slice_count,
        "slice",
        device=str(plan.device),
        arch=metadata.architecture,
        depth=depth,
        classes=[c.name for c in metadata.classes],
        geometry=geometry.describe(),
        backend=getattr(predictor, "backend", "torch"),
        precision="int8" if plan.quantizes_per_volume else getattr(predictor, "precision", "fp32"),
        threads=getattr(predictor, "threads", None) or _torch_threads(),
        workers=getattr(predictor, "workers", 1),
        **layout.describe(),
    )


def _summary(outputs: List[Path], depth: Depth, predictor, timings: Dict[str, float]) -> PredictDone:
    """The ``done`` event's fields: outputs, depth, the precision that computed the labels, timings in seconds."""
    return {
        "output": str(outputs[0]),
        "probabilities": str(outputs[1]) if len(outputs) > 1 else None,
        "depth": depth,
        "precision": getattr(predictor, "precision", "fp32"),  # what computed the labels (int8 may have fallen back to fp32)
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }


def quantized_for_volume(predictor, volume: np.ndarray, geometry: SliceGeometry, metadata: ModelMetadata, mapping, reporter: Reporter, layout: VolumeLayout) -> Tuple[Any, float]:
    """``--precision int8``: ``(predictor quantised for this [k, j, i] volume, seconds it took)``.

    Calibrated on some of the volume's slices, as the run will see them (``layout``: on the model's grid,
    cut to the body), and checked against float32 on others; when the int8
    model disagrees, the float32 predictor comes back and ``reporter`` gets a warning saying so.
    """
    from UNetSegmentationLib.backends.int8 import quantize_for_volume  # ONNX Runtime's quantisation: only int8 runs need it

    slices = geometry.slices_view(volume)

    def batch_of(indices: np.ndarray) -> np.ndarray:  # as the run cuts and aligns its batches
        return body_batch(slices, indices, metadata.context, mapping, layout.grid, layout.bodies, predictor.required_multiple).inputs

    quantized = quantize_for_volume(predictor, len(slices), batch_of)
    if quantized.warning:  # the int8 model disagreed with float32: the run goes on in float32
        reporter.warning(quantized.warning)
    return quantized.predictor, quantized.seconds


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()

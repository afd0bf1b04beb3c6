"""Volume in, label map out: 2.5D slice-wise inference, streamed batch by batch.

read → slices (a view: slice axis first, canonical in-plane orientation) → batches of 2.5D inputs
(normalised, padded) → network → probabilities → labels (written into the output array through the
same view) → write (temporary file, then rename). Memory is bounded by the batch plus the uint8/uint16
label volume (and the float32 confidence map when asked for); the input is never copied as a whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:  # only for annotations: torch is imported where it is used
    import torch

from UNetSegmentationLib.backends.plan import CPU, create_predictor, cuda_is_impossible, prefetch
from UNetSegmentationLib.model.checkpoint import Checkpoint, load_checkpoint
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.metadata import ModelMetadata
from UNetSegmentationLib.networks.registry import get_architecture, prune_depths_of
from UNetSegmentationLib.inference.normalization import IntensityMapping, fit_normalization
from UNetSegmentationLib.backends.memory import MemoryGuard
from UNetSegmentationLib.io.outputs import atomic_output, check_output_path, claims_outputs
from UNetSegmentationLib.inference.postprocess import keep_largest_component
from UNetSegmentationLib.protocol.reporters import Reporter
from UNetSegmentationLib.inference.slicing import SliceGeometry, input_batches, padding_for
from UNetSegmentationLib.io.volumes import check_finite, check_slice_size, constant_value, label_dtype, read_volume, write_labels, write_scalar

ACCURATE = "accurate"
Depth = Union[int, str, None]


@dataclass
class PredictionOptions:
    """What ``unetseg predict`` and the Slicer module let the user choose."""

    depth: Depth = None  # None: the checkpoint's recommended depth (else the full network); "accurate": mean of heads
    device: str = "auto"
    batch_size: int = 4
    axis: Optional[int] = None  # image axis to slice along; None: the one closest to superior-inferior
    probabilities: Optional[Path] = None
    overwrite: bool = False
    largest_component: bool = False  # keep each label's largest 3D connected component
    classification_guidance: bool = True  # UNet 3+: empty result for slices its classifier judges empty
    backend: str = "auto"  # auto (ONNX Runtime on the CPU when installed, else PyTorch), torch, onnx (acceleration.py)
    precision: str = "auto"  # auto (bf16/fp16 autocast on CUDA and on CPUs with native bf16, else fp32), fp32, bf16
    threads: Optional[int] = None  # CPU threads in all; None: one per core
    slice_workers: Optional[int] = None  # CPU: slices computed at once, threads // workers each; None: 2 (acceleration.py)

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UserError(f"--batch-size must be a positive integer, got {self.batch_size!r}")
        from UNetSegmentationLib.backends.plan import BACKENDS, PRECISIONS, check_positive, parse_choice

        self.backend = parse_choice(self.backend, BACKENDS, "--backend")
        self.precision = parse_choice(self.precision, PRECISIONS, "--precision")
        for value, option in ((self.threads, "--threads"), (self.slice_workers, "--slice-workers")):
            if value is not None:
                check_positive(value, option)


def resolve_device(spec: str, plain_cpu: bool = False):
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``; an
    unavailable GPU is an error. ``plain_cpu``: where the answer is the CPU and PyTorch would have to
    be imported only to say so, give :data:`~UNetSegmentationLib.backends.plan.CPU` instead (``predict``
    with a cached ONNX export then never imports PyTorch)."""
    spec = (spec or "auto").lower()
    if plain_cpu and (spec == "cpu" or (spec == "auto" and cuda_is_impossible())):
        return CPU
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: no CUDA GPU is available to this PyTorch build; use --device cpu or auto")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are present")
        return device
    raise UserError(f"--device must be auto, cpu, cuda or cuda:N; got {spec!r}")


def parse_depth(text: Optional[str]) -> Depth:
    if text is None or text == ACCURATE:
        return text
    if str(text).upper().startswith("L"):
        text = str(text)[1:]
    if not str(text).isdigit():
        raise UserError(f"--depth must be 1..4 (or L1..L4) or 'accurate'; got {text!r}")
    return int(text)


def resolve_depth(metadata: ModelMetadata, requested: Depth) -> Depth:
    """The depth to run: validated against what this network supports."""
    architecture = get_architecture(metadata.architecture)
    depths = prune_depths_of(architecture, metadata.kwargs)
    if not depths:
        if requested is not None:
            raise UserError(f"architecture {metadata.architecture!r} cannot be pruned: --depth applies only to prunable networks such as UNet++")
        return None
    if requested is None:
        recommended = metadata.recommended_depth
        return recommended if recommended in depths else max(depths)
    if requested != ACCURATE and requested not in depths:
        raise UserError(f"--depth {requested}: this {architecture.title} can run at depth {', '.join(map(str, depths))} or 'accurate'")
    return requested


class SlicePredictor:
    """Runs the network on batches of 2.5D inputs and returns class probabilities on the CPU.

    ``__call__(batch)`` takes ``(B, 2c+1, H, W)`` float32 (already normalised and padded) and returns
    ``(B, K, H, W)`` float32: K = 1 (sigmoid foreground probability) for one class, else softmax over
    background + classes.

    ``precision``: None (as always: CUDA bf16 autocast, fp16 where bf16 is unsupported; CPU
    float32), ``auto`` (also bf16 on CPUs with native bf16), ``fp32`` or ``bf16`` (see
    :func:`~UNetSegmentationLib.backends.plan.resolve_precision`).
    ``optimize``: fold BatchNorm into the convolutions (in place: ``model`` is changed) and use
    channels_last on the CPU where it pays (batch-normalised networks); off by default, on in
    ``predict`` (:func:`~UNetSegmentationLib.backends.plan.create_predictor`).
    """

    backend = "torch"
    decides_labels = False

    def __init__(
        self,
        model: "torch.nn.Module",
        metadata: ModelMetadata,
        device: "torch.device",
        depth: Depth,
        classification_guidance: bool = True,
        precision: Optional[str] = None,
        optimize: bool = False,
    ) -> None:
        import torch

        from UNetSegmentationLib.backends.plan import resolve_precision
        from UNetSegmentationLib.backends.torch_network import fold_batchnorm, prefers_channels_last

        self.metadata = metadata
        self.device = device
        self.depth = depth
        self.cuda = device.type == "cuda"
        self.precision = resolve_precision(precision, device)
        if self.precision == "int8":
            raise UserError("--precision int8 runs on ONNX Runtime, not on the PyTorch backend")
        self.model = model.to(device).eval()
        if hasattr(self.model, "classification_guidance"):
            self.model.classification_guidance = classification_guidance
        if optimize:
            fold_batchnorm(self.model)
        self.channels_last = self.cuda or (optimize and prefers_channels_last(self.model))
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.cuda:
            torch.backends.cudnn.benchmark = True

    @property
    def required_multiple(self) -> int:
        depth = self.depth if isinstance(self.depth, int) else None
        return self.model.required_multiple(depth)

    def _to_probabilities(self, logits: "torch.Tensor") -> "torch.Tensor":
        import torch

        logits = logits.float()
        return torch.softmax(logits, dim=1) if self.metadata.uses_softmax else torch.sigmoid(logits)

    def __call__(self, batch: np.ndarray) -> "torch.Tensor":
        import torch

        with torch.inference_mode():
            return self._predict(torch.from_numpy(batch))

    def _predict(self, inputs: "torch.Tensor") -> "torch.Tensor":
        import torch

        from UNetSegmentationLib.backends.torch_network import autocast

        if self.cuda:
            inputs = inputs.pin_memory().to(self.device, non_blocking=True)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            if self.depth == ACCURATE:
                heads = self.model.forward_heads(inputs)
                probabilities = torch.stack([self._to_probabilities(h) for h in heads]).mean(0)
            elif isinstance(self.depth, int):
                probabilities = self._to_probabilities(self.model.forward_depth(inputs, self.depth))
            else:
                probabilities = self._to_probabilities(self.model(inputs))
        return probabilities.cpu()


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
) -> PredictionResult:
    """Segment a [k, j, i] volume slice by slice; returns labels on the same grid."""
    metadata = predictor.metadata
    reporter = reporter or Reporter()
    slices = geometry.slices_view(volume)
    slice_count, rows, columns = slices.shape
    label_values = np.array([0] + [c.value for c in metadata.classes], dtype=label_dtype(max(c.value for c in metadata.classes)))
    if not metadata.uses_softmax:
        label_values = label_values[:2]
    labels = np.zeros(volume.shape, dtype=label_values.dtype)
    label_slices = geometry.slices_view(labels)
    confidence = np.zeros(volume.shape, dtype=np.float32) if want_confidence else None
    confidence_slices = geometry.slices_view(confidence) if want_confidence else None
    pad_rows, pad_columns = padding_for((rows, columns), predictor.required_multiple)
    timings = {"preprocess_s": 0.0, "network_s": 0.0, "postprocess_s": 0.0}
    guarded = MemoryGuard(predictor, reporter)  # out of memory: smaller batches, then the CPU (memory.py)
    # the next batch is gathered, normalised and padded on a thread while the network runs (acceleration.py)
    batches = prefetch(input_batches(slices, batch_size, metadata.context, mapping, (pad_rows, pad_columns)))

    for start in range(0, slice_count, batch_size):
        t0 = time.perf_counter()
        indices, batch = next(batches)  # padding: zero in normalised units, at the far edges; cropped off below
        t1 = time.perf_counter()
        output = guarded(batch)[:, :, :rows, :columns]  # probabilities, or the decision of a predictor that makes it
        t2 = time.perf_counter()
        decide = labels_from_decision if getattr(guarded.predictor, "decides_labels", False) else labels_from_probabilities
        batch_labels, batch_confidence = decide(output, label_values)
        label_slices[indices] = batch_labels
        if confidence_slices is not None:
            confidence_slices[indices] = batch_confidence
        t3 = time.perf_counter()
        timings["preprocess_s"] += t1 - t0
        timings["network_s"] += t2 - t1
        timings["postprocess_s"] += t3 - t2
        reporter.progress(int(indices[-1]) + 1)
    return PredictionResult(labels, confidence, timings)


def _spacing_warning(image, geometry: SliceGeometry, metadata: ModelMetadata) -> Optional[str]:
    if not metadata.training_spacing:
        return None
    spacing = image.GetSpacing()
    in_plane = (spacing[geometry.row_axis], spacing[geometry.column_axis])
    trained = metadata.training_spacing[-2:]
    ratios = [a / b for a, b in zip(in_plane, trained)]
    if any(r < 0.5 or r > 2.0 for r in ratios):
        return (
            f"in-plane spacing {in_plane[0]:.2f}x{in_plane[1]:.2f} mm differs more than 2x from the training spacing "
            f"{trained[0]:.2f}x{trained[1]:.2f} mm; results may be poor"
        )
    return None


@claims_outputs  # a lock file per output while the run lasts: a second run on the same output is refused
def predict_file(
    input_path,
    output_path,
    checkpoint_path,
    options: PredictionOptions,
    reporter: Optional[Reporter] = None,
    plain_torch_metadata: Optional[ModelMetadata] = None,
) -> dict:
    """``unetseg predict``: everything is checked before the first slice runs; outputs appear only when complete."""
    reporter = reporter or Reporter()
    t_start = time.perf_counter()
    output_path = Path(output_path)
    outputs = [check_output_path(output_path, options.overwrite)]
    if options.probabilities is not None:
        probabilities_path = check_output_path(Path(options.probabilities), options.overwrite, what="probability map", extensions=(".nrrd", ".nii.gz", ".nii", ".mha"))
        if probabilities_path.resolve() == output_path.resolve():
            raise UserError("--probabilities must name a different file than the output")
        outputs.append(probabilities_path)
    if Path(input_path).exists() and any(Path(input_path).resolve() == o.resolve() for o in outputs):
        raise UserError("the output would overwrite the input; choose another output name")

    # weights read when a network is built: a cached ONNX export of this very file needs only the metadata
    checkpoint: Checkpoint = load_checkpoint(checkpoint_path, plain_torch_metadata, weights=False)
    metadata = checkpoint.metadata
    depth = resolve_depth(metadata, options.depth)
    device = resolve_device(options.device, plain_cpu=True)
    notes: list = []  # e.g. an ONNX fallback: reported after the start event
    predictor = create_predictor(checkpoint, device, depth, options, notes)  # backend, precision, threads (acceleration.py)
    t_model = time.perf_counter()

    image = read_volume(input_path)
    volume = _array_view(image)
    check_finite(volume, source=str(input_path))
    t_read = time.perf_counter()

    geometry = SliceGeometry.from_direction(image.GetDirection(), options.axis)
    check_slice_size(geometry.slices_view(volume).shape[1:], source=str(input_path))
    mapping = fit_normalization(metadata.normalization, volume)
    slice_count = geometry.slices_view(volume).shape[0]
    quantize_int8 = getattr(predictor, "calibrate_int8", False)  # --precision int8: quantised for this volume, below
    reporter.start(
        slices=slice_count,
        device=str(device),
        arch=metadata.architecture,
        depth=depth,
        classes=[c.name for c in metadata.classes],
        geometry=geometry.describe(),
        backend=getattr(predictor, "backend", "torch"),
        precision="int8" if quantize_int8 else getattr(predictor, "precision", "fp32"),
        threads=getattr(predictor, "threads", None) or _torch_threads(),
        workers=getattr(predictor, "workers", 1),
    )
    for note in notes:
        reporter.warning(note)
    warning = _spacing_warning(image, geometry, metadata)
    if warning:
        reporter.warning(warning)
    constant = constant_value(volume)
    if constant is not None:
        reporter.warning(f"the input is constant (every voxel is {constant:g}): there is no structure to segment, expect an empty or meaningless result")
    quantize_s = 0.0
    if quantize_int8:  # after the start event: the progress bar is up while calibration runs (seconds to a minute)
        from UNetSegmentationLib.backends.int8 import quantize_for_volume

        quantized = quantize_for_volume(predictor, volume, geometry, metadata.context, mapping)
        predictor, quantize_s = quantized.predictor, quantized.seconds
        if quantized.warning:  # the int8 model disagreed with float32: the run goes on in float32
            reporter.warning(quantized.warning)
    t_prepared = time.perf_counter()

    result = predict_volume(volume, geometry, predictor, mapping, options.batch_size, options.probabilities is not None, reporter)
    if options.largest_component:
        t_clean = time.perf_counter()
        result.labels = keep_largest_component(result.labels, [c.value for c in metadata.classes])
        result.timings["postprocess_s"] += time.perf_counter() - t_clean
    if not result.labels.any():
        reporter.warning("no voxel was labelled: the model found none of its classes in this volume")
    t_predicted = time.perf_counter()

    with atomic_output(outputs, overwrite=options.overwrite) as temporaries:
        write_labels(result.labels, image, temporaries[0], metadata.classes, final_name=outputs[0])
        if result.confidence is not None:
            write_scalar(result.confidence, image, temporaries[1], final_name=outputs[1])
    t_written = time.perf_counter()

    timings = {
        "load_model_s": t_model - t_start,
        "read_s": t_read - t_model,
        "prepare_s": t_prepared - t_read - quantize_s,
        **({"quantize_s": quantize_s} if quantize_s else {}),
        **result.timings,
        "write_s": t_written - t_predicted,
        "total_s": t_written - t_start,
    }
    summary = {
        "output": str(outputs[0]),
        "probabilities": str(outputs[1]) if len(outputs) > 1 else None,
        "depth": depth,
        "precision": getattr(predictor, "precision", "fp32"),  # what computed the labels (int8 may have fallen back to fp32)
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    reporter.done(**summary)
    return summary


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _array_view(image) -> np.ndarray:
    """The voxels as a read-only [k, j, i] numpy view (no copy)."""
    import SimpleITK as sitk

    return sitk.GetArrayViewFromImage(image)

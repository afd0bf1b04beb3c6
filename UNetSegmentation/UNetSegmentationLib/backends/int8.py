"""int8 inference on the CPU (``--precision int8``): the ONNX export quantised for the volume at hand.

Decides which nodes stay float32 and whether the quantised model may compute the labels (its
decisions checked against float32's); whether int8 runs at all is the plan's decision
(``ExecutionPlan.quantizes_per_volume``).

Static int8 quantisation (ONNX Runtime's ``quantize_static``: QDQ format, per-channel symmetric int8
weights, asymmetric uint8 activations with min/max ranges) needs activation ranges measured on real
inputs. A checkpoint carries no data, so the ranges are measured on the volume being segmented:

1. :func:`sample_slices`: ``CALIBRATION_SLICES`` slices spread evenly over the volume calibrate, as
   many others between them check (the same ones when the volume is too thin to have others);
2. :func:`quantize_export`: the cached float32 export is quantised in memory, the calibration slices
   seen one tile of at most 256² pixels at a time (:func:`calibration_tiles`: bounded memory, 1.2 GB
   peak for UNet++ L4 at 512² instead of 4.2 GB for whole slices), and nothing cached (the
   result depends on the volume, and the same volume always gives the same model). What is *not*
   quantised (:func:`float_nodes`): the convolutions that read the input (cheap: 2c+1 channels; the
   CT's fine intensity steps survive) and everything from the last activation to the output (the
   logits, their upsampling and the softmax/sigmoid: a quantised logit or probability
   would change labels);
3. :func:`compare_decisions`: on the check slices the int8 labels must agree with float32's on
   :data:`INT8_LABEL_AGREEMENT` of the pixels and on :data:`INT8_FOREGROUND_AGREEMENT` of the pixels
   either calls foreground; otherwise the run continues in float32 with a warning naming both.

Measured (BENCHMARKS.md): 1.5–1.6× faster than float32 for UNet++ L4 with the paper's features
(32..512) at 256² and 512², no faster (0.9–1.05×) for the small bundled model (8..128), where quantising and dequantising
between thin layers costs more than the int8 products save; on the bundled model and the slicerio
chest CT the mean Dice changes by less than 0.001 and 99.9 % of the labels agree with float32.
Needs ``onnxruntime`` and ``onnx`` (the ``[onnx]`` extra); imports no PyTorch.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence, Set, Tuple

import numpy as np

CALIBRATION_SLICES = 8
#: calibration sees the slices in tiles of at most this many pixels a side (bounded memory)
CALIBRATION_TILE = 256
#: int8 labels must agree with float32's on this fraction of the check slices' pixels ...
INT8_LABEL_AGREEMENT = 0.99
#: ... and on this fraction of the pixels that either of them calls foreground
INT8_FOREGROUND_AGREEMENT = 0.95
#: operators computed in int8 (the rest of the graph stays float32)
QUANTIZED_OPERATORS = ("Conv", "ConvTranspose", "MaxPool", "Concat", "Relu")
#: where the walk back from softmax/sigmoid stops: the logits are computed from these outputs
_FEATURE_BOUNDARIES = {"Relu", "LeakyRelu", "PRelu", "Elu", "Gelu", "Sigmoid", "MaxPool", "Concat"}
_PROBABILITY_OPERATORS = {"Softmax", "Sigmoid"}
_LAYERS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def sample_slices(slice_count: int, count: int = CALIBRATION_SLICES) -> Tuple[np.ndarray, np.ndarray]:
    """``(calibration, check)`` slice indices: ``count`` of each spread evenly over the volume,
    the check slices between the calibration ones (the same slices when there are not enough)."""
    if slice_count <= 0:
        raise ValueError("no slices")
    positions = np.linspace(0, slice_count - 1, num=min(2 * count, slice_count)).round().astype(int)
    positions = np.unique(positions)
    if len(positions) < 2:
        return positions, positions
    return positions[0::2], positions[1::2]


def calibration_tiles(batch: np.ndarray, multiple: int, side: int = CALIBRATION_TILE) -> List[np.ndarray]:
    """A ``(1, C, H, W)`` batch cut into tiles of at most ``side``² pixels (``side`` rounded down to
    ``multiple``) that cover it, overlapping at the far edges. Calibration runs one tile at a time:
    ONNX Runtime's calibration session keeps every intermediate tensor of a call, ~2 GB for UNet++ L4
    on one 512² slice and twice that once its memory arena has grown, against ~0.6 GB per 256² tile."""
    side = max(multiple, side // multiple * multiple)
    rows, columns = batch.shape[-2:]
    starts = [list(range(0, max(size - side, 0) + 1, side)) for size in (rows, columns)]
    for index, size in enumerate((rows, columns)):
        if size > side and starts[index][-1] + side < size:
            starts[index].append(size - side)
    return [np.ascontiguousarray(batch[..., r:r + side, c:c + side]) for r in starts[0] for c in starts[1]]


def float_nodes(model) -> List[str]:
    """Names of the nodes of an ONNX ``model`` kept in float32 (see the module's docstring)."""
    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    kept: Set[str] = set()
    graph_inputs = {value.name for value in graph.input}
    for node in graph.node:  # the convolutions that read the slices themselves
        if node.op_type in ("Conv", "ConvTranspose") and graph_inputs & set(node.input):
            kept.add(node.name)
    # everything downstream of a softmax/sigmoid over the classes: the probabilities
    probabilities = [node for node in graph.node if node.op_type in _PROBABILITY_OPERATORS and _feeds_output(node, consumers, graph)]
    pending = list(probabilities)
    while pending:
        node = pending.pop()
        if node.name in kept:
            continue
        kept.add(node.name)
        for output in node.output:
            pending.extend(consumers.get(output, []))
    # and upstream of them, back to the last feature activation: the logits and their upsampling
    pending = [producer[name] for node in probabilities for name in node.input if name in producer]
    while pending:
        node = pending.pop()
        if node.name in kept or node.op_type in _FEATURE_BOUNDARIES:
            continue
        kept.add(node.name)
        pending.extend(producer[name] for name in node.input if name in producer)
    return sorted(kept)


def _feeds_output(node, consumers, graph) -> bool:
    """Whether ``node``'s result reaches a graph output with no further layer on the way: the
    class probabilities do (and UNet 3+'s classifier, which gates them); a sigmoid inside the
    network (an attention gate) feeds more convolutions first."""
    outputs = {value.name for value in graph.output}
    seen, pending = set(), list(node.output)
    while pending:
        name = pending.pop()
        if name in outputs:
            return True
        for consumer in consumers.get(name, []):
            if consumer.name not in seen and consumer.op_type not in _LAYERS:
                seen.add(consumer.name)
                pending.extend(consumer.output)
    return False


class _Batches:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a list of input batches, with the
    ``__len__``/``set_range`` that its strided calibration (``CalibStridedMinMax``) uses to hand
    over one batch at a time."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self._all = [{input_name: np.ascontiguousarray(batch, dtype=np.float32)} for batch in batches]
        self._feeds = iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._feeds = iter(self._all[start_index:end_index])

    def get_next(self):
        return next(self._feeds, None)


def quantize_export(path: Path, input_name: str, calibration: Sequence[np.ndarray]) -> bytes:
    """The float32 ONNX model at ``path`` statically quantised to int8, calibrated on ``calibration``
    (a list of ``(1, C, H, W)`` float32 batches), as serialised model bytes."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    excluded = float_nodes(onnx.load(str(path), load_external_data=False))
    reader = type("CalibrationBatches", (_Batches, CalibrationDataReader), {})(input_name, calibration)
    with tempfile.TemporaryDirectory(prefix="unetseg-int8-") as folder, _root_logger_quiet():
        target = Path(folder) / "int8.onnx"
        quantize_static(
            str(path),
            str(target),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPERATORS),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            # one calibration slice at a time: ranges are merged after each, so only one slice's
            # intermediate tensors are held (all 8 at once: 4.2 GB for UNet++ L4 at 512²)
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "CalibStridedMinMax": 1},
        )
        return target.read_bytes()


@contextlib.contextmanager
def _root_logger_quiet():
    """ONNX Runtime's quantiser advises on the root logger (its "pre-processing" hint, meant for
    models without our BatchNorm folding); a handler is put there first so that logging does not
    configure itself to print to stderr, and the level keeps the advice out of the progress output."""
    root = logging.getLogger()
    handler, level = logging.NullHandler(), root.level
    root.addHandler(handler)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@dataclass
class DecisionAgreement:
    """How far int8 labels agree with float32's on the check slices."""

    labels: float  # fraction of all pixels with the same label
    foreground: float  # fraction of the pixels either calls foreground that have the same label

    @property
    def acceptable(self) -> bool:
        return self.labels >= INT8_LABEL_AGREEMENT and self.foreground >= INT8_FOREGROUND_AGREEMENT

    def describe(self) -> str:
        return f"labels agree with float32 on {self.labels:.2%} of the check slices' pixels, {self.foreground:.2%} of their foreground"


def chosen_channels(probabilities: np.ndarray) -> np.ndarray:
    """``(B, H, W)`` chosen channel (0 = background) of ``(B, K, H, W)`` probabilities: the largest, or
    for one sigmoid channel 1 where p ≥ 0.5."""
    if probabilities.shape[1] == 1:
        return (probabilities[:, 0] >= 0.5).astype(np.intp)
    return probabilities.argmax(axis=1)


def compare_decisions(reference: np.ndarray, candidate: np.ndarray) -> DecisionAgreement:
    """Agreement of the labels two ``(B, K, H, W)`` probability outputs decide on."""
    chosen_reference, chosen_candidate = chosen_channels(reference), chosen_channels(candidate)
    same = chosen_reference == chosen_candidate
    foreground = (chosen_reference > 0) | (chosen_candidate > 0)
    return DecisionAgreement(float(same.mean()), float(same[foreground].mean()) if foreground.any() else 1.0)


@dataclass
class Int8Result:
    """What :func:`quantize_for_volume` did: the predictor to run and what to tell the user."""

    predictor: object
    precision: str  # "int8", or "fp32" when the check refused the int8 model
    seconds: float
    agreement: DecisionAgreement
    warning: str = ""


def quantize_for_volume(predictor, slice_count: int, batch_of: Callable[[np.ndarray], np.ndarray]) -> Int8Result:
    """Quantise ``predictor``'s ONNX export for a volume of ``slice_count`` slices and check it (see
    the module's docstring).

    ``predictor``: :class:`~UNetSegmentationLib.backends.micro_batch.MicroBatched` around a float32
    :class:`~UNetSegmentationLib.backends.onnx_predictor.OnnxSlicePredictor`; ``batch_of(indices)``:
    the network input of those slices, ``(B, 2c+1, H, W)`` float32, normalised and padded exactly as
    the prediction will see them (the caller slices the volume: backends know no volumes). Returns
    the same wrapper around the int8 session, or around the float32 one if the check fails.
    """
    started = time.perf_counter()
    session = predictor.inner
    calibration, check = sample_slices(slice_count)
    tiles = [tile for k in calibration for tile in calibration_tiles(batch_of(np.array([k])), predictor.required_multiple)]
    quantized = quantize_export(session.path, session.input_name, tiles)
    int8_predictor = predictor.with_inner(session.with_model(quantized, precision="int8"))
    check_batch = batch_of(check)
    agreement = compare_decisions(predictor(check_batch), int8_predictor(check_batch))
    seconds = time.perf_counter() - started
    if agreement.acceptable:
        return Int8Result(int8_predictor, "int8", seconds, agreement)
    warning = (
        f"int8 was not used: after calibration on {len(calibration)} slices its {agreement.describe()} "
        f"(needed {INT8_LABEL_AGREEMENT:.0%} and {INT8_FOREGROUND_AGREEMENT:.0%}); computing in float32"
    )
    return Int8Result(predictor, "fp32", seconds, agreement, warning)

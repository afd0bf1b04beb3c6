"""ONNX Runtime sessions and the slice predictor that runs an export (CPU; needs no PyTorch).

Decides how a session is configured (threads from the plan, every graph optimisation, sequential
execution); which export runs and in which precision is decided elsewhere (:mod:`.onnx_export`, :mod:`.plan`).
"""

from __future__ import annotations

from copy import copy as shallow_copy
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from UNetSegmentationLib.backends.device import CPU
from UNetSegmentationLib.backends.onnx_cache import CHECKED_DIFFERENCE, REQUIRED_MULTIPLE


def _number(text: Optional[str], kind: Callable[[str], Any], otherwise: Any) -> Any:
    """``kind(text)``, or ``otherwise`` for a property that is missing or holds no such number."""
    try:
        return kind(text)
    except (TypeError, ValueError):
        return otherwise


def make_session(model: Union[Path, bytes], threads: int, quiet: bool = False):
    """A CPU session for the model at a path (or serialised): ``threads`` intra-op threads, all graph
    optimisations (BatchNorm/Conv fusion, the NCHWc blocked layout, int8 operator fusion),
    sequential execution. ``quiet``: log nothing (the export check expects some exports to fail on
    shapes frozen by tracing)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4 if quiet else 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"])


class OnnxSlicePredictor:
    """:class:`~UNetSegmentationLib.backends.torch_predictor.SlicePredictor`'s interface on ONNX Runtime (CPU, float32).

    ``__call__(batch)``: ``(B, 2c+1, H, W)`` float32 numpy, normalised and padded → ``(B, 2, H, W)``
    float32 numpy: the class probabilities of :class:`~UNetSegmentationLib.backends.torch_network.ProbabilityNetwork`
    (K = 1: the sigmoid foreground; else softmax over background + classes). Needs no PyTorch.
    """

    backend = "onnx"
    precision = "fp32"

    def __init__(self, path: Path, metadata, depth, threads: int) -> None:
        self.path = Path(path)
        self.metadata = metadata
        self.depth = depth
        self.threads_per_session = threads
        self.device = CPU
        self.model = None
        self.session = make_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name
        #: the export's own metadata: whether it may serve a run is decided from it (:func:`.onnx_cache.export_problem`)
        self.properties = dict(self.session.get_modelmeta().custom_metadata_map)
        self.required_multiple = _number(self.properties.get(REQUIRED_MULTIPLE), int, 0)
        self.checked_difference = _number(self.properties.get(CHECKED_DIFFERENCE), float, float("nan"))

    def with_model(self, model: bytes, precision: str) -> "OnnxSlicePredictor":
        """The same predictor on another serialisation of this export (the int8 one: :mod:`.int8`)."""
        other = shallow_copy(self)
        other.session = make_session(model, self.threads_per_session)
        other.precision = precision
        return other

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input_name: batch})[0]

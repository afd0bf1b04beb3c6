"""The PyTorch slice predictor: a network on batches of 2.5D inputs, on the CPU or a CUDA GPU.

Decides only what depends on the network itself (:func:`torch_settings`: channels_last where the
network's normalisation allows it); device and precision come resolved from the plan
(:func:`~UNetSegmentationLib.backends.plan.plan_execution`) and are taken as they are. The
probabilities are those of :class:`~UNetSegmentationLib.backends.torch_network.ProbabilityNetwork`,
the module the ONNX export runs too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.depth import Depth
from UNetSegmentationLib.model.metadata import ModelMetadata

if TYPE_CHECKING:  # only for annotations: torch is imported where it is used (a cached ONNX run never imports it)
    import torch


#: what autocast can compute on the PyTorch backend (int8 is ONNX Runtime's)
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")
#: the autocast dtype (a ``torch`` attribute name) of each precision; None: no autocast
AUTOCAST_DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class TorchSettings:
    """How the PyTorch predictor runs its network, decided from the plan's device type and precision.

    ``autocast_dtype``: ``"bfloat16"``, ``"float16"`` or None (float32); ``channels_last``: inputs and
    weights in NHWC; ``pinned_transfer``: batches go to the GPU from pinned memory, without blocking;
    ``cudnn_benchmark``: cuDNN picks the fastest convolution algorithm per shape.
    """

    device_type: str
    precision: str
    autocast_dtype: Optional[str]
    channels_last: bool
    pinned_transfer: bool
    cudnn_benchmark: bool


def check_torch_precision(precision: str) -> str:
    """``precision`` if the PyTorch backend computes in it, else a :class:`UserError`."""
    if precision not in TORCH_PRECISIONS:
        raise UserError(f"the PyTorch backend computes in {', '.join(TORCH_PRECISIONS)}, not {precision!r}")
    return precision


def torch_settings(device_type: str, precision: str, channels_last_pays: bool) -> TorchSettings:
    """The settings for a resolved ``precision`` on a ``device_type`` (``cpu``/``cuda``).

    channels_last always on CUDA (tensor cores read NHWC; autocast's fp16/bf16 convolutions are
    fastest in it), on the CPU only where ``channels_last_pays`` (batch-normalised networks,
    :func:`~UNetSegmentationLib.backends.torch_network.prefers_channels_last`, with ``optimize``).
    """
    cuda = device_type == "cuda"
    return TorchSettings(device_type, check_torch_precision(precision), AUTOCAST_DTYPES[precision], cuda or channels_last_pays, cuda, cuda)


class SlicePredictor:
    """Runs the network on batches of 2.5D inputs and returns class probabilities on the CPU.

    ``__call__(batch)`` takes ``(B, 2c+1, H, W)`` float32 (already normalised and padded) and returns
    ``(B, K, H, W)`` float32: K = 1 (sigmoid foreground probability) for one class, else softmax over
    background + classes.

    ``precision``: ``fp32``, ``bf16`` or ``fp16`` as resolved by
    :func:`~UNetSegmentationLib.backends.plan.plan_execution` (never resolved again here).
    ``optimize``: fold BatchNorm into the convolutions (in place: ``model`` is changed) and use
    channels_last on the CPU where it pays (batch-normalised networks); off by default, on in
    ``predict`` (:func:`~UNetSegmentationLib.backends.factory.create_predictor`).
    ``model`` is the network itself (moved to ``device``); ``network`` computes the probabilities from it.
    """

    backend = "torch"

    def __init__(
        self,
        model: "torch.nn.Module",
        metadata: ModelMetadata,
        device: "torch.device",
        depth: Depth,
        classification_guidance: bool = True,
        precision: str = "fp32",
        optimize: bool = False,
    ) -> None:
        import torch

        from UNetSegmentationLib.backends.torch_network import ProbabilityNetwork, fold_batchnorm, prefers_channels_last

        check_torch_precision(precision)  # before the model is moved anywhere
        self.metadata = metadata
        self.device = device
        self.depth = depth
        self.precision = precision
        self.model = model.to(device).eval()
        if hasattr(self.model, "classification_guidance"):
            self.model.classification_guidance = classification_guidance
        if optimize:
            fold_batchnorm(self.model)
        self.settings = torch_settings(device.type, precision, optimize and prefers_channels_last(self.model))
        if self.settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.network = ProbabilityNetwork.of(self.model, depth, metadata).eval()
        if self.settings.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True

    @property
    def cuda(self) -> bool:
        return self.settings.device_type == "cuda"

    @property
    def channels_last(self) -> bool:
        return self.settings.channels_last

    @property
    def required_multiple(self) -> int:
        depth = self.depth if isinstance(self.depth, int) else None
        return self.model.required_multiple(depth)

    def __call__(self, batch: np.ndarray) -> "torch.Tensor":
        import torch

        with torch.inference_mode():
            return self._predict(torch.from_numpy(batch))

    def _predict(self, inputs: "torch.Tensor") -> "torch.Tensor":
        import torch

        from UNetSegmentationLib.backends.torch_network import autocast

        if self.settings.pinned_transfer:
            inputs = inputs.pin_memory().to(self.device, non_blocking=True)
        if self.settings.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(self.settings.device_type, self.settings.autocast_dtype):
            probabilities = self.network(inputs)
        return probabilities.cpu()

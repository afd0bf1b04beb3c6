"""The PyTorch slice predictor: a network on batches of 2.5D inputs, on the CPU or a CUDA GPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.depth import ACCURATE, Depth
from UNetSegmentationLib.model.metadata import ModelMetadata

if TYPE_CHECKING:  # only for annotations: torch is imported where it is used (a cached ONNX run never imports it)
    import torch


#: what autocast can compute on the PyTorch backend (int8 is ONNX Runtime's)
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")


class SlicePredictor:
    """Runs the network on batches of 2.5D inputs and returns class probabilities on the CPU.

    ``__call__(batch)`` takes ``(B, 2c+1, H, W)`` float32 (already normalised and padded) and returns
    ``(B, K, H, W)`` float32: K = 1 (sigmoid foreground probability) for one class, else softmax over
    background + classes.

    ``precision``: ``fp32``, ``bf16`` or ``fp16`` as resolved by
    :func:`~UNetSegmentationLib.backends.plan.plan_execution` (never resolved again here).
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
        precision: str = "fp32",
        optimize: bool = False,
    ) -> None:
        import torch

        from UNetSegmentationLib.backends.torch_network import fold_batchnorm, prefers_channels_last

        self.metadata = metadata
        self.device = device
        self.depth = depth
        self.cuda = device.type == "cuda"
        if precision not in TORCH_PRECISIONS:
            raise UserError(f"the PyTorch backend computes in {', '.join(TORCH_PRECISIONS)}, not {precision!r}")
        self.precision = precision
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

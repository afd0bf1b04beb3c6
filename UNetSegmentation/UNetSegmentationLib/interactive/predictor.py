"""The interactive network, loaded for use: guidance + 2.5D image channels in, the object's probability out.

An interactive checkpoint is an ordinary safetensors checkpoint whose metadata says ``role``
``interactive`` and holds its :class:`~UNetSegmentationLib.interactive.guidance.GuidanceSpec`; its
input is the 2c+1 normalised image channels (as ``predict`` gathers them) followed by the previous
mask or probability and the positive and negative click maps, its output one sigmoid channel (the
object under the clicks, whatever its class). It runs through the same
:class:`~UNetSegmentationLib.backends.torch_network.ProbabilityNetwork` as automatic models (BatchNorm
folded, sigmoid inside, UNet++ pruned to the recommended depth where there is one), padded to the
network's required multiple and cropped back. ``backend="onnx"`` (or ``"auto"`` where ONNX Runtime is
installed) runs the same computation through the engine's cached, checked ONNX export instead
(:func:`~UNetSegmentationLib.backends.onnx_export.onnx_predictor_for`: 2-3x faster at the crop sizes of a
click, measured by bench/refine_latency.py); the first load exports (seconds), later loads reuse it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np
import torch

from UNetSegmentationLib.backends.torch_network import ProbabilityNetwork, fold_batchnorm, prefers_channels_last
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.interactive.guidance import GUIDANCE_CHANNELS, GuidanceSpec
from UNetSegmentationLib.model.checkpoint import build_model, load_checkpoint
from UNetSegmentationLib.model.metadata import ModelMetadata


class InteractiveModel:
    """A loaded interactive network; :meth:`predict` maps image channels and guidance to probabilities."""

    def __init__(self, network: Any, metadata: ModelMetadata, path: Optional[Path] = None,
                 runner: Optional[Callable[[np.ndarray], np.ndarray]] = None, multiple: int = 0) -> None:
        if metadata.role != "interactive":
            raise UserError(f"{path or 'the model'} is not an interactive model (its role is {metadata.role!r}): "
                            "refinement needs a checkpoint trained with guidance (unetseg train --interactive object)")
        if len(metadata.classes) != 1:
            raise UserError(f"{path or 'the model'} is a joint interactive model ({len(metadata.classes)} classes out, trained to compare roles): "
                            "refinement needs a class-agnostic one (unetseg train --interactive object)")
        self.metadata = metadata
        self.spec = GuidanceSpec.from_dict(metadata.guidance, str(path or "checkpoint"))
        self.path = path
        self.runner = runner  # an ONNX Runtime predictor: (N, 2c+4, H, W) -> (N, 1, H, W) probabilities
        self.backend = "torch" if runner is None else "onnx"
        if runner is not None:
            self.multiple, self.network = max(1, int(multiple)), None
            return
        depth = metadata.recommended_depth if hasattr(network, "forward_depth") else None
        self.multiple = int(network.required_multiple(depth)) if depth is not None else int(network.required_multiple())
        self.network = ProbabilityNetwork(network, depth, uses_softmax=False).eval()
        self.channels_last = prefers_channels_last(network)
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, path: Union[str, Path], backend: str = "torch") -> "InteractiveModel":
        """The interactive checkpoint at ``path`` (a :class:`UserError` for an automatic one or a bad file).
        ``backend``: ``torch``, ``onnx`` (ONNX Runtime; a :class:`UserError` without it) or ``auto`` (ONNX
        Runtime where it is installed and the export succeeds, else PyTorch)."""
        if backend not in ("torch", "onnx", "auto"):
            raise UserError(f"the interactive model's backend must be torch, onnx or auto, got {backend!r}")
        checkpoint = load_checkpoint(path, weights=False)
        if checkpoint.metadata.role != "interactive" or len(checkpoint.metadata.classes) != 1:
            return cls(None, checkpoint.metadata, Path(path))  # raises, naming the file
        if backend != "torch":
            onnx = cls._onnx(checkpoint, required=backend == "onnx")
            if onnx is not None:
                return cls(None, checkpoint.metadata, Path(path), runner=onnx, multiple=onnx.required_multiple)
        network = build_model(checkpoint)
        fold_batchnorm(network)
        return cls(network, checkpoint.metadata, Path(path))

    @staticmethod
    def _onnx(checkpoint: Any, required: bool) -> Any:
        """The checked ONNX export's predictor at the recommended depth (None where ``auto`` falls back to PyTorch)."""
        from UNetSegmentationLib.backends.device import onnx_runtime_available

        if not onnx_runtime_available():
            if required:
                raise UserError("the interactive model's onnx backend needs ONNX Runtime (pip install -e \".[onnx]\")")
            return None
        from UNetSegmentationLib.backends.onnx_export import ExportError, onnx_predictor_for

        try:
            return onnx_predictor_for(checkpoint, checkpoint.metadata.recommended_depth, True, max(1, torch.get_num_threads()))
        except ExportError as error:
            if required:
                raise UserError(f"{checkpoint.path}: {error}") from None
            return None

    @property
    def context(self) -> int:
        """2.5D neighbours on each side of the slice (the image channels are 2c+1)."""
        return self.metadata.context

    @property
    def spacing(self) -> Tuple[float, float]:
        """(row, column) mm of the model grid: the in-plane spacing it learned at."""
        spacing = self.metadata.in_plane_spacing
        if spacing is None:
            raise UserError(f"{self.path or 'the interactive model'} does not record the spacing it was trained at")
        return spacing

    @property
    def slice_distance(self) -> float:
        """mm between a slice and its 2.5D neighbours (and the unit of a click's fade across slices)."""
        distance = self.metadata.context_distance
        if distance is None:
            raise UserError(f"{self.path or 'the interactive model'} does not record its slice distance")
        return float(distance)

    def predict(self, image_channels: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` float32 probabilities of the object for ``image_channels`` ``(N, 2c+1, H, W)``
        (normalised as the checkpoint says) and ``guidance`` ``(N, 3, H, W)`` (previous mask, positive, negative)."""
        image_channels = np.asarray(image_channels, dtype=np.float32)
        guidance = np.asarray(guidance, dtype=np.float32)
        expected = 2 * self.context + 1
        if image_channels.ndim != 4 or image_channels.shape[1] != expected:
            raise ValueError(f"image channels must be (N, {expected}, H, W), got {image_channels.shape}")
        if guidance.shape != (image_channels.shape[0], GUIDANCE_CHANNELS) + image_channels.shape[2:]:
            raise ValueError(f"guidance must be (N, {GUIDANCE_CHANNELS}, H, W) matching the image, got {guidance.shape}")
        rows, columns = image_channels.shape[2:]
        pad_r, pad_c = (-rows) % self.multiple, (-columns) % self.multiple
        batch = np.concatenate([image_channels, guidance], axis=1)
        if pad_r or pad_c:
            batch = np.pad(batch, ((0, 0), (0, 0), (0, pad_r), (0, pad_c)))
        if self.runner is not None:
            return np.asarray(self.runner(np.ascontiguousarray(batch, dtype=np.float32)))[:, 0, :rows, :columns].astype(np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(batch))
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            probabilities = self.network(tensor)[:, 0, :rows, :columns]
        return probabilities.float().numpy().copy()

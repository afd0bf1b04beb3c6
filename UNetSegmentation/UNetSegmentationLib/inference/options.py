"""What a segmentation run lets the user choose, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from UNetSegmentationLib.backends.plan import ExecutionRequest
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.depth import Depth


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

    def execution_request(self) -> ExecutionRequest:
        """The device, backend, precision and threads asked for (resolved by ``plan_execution``)."""
        return ExecutionRequest(self.device, self.backend, self.precision, self.threads, self.slice_workers)

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UserError(f"--batch-size must be a positive integer, got {self.batch_size!r}")
        from UNetSegmentationLib.backends.plan import BACKENDS, PRECISIONS, check_positive, parse_choice

        self.backend = parse_choice(self.backend, BACKENDS, "--backend")
        self.precision = parse_choice(self.precision, PRECISIONS, "--precision")
        for value, option in ((self.threads, "--threads"), (self.slice_workers, "--slice-workers")):
            if value is not None:
                check_positive(value, option)

"""A pretend machine for the execution plan: :class:`FakeMachine` answers the plan's hardware questions
(:class:`UNetSegmentationLib.backends.device.Capabilities`) as told, and records which were asked.

Tests of the device, precision, backend and batch decisions pass one to ``plan_execution`` instead of
patching module internals; no GPU is needed to test what the plan decides for one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

GIB = 1 << 30


@dataclass
class FakeMachine:
    """``gpus`` CUDA GPUs (0: no CUDA); ``bf16_gpus``: the indices of those that compute bf16 natively
    (default: all); ``free_bytes``/``total_bytes``: each GPU's memory; ``cpu_bf16``: native bf16 on
    the CPU; ``onnx``: ONNX Runtime installed. ``asked`` lists every question, in order."""

    gpus: int = 0
    bf16_gpus: Sequence[int] = None
    free_bytes: int = 80 * GIB
    total_bytes: int = 80 * GIB
    cpu_bf16: bool = False
    onnx: bool = True
    asked: List[Tuple] = field(default_factory=list)

    def cuda_available(self) -> bool:
        self.asked.append(("cuda_available",))
        return self.gpus > 0

    def cuda_device_count(self) -> int:
        self.asked.append(("cuda_device_count",))
        return self.gpus

    def cuda_bf16_supported(self, index: int) -> bool:
        self.asked.append(("cuda_bf16_supported", index))
        assert 0 <= index < self.gpus, f"asked about GPU {index} of {self.gpus}"
        return index in (range(self.gpus) if self.bf16_gpus is None else self.bf16_gpus)

    def cuda_memory(self, index: int) -> Tuple[int, int]:
        self.asked.append(("cuda_memory", index))
        assert 0 <= index < self.gpus, f"asked about GPU {index} of {self.gpus}"
        return self.free_bytes, self.total_bytes

    def cpu_native_bf16(self) -> bool:
        self.asked.append(("cpu_native_bf16",))
        return self.cpu_bf16

    def onnx_runtime_installed(self) -> bool:
        self.asked.append(("onnx_runtime_installed",))
        return self.onnx


#: an NVIDIA H200-like machine: one GPU with native bf16, 139 GiB free
H200 = dict(gpus=1, free_bytes=139 * GIB, total_bytes=141 * GIB)
#: a Turing-like machine (e.g. a T4): one GPU without native bf16, 15 GiB
T4 = dict(gpus=1, bf16_gpus=(), free_bytes=14 * GIB, total_bytes=15 * GIB)

"""Where the network runs: the CPU or a CUDA GPU, and what the hardware can compute.

Decided without importing PyTorch where the answer cannot be a GPU (:func:`cuda_is_impossible`), so a
CPU-only run on a cached ONNX export never imports it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys

from UNetSegmentationLib.errors import UserError


class PlainCpuDevice:
    """``torch.device("cpu")`` as far as this package asks (``type``, ``index``, ``str``), without
    importing PyTorch: what :func:`~UNetSegmentationLib.inference.pipeline.resolve_device` gives where no GPU
    can be present."""

    type = "cpu"
    index = None

    def __str__(self) -> str:
        return "cpu"

    __repr__ = __str__


CPU = PlainCpuDevice()


def cuda_is_impossible() -> bool:
    """True where no CUDA GPU can be used, decided without importing PyTorch: a CPU-only PyTorch
    build (``+cpu``), macOS, or Linux without NVIDIA's driver (``/proc/driver/nvidia``, ``/dev/nvidia*``,
    WSL's ``/dev/dxg``). False means "maybe": PyTorch must be asked."""
    try:
        if "+cpu" in importlib.metadata.version("torch"):
            return True
    except importlib.metadata.PackageNotFoundError:
        pass
    if sys.platform == "darwin":
        return True
    if sys.platform.startswith("linux"):
        markers = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")
        return not any(os.path.exists(marker) for marker in markers)
    return False


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX).

    Without it oneDNN emulates bf16 and a bf16 convolution runs far slower than float32
    (100× slower measured on an AVX2-only EPYC), so bf16 is never chosen automatically there.
    Where ``/proc/cpuinfo`` lists the CPU's flags and they have neither, PyTorch is not asked (nor
    imported).
    """
    flags = _cpu_flags()
    if flags and not flags & {"avx512_bf16", "amx_bf16"}:
        return False
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError, ImportError):
        return False


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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


def onnx_runtime_available() -> bool:
    """ONNX Runtime and ONNX are importable (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))

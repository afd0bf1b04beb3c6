"""Inference speed: what runs the network, in which precision, on how many threads.

Everything here keeps results within a stated tolerance of the plain float32 PyTorch path
(``Testing/test_speed_paths.py`` checks each). This module imports no PyTorch itself: with a cached
ONNX export on a CPU-only machine, ``unetseg predict`` never imports torch (~2 s of start-up saved).

- The PyTorch network is prepared for inference in :mod:`.inference_network` (BatchNorm folded,
  channels_last where it pays, pruned to the depth asked for, softmax inside).
- precision (:func:`resolve_precision`): bf16 autocast where the hardware has it (CUDA; CPUs with
  AVX512-BF16/AMX), float32 elsewhere; ``--precision fp32`` or ``bf16`` to choose; ``int8`` (CPU,
  ONNX Runtime) quantises the export for each volume and checks it against float32 (:mod:`.quantization`).
- backend: ``auto`` uses ONNX Runtime on the CPU when it is installed (the ``[onnx]`` extra) and the
  precision is float32 (so not on native-bf16 CPUs), else PyTorch (:func:`resolve_backend`);
  :func:`create_predictor` builds the predictor and, for ONNX, finds or makes the cached export
  (:mod:`.onnx_backend`).
- :func:`default_threads`, :func:`split_threads`: ``--threads`` CPU threads (default: one per CPU
  this process may use) are shared out as ``workers`` slices computed at the same time, each on
  ``threads // workers`` intra-op threads (PyTorch and ONNX Runtime alike). Two one-thread slices
  at once beat one slice on two threads (1.1-1.5× measured here: no synchronisation between the
  threads inside every small layer).
- :class:`MicroBatched`: on the CPU the network sees one slice per call (:data:`CPU_MICRO_BATCH`)
  whatever ``--batch-size`` gathers, ``workers`` calls at a time: no slower per slice, and the
  activations of ``workers`` slices only.
- :func:`prefetch`: the next batch is prepared on a background thread while the network runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from UNetSegmentationLib.backends.device import cpu_has_native_bf16, resolve_device
from UNetSegmentationLib.backends.device import onnx_runtime_available as onnx_available
from UNetSegmentationLib.errors import UserError

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "bf16", "int8")

#: labels of the bf16 path must agree with float32 on at least this fraction of voxels
#: (measured on the bundled model and the slicerio chest CT; see BENCHMARKS.md)
BF16_LABEL_AGREEMENT = 0.99
#: ONNX Runtime probabilities must match PyTorch's to this (checked on every export)
ONNX_TOLERANCE = 1e-4


def parse_choice(value: Optional[str], choices, option: str) -> str:
    value = (value or "auto").lower()
    if value not in choices:
        raise UserError(f"{option} must be one of {', '.join(choices)}; got {value!r}")
    return value


# --- threads -------------------------------------------------------------------------------------


def default_threads() -> int:
    """One thread per CPU this process may run on (its affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def configure_threads(threads: Optional[int] = None) -> int:
    """Set PyTorch's intra-op threads (``None``: leave PyTorch's default, one per core) and return the count."""
    import torch

    if threads is not None:
        check_threads(threads)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return torch.get_num_threads()


def check_positive(value, option: str) -> int:
    """``value`` if it is a positive integer, else a :class:`UserError` naming ``option``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{option} must be a positive integer, got {value!r}")
    return value


def check_threads(threads) -> int:
    return check_positive(threads, "--threads")


#: slices computed at the same time on the CPU (measured: BENCHMARKS.md, "slice workers"); more
#: workers would multiply the activation memory for little more speed on many-core machines, where
#: each worker gets several intra-op threads instead
CPU_SLICE_WORKERS = 2


def split_threads(threads: int, workers: Optional[int] = None) -> Tuple[int, int]:
    """``(workers, intra-op threads per worker)`` for ``threads`` CPU threads in all.

    ``workers`` None: :data:`CPU_SLICE_WORKERS` (at most one per thread). A worker count above
    ``threads`` is lowered to it; every worker gets ``threads // workers`` threads (at least one).
    """
    if workers is None:
        workers = CPU_SLICE_WORKERS
    else:
        check_positive(workers, "--slice-workers")
    workers = max(1, min(workers, threads))
    return workers, max(1, threads // workers)


# --- precision -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutionRequest:
    """What the user asked for: ``--device``, ``--backend``, ``--precision``, ``--threads``, ``--slice-workers``."""

    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    threads: Optional[int] = None
    slice_workers: Optional[int] = None


@dataclass(frozen=True)
class ExecutionPlan:
    """Where and how the network runs, every choice resolved: predictors take these values as they are.

    ``device``: a ``torch.device`` or the torch-free :data:`~UNetSegmentationLib.backends.device.CPU`;
    ``backend``: ``torch`` or ``onnx``; ``precision``: ``fp32``, ``bf16``, ``fp16`` (CUDA without bf16) or
    ``int8`` (ONNX Runtime, quantised per volume); ``threads``: CPU threads in all, shared out as
    ``workers`` slices at once on ``threads_per_worker`` threads each; ``backend_requested``: what the
    user asked for (``auto`` allows falling back to PyTorch when the export fails).
    """

    device: Any
    backend: str
    precision: str
    threads: int
    workers: int
    threads_per_worker: int
    backend_requested: str = "auto"

    @property
    def on_cpu(self) -> bool:
        return getattr(self.device, "type", str(self.device)) == "cpu"


def plan_execution(request: ExecutionRequest) -> ExecutionPlan:
    """The one place that decides device, precision, backend and threads for a run."""
    device = resolve_device(request.device, plain_cpu=True)
    precision = resolve_precision(request.precision, device)
    backend = resolve_backend(request.backend, device, precision)
    total = check_threads(request.threads) if request.threads is not None else default_threads()
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    workers, per_worker = split_threads(total, request.slice_workers) if on_cpu else (1, total)
    return ExecutionPlan(device, backend, precision, total, workers, per_worker, parse_choice(request.backend, BACKENDS, "--backend"))


def resolve_precision(precision: Optional[str], device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` (CUDA without bf16) for ``--precision`` on ``device``.

    ``auto``: CUDA → bf16 autocast (fp16 where bf16 is unsupported), as the engine always did; CPU →
    bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX, where it runs 1.5-3× faster than
    fp32), fp32 elsewhere (emulated bf16 is ~100× slower). bf16 is within tolerance: on the bundled
    model and the slicerio chest CT, 99.96 % of the labels agree with fp32 and the mean Dice
    changes by less than 0.001 (BENCHMARKS.md). ``fp32`` forces float32 everywhere. ``int8``: the
    ONNX export quantised for each volume (CPU only; :mod:`.quantization`), never chosen by
    ``auto``: it pays only for wide networks (measured 1.5-1.6× on UNet++ L4, no gain on the bundled model).
    """
    precision = parse_choice(precision, PRECISIONS, "--precision")
    if getattr(device, "type", str(device)) == "cuda":
        if precision == "int8":
            raise UserError("--precision int8 runs on the CPU (ONNX Runtime); on CUDA use auto (bf16/fp16) or fp32, or add --device cpu")
        if precision == "fp32":
            return "fp32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return precision


# --- backend -------------------------------------------------------------------------------------


def resolve_backend(backend: Optional[str], device, precision: str) -> str:
    """``torch`` or ``onnx`` for ``--backend`` (``auto``: ONNX Runtime on the CPU in fp32 when installed)."""

    backend = parse_choice(backend, BACKENDS, "--backend")
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    if precision == "int8":  # only ONNX Runtime computes it (quantization.py)
        if backend == "torch":
            raise UserError("--precision int8 runs on ONNX Runtime; use --backend onnx or auto")
        if not onnx_available():
            raise UserError("--precision int8 needs onnxruntime and onnx: pip install 'UNetSegmentationLib[onnx]' (or use --precision fp32)")
        return "onnx"
    if backend == "auto":
        return "onnx" if on_cpu and precision == "fp32" and onnx_available() else "torch"
    if backend == "onnx":
        if not onnx_available():
            raise UserError(
                "--backend onnx needs onnxruntime, onnx and onnxscript: pip install 'UNetSegmentationLib[onnx]' (or use --backend torch)"
            )
        if not on_cpu:
            raise UserError("--backend onnx runs on the CPU; use --backend torch (or auto) for CUDA")
        if precision != "fp32":
            raise UserError("--backend onnx computes in float32 or int8; use --precision fp32 or int8, or --backend torch for bf16")
    return backend


# --- batch size ----------------------------------------------------------------------------------


# --- overlap -------------------------------------------------------------------------------------



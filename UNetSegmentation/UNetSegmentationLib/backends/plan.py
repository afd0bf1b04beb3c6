"""The one place that decides how a run computes: device, precision, backend, threads and batches.

:func:`plan_execution` turns what the user asked for (:class:`ExecutionRequest`) into an
:class:`ExecutionPlan` whose every value is resolved; predictors take those values as they are and
never resolve them again. Every question about the hardware goes to one
:class:`~UNetSegmentationLib.backends.device.Capabilities` object (the machine's by default, a fake
one in tests), so each decision below can be tested without a GPU.

- device (:func:`~UNetSegmentationLib.backends.device.device_for`): ``auto`` is the first CUDA GPU
  when there is one, else the CPU; ``cuda:N`` must exist.
- precision (:func:`resolve_precision`, :func:`autocast_precision`, which training asks too): CUDA:
  bf16 autocast on GPUs that compute it natively, fp16 autocast on older ones, ``--precision fp32`` to
  refuse both; CPU: bf16 autocast on CPUs with AVX512-BF16/AMX, float32 elsewhere and with
  ``--backend onnx`` (``auto`` chooses within the backend the user chose); ``int8`` (CPU, ONNX Runtime) quantises the export for each
  volume and checks it against float32 (:mod:`.int8`).
- backend (:func:`resolve_backend`): ``auto`` uses ONNX Runtime on the CPU in float32 when it is
  installed (the ``[onnx]`` extra), else PyTorch.
- CPUs (:func:`usable_cpus`, :func:`cpus_per_worker`): affinity and the cgroup's quota, for every
  count of CPUs in the engine (threads here, training's, cohort workers').
- threads (:func:`cap_threads`, :func:`split_threads`): ``--threads`` CPU threads (default, and at
  most: one per CPU this process may use; a larger request is lowered with a note) are shared out as ``workers`` slices computed at the same time, each on
  ``threads // workers`` intra-op threads. Two one-thread slices at once beat one slice on two
  threads (1.1-1.5× measured here: no synchronisation between the threads inside every small layer).
- batches (:func:`plan_batch_size`): on the CPU the network sees one slice per call
  (:data:`CPU_MICRO_BATCH`) whatever ``--batch-size`` gathers; on a CUDA GPU it sees the whole batch,
  whose size (when the request leaves it open) follows the GPU's free memory.

Every speed path keeps results within a stated tolerance of the plain float32 PyTorch path
(``Testing/test_cpu_execution.py``). No PyTorch or numpy import here: with a cached ONNX export on a
CPU-only machine ``unetseg predict`` never imports torch, and the Slicer panel imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

from UNetSegmentationLib.backends.device import SYSTEM, Capabilities, PlainDevice, device_for, usable_cpu_count
from UNetSegmentationLib.errors import UserError

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "bf16", "int8")

#: labels of the bf16 path must agree with float32 on at least this fraction of voxels
#: (measured on the bundled model and the slicerio chest CT; see BENCHMARKS.md)
BF16_LABEL_AGREEMENT = 0.99
#: ONNX Runtime probabilities must match PyTorch's to this (checked on every export)
ONNX_TOLERANCE = 1e-4

#: slices computed at the same time on the CPU (measured: BENCHMARKS.md, "slice workers"); more
#: workers would multiply the activation memory for little more speed on many-core machines, where
#: each worker gets several intra-op threads instead
CPU_SLICE_WORKERS = 2
#: slices per network call on the CPU, whatever --batch-size gathers: measured (BENCHMARKS.md), larger
#: batches are no faster per slice on the CPU and need proportionally more memory for activations
CPU_MICRO_BATCH = 1
#: a CUDA GPU's batch when the request leaves it open: at least this many slices ...
GPU_MIN_BATCH = 4
#: ... at most this many ...
GPU_MAX_BATCH = 32
#: ... and a power of two that fits half the free memory at this many bytes per slice: UNet++ L4 with
#: the paper's features (32..512) at 512² needs ~0.8 GB per slice in float32 (measured on the CPU), half in bf16
GPU_BYTES_PER_SLICE = 1 << 30


def parse_choice(value: Optional[str], choices, option: str) -> str:
    """``value`` lower-cased (None: ``auto``) if it is one of ``choices``, else a :class:`UserError` naming ``option``."""
    value = (value or "auto").lower()
    if value not in choices:
        raise UserError(f"{option} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_positive(value, option: str) -> int:
    """``value`` if it is a positive integer, else a :class:`UserError` naming ``option``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{option} must be a positive integer, got {value!r}")
    return value


def check_threads(threads) -> int:
    return check_positive(threads, "--threads")


# --- threads -------------------------------------------------------------------------------------


def usable_cpus(capabilities: Capabilities = SYSTEM) -> int:
    """THE number of CPUs this process may use (affinity, and the CPU quota of its own cgroup, v1 or
    v2: :func:`~UNetSegmentationLib.backends.device.usable_cpu_count`). Every count of CPUs in the
    engine asks this (the plan's threads, training's threads, cohort workers' threads): ``os.cpu_count()``
    counts the machine's CPUs, which a container, a cluster job or ``taskset`` may not be allowed to use."""
    asked = getattr(capabilities, "usable_cpus", None)  # an optional question of Capabilities
    return max(1, int(asked())) if asked is not None else usable_cpu_count()


def cpus_per_worker(workers: int, capabilities: Capabilities = SYSTEM) -> int:
    """CPU threads for each of ``workers`` processes run side by side: the usable CPUs shared out
    evenly, at least one each (more threads than CPUs only slow every one of them down)."""
    return max(1, usable_cpus(capabilities) // max(1, workers))


def default_threads() -> int:
    """One thread per CPU this process may use (:func:`usable_cpus`)."""
    return usable_cpus()


def cap_threads(requested: Optional[int], usable: int) -> Tuple[int, Optional[str]]:
    """``(threads, note)``: ``--threads`` (None: one per usable CPU), at most the ``usable`` CPUs: more
    threads than CPUs only slow every one of them down (``--threads 1000`` started 505 threads and
    slowed the machine for everyone); ``note`` says so when the request was lowered."""
    if requested is None:
        return usable, None
    check_threads(requested)
    if requested <= usable:
        return requested, None
    return usable, f"--threads {requested} is more than the {usable} CPU(s) this process may use; using {usable}"


def configure_threads(threads: Optional[int] = None) -> int:
    """Set PyTorch's intra-op threads (``None``: leave PyTorch's default, one per core) and return the count."""
    import torch  # only the PyTorch backend has this process-wide setting

    if threads is not None:
        check_threads(threads)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return torch.get_num_threads()


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


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutionRequest:
    """What the user asked for: ``--device``, ``--backend``, ``--precision``, ``--threads``,
    ``--slice-workers`` and ``--batch-size`` (None: left to the plan)."""

    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    threads: Optional[int] = None
    slice_workers: Optional[int] = None
    batch_size: Optional[int] = None


@dataclass(frozen=True)
class ExecutionPlan:
    """Where and how the network runs, every choice resolved: predictors take these values as they are.

    ``device``: a :class:`~UNetSegmentationLib.backends.device.PlainDevice` (``str()`` of it is what
    ``torch.device`` takes); ``backend``: ``torch`` or ``onnx``; ``precision``: ``fp32``, ``bf16``,
    ``fp16`` (a CUDA GPU without native bf16) or ``int8`` (ONNX Runtime, quantised per volume);
    ``threads``: CPU threads in all, shared out as ``workers`` slices at once on ``threads_per_worker``
    threads each; ``backend_requested``: what the user asked for (``auto`` allows falling back to
    PyTorch when the export fails); ``slices_per_call``: slices per network call (None: the whole
    batch); ``batch_size``: slices gathered per step when the plan chose it (the request's, or on a
    CUDA GPU one that fits its free memory), None where the caller's ``--batch-size`` stands;
    ``notes``: what the plan changed from the request (e.g. ``--threads`` lowered to the usable
    CPUs), reported as warnings.
    """

    device: Any
    backend: str
    precision: str
    threads: int
    workers: int
    threads_per_worker: int
    backend_requested: str = "auto"
    slices_per_call: Optional[int] = None
    batch_size: Optional[int] = None
    notes: Tuple[str, ...] = ()

    @property
    def on_cpu(self) -> bool:
        return getattr(self.device, "type", str(self.device)) == "cpu"

    @property
    def quantizes_per_volume(self) -> bool:
        """``--precision int8``: the export is quantised once the volume is read, calibrated on its slices (:mod:`.int8`)."""
        return self.precision == "int8"


def plan_execution(request: ExecutionRequest, capabilities: Capabilities = SYSTEM) -> ExecutionPlan:
    """The one place that decides device, precision, backend, threads and batches for a run,
    asking ``capabilities`` (and nothing else) about the hardware."""
    device = device_for(request.device, capabilities)
    precision = resolve_precision(request.precision, device, capabilities, request.backend)
    backend = resolve_backend(request.backend, device, precision, capabilities)
    usable = usable_cpus(capabilities) if hasattr(capabilities, "usable_cpus") else None  # optional question
    if usable is None:
        total, threads_note = (check_threads(request.threads) if request.threads is not None else default_threads()), None
    else:
        total, threads_note = cap_threads(request.threads, usable)
    on_cpu = device.type == "cpu"
    workers, per_worker = split_threads(total, request.slice_workers) if on_cpu else (1, total)
    return ExecutionPlan(
        device,
        backend,
        precision,
        total,
        workers,
        per_worker,
        parse_choice(request.backend, BACKENDS, "--backend"),
        slices_per_call=CPU_MICRO_BATCH if on_cpu else None,
        batch_size=plan_batch_size(request.batch_size, device, capabilities),
        notes=(threads_note,) if threads_note else (),
    )


def autocast_precision(device: PlainDevice, capabilities: Capabilities = SYSTEM) -> str:
    """THE reduced precision a device computes natively, for prediction (``--precision auto``) and
    training (autocast unless ``--no-amp``) alike: a CUDA GPU with native bf16 (compute capability 8.0
    or newer; ROCm) → ``bf16``, an older one → ``fp16`` (``torch.cuda.is_bf16_supported()`` also says
    yes where bf16 is only emulated, far slower than fp16); a CPU with AVX512-BF16/AMX → ``bf16``
    (1.5-3× faster than fp32 there), any other CPU → ``fp32`` (emulated bf16 is ~100× slower)."""
    if device.type == "cuda":
        return "bf16" if capabilities.cuda_bf16_supported(device.index or 0) else "fp16"
    return "bf16" if capabilities.cpu_native_bf16() else "fp32"


def resolve_precision(precision: Optional[str], device: PlainDevice, capabilities: Capabilities = SYSTEM, backend: Optional[str] = "auto") -> str:
    """``fp32``, ``bf16``, ``fp16`` or ``int8`` for ``--precision`` on ``device`` with ``--backend backend``.

    ``auto`` chooses within the backend the user chose: ``--backend onnx`` computes float32 (int8 only
    when asked), so ``auto`` is ``fp32`` there whatever the CPU; otherwise :func:`autocast_precision`.
    CUDA: ``bf16`` is bf16 autocast where native, fp16 where it is not; ``fp32`` forces float32;
    ``int8`` is refused (ONNX Runtime on the CPU only). bf16 is within tolerance: on the bundled model
    and the slicerio chest CT, 99.96 % of the labels agree with fp32 and the mean Dice changes by less
    than 0.001 (BENCHMARKS.md). ``int8``: the ONNX export quantised for each volume, never chosen by
    ``auto``: it pays only for wide networks (measured 1.5-1.6× on UNet++ L4, no gain on the bundled model).
    """
    precision = parse_choice(precision, PRECISIONS, "--precision")
    if device.type == "cuda":
        if precision == "int8":
            raise UserError("--precision int8 runs on the CPU (ONNX Runtime); on CUDA use auto (bf16/fp16) or fp32, or add --device cpu")
        if precision == "fp32":
            return "fp32"
        return autocast_precision(device, capabilities)
    if precision == "auto":
        if parse_choice(backend, BACKENDS, "--backend") == "onnx":
            return "fp32"  # what ONNX Runtime computes; asking the CPU about bf16 would only lead to a refusal
        return autocast_precision(device, capabilities)
    return precision


def resolve_backend(backend: Optional[str], device: PlainDevice, precision: str, capabilities: Capabilities = SYSTEM) -> str:
    """``torch`` or ``onnx`` for ``--backend`` (``auto``: ONNX Runtime on the CPU in fp32 when installed)."""
    backend = parse_choice(backend, BACKENDS, "--backend")
    on_cpu = device.type == "cpu"
    installed = capabilities.onnx_runtime_installed()
    if precision == "int8":  # only ONNX Runtime computes it (int8.py)
        if backend == "torch":
            raise UserError("--precision int8 runs on ONNX Runtime; use --backend onnx or auto")
        if not installed:
            raise UserError("--precision int8 needs onnxruntime and onnx: pip install 'UNetSegmentationLib[onnx]' (or use --precision fp32)")
        return "onnx"
    if backend == "auto":
        return "onnx" if on_cpu and precision == "fp32" and installed else "torch"
    if backend == "onnx":
        if not installed:
            raise UserError(
                "--backend onnx needs onnxruntime, onnx and onnxscript: pip install 'UNetSegmentationLib[onnx]' (or use --backend torch)"
            )
        if not on_cpu:
            raise UserError("--backend onnx runs on the CPU; use --backend torch (or auto) for CUDA")
        if precision != "fp32":
            raise UserError("--backend onnx computes in float32 or int8; use --precision fp32 or int8, or --backend torch for bf16")
    return backend


def plan_batch_size(requested: Optional[int], device: PlainDevice, capabilities: Capabilities = SYSTEM) -> Optional[int]:
    """Slices gathered per step: ``requested`` when given; else on a CUDA GPU the largest power of
    two from :data:`GPU_MIN_BATCH` to :data:`GPU_MAX_BATCH` whose slices fit half its free memory at
    :data:`GPU_BYTES_PER_SLICE` each (a batch that does not fit after all is halved at run time:
    :mod:`.memory`); else None (the CPU computes one slice per call whatever is gathered)."""
    if requested is not None:
        return check_positive(requested, "--batch-size")
    if device.type != "cuda":
        return None
    free, _ = capabilities.cuda_memory(device.index or 0)
    fitting = free // 2 // GPU_BYTES_PER_SLICE
    size = GPU_MIN_BATCH
    while size * 2 <= min(fitting, GPU_MAX_BATCH):
        size *= 2
    return size

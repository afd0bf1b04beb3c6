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

import importlib.metadata
import os
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np

from UNetSegmentationLib.errors import UserError

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "bf16", "int8")

#: labels of the bf16 path must agree with float32 on at least this fraction of voxels
#: (measured on the bundled model and the slicerio chest CT; see BENCHMARKS.md)
BF16_LABEL_AGREEMENT = 0.99
#: ONNX Runtime probabilities must match PyTorch's to this (checked on every export)
ONNX_TOLERANCE = 1e-4


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


def resolve_precision(precision: Optional[str], device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` (CUDA without bf16) for ``--precision`` on ``device``.

    ``auto``: CUDA → bf16 autocast (fp16 where bf16 is unsupported), as the engine always did; CPU →
    bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX, where it runs 1.5-3× faster than
    fp32), fp32 elsewhere (emulated bf16 is ~100× slower). bf16 is within tolerance: on the bundled
    model and the slicerio chest CT, 99.96 % of the labels agree with fp32 and the mean Dice
    changes by less than 0.001 (BENCHMARKS.md). ``fp32`` forces float32 everywhere. ``int8``: the
    ONNX export quantised for each volume (CPU only; :mod:`.quantization`), never chosen by
    ``auto``: it pays only for wide networks (measured 1.5-1.6× on UNet++ L4, no gain on the bundled model). ``None``: what
    :class:`~UNetSegmentationLib.inference.pipeline.SlicePredictor` always did (CUDA autocast, CPU fp32).
    """
    legacy = precision is None
    precision = parse_choice(precision, PRECISIONS, "--precision")
    if getattr(device, "type", str(device)) == "cuda":
        if precision == "int8":
            raise UserError("--precision int8 runs on the CPU (ONNX Runtime); on CUDA use auto (bf16/fp16) or fp32, or add --device cpu")
        if precision == "fp32":
            return "fp32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "auto":
        return "bf16" if not legacy and cpu_has_native_bf16() else "fp32"
    return precision


# --- backend -------------------------------------------------------------------------------------


def resolve_backend(backend: Optional[str], device, precision: str) -> str:
    """``torch`` or ``onnx`` for ``--backend`` (``auto``: ONNX Runtime on the CPU in fp32 when installed)."""
    from UNetSegmentationLib.backends import onnx_export as onnx_backend

    backend = parse_choice(backend, BACKENDS, "--backend")
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    if precision == "int8":  # only ONNX Runtime computes it (quantization.py)
        if backend == "torch":
            raise UserError("--precision int8 runs on ONNX Runtime; use --backend onnx or auto")
        if not onnx_backend.available():
            raise UserError("--precision int8 needs onnxruntime and onnx: pip install 'UNetSegmentationLib[onnx]' (or use --precision fp32)")
        return "onnx"
    if backend == "auto":
        return "onnx" if on_cpu and precision == "fp32" and onnx_backend.available() else "torch"
    if backend == "onnx":
        if not onnx_backend.available():
            raise UserError(
                "--backend onnx needs onnxruntime, onnx and onnxscript: pip install 'UNetSegmentationLib[onnx]' (or use --backend torch)"
            )
        if not on_cpu:
            raise UserError("--backend onnx runs on the CPU; use --backend torch (or auto) for CUDA")
        if precision != "fp32":
            raise UserError("--backend onnx computes in float32 or int8; use --precision fp32 or int8, or --backend torch for bf16")
    return backend


def create_predictor(checkpoint, device, depth, options, notes: Optional[list] = None):
    """The predictor ``predict_file`` runs: backend, precision and threads from ``options``.

    ``checkpoint``: a loaded :class:`~UNetSegmentationLib.model.checkpoint.Checkpoint`. For the ONNX backend
    a cached export of exactly this checkpoint, depth and classification guidance is used when there
    is one (the PyTorch network is then never built: no MONAI import), else it is exported, checked
    against PyTorch and cached. An export that fails or disagrees with PyTorch falls back to PyTorch
    when the backend was ``auto`` (the reason is appended to ``notes``, which ``predict`` reports as a
    warning), and is an error when ``onnx`` was asked for.
    """
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    requested = getattr(options, "threads", None)
    total = check_threads(requested) if requested is not None else default_threads()
    workers, threads = split_threads(total, getattr(options, "slice_workers", None)) if on_cpu else (1, total)
    precision = resolve_precision(getattr(options, "precision", "auto"), device)
    backend = resolve_backend(getattr(options, "backend", "auto"), device, precision)
    guidance = getattr(options, "classification_guidance", True)
    if backend == "onnx":
        from UNetSegmentationLib.backends import onnx_export as onnx_backend

        try:
            session = onnx_backend.OnnxSlicePredictor.for_checkpoint(checkpoint, depth, guidance, threads)
            predictor = MicroBatched(session, CPU_MICRO_BATCH, workers, threads)
            # int8: quantised once the volume is read, calibrated on its slices (quantization.py)
            predictor.calibrate_int8 = precision == "int8"
            return predictor
        except onnx_backend.ExportError as error:
            if precision == "int8" or parse_choice(getattr(options, "backend", "auto"), BACKENDS, "--backend") == "onnx":
                asked = "--precision int8" if precision == "int8" else "--backend onnx"
                raise UserError(f"{asked}: {error}") from None
            if notes is not None:
                notes.append(f"ONNX Runtime cannot run this network ({error}); using PyTorch")
    import torch

    from UNetSegmentationLib.model.checkpoint import build_model
    from UNetSegmentationLib.inference.pipeline import SlicePredictor

    configure_threads(requested)  # --threads: PyTorch's process-wide setting, as before
    device = torch.device(str(device))  # the resolved device may be the torch-free CPU stand-in
    # positional: tests stand in for SlicePredictor with simpler callables
    predictor = SlicePredictor(build_model(checkpoint), checkpoint.metadata, device, depth, guidance, precision, True)
    return MicroBatched(predictor, CPU_MICRO_BATCH, workers, threads, sets_torch_threads=True) if on_cpu else predictor


# --- batch size ----------------------------------------------------------------------------------

#: slices per network call on the CPU, whatever --batch-size gathers: measured (BENCHMARKS.md), larger
#: batches are no faster per slice on the CPU and need proportionally more memory for activations
CPU_MICRO_BATCH = 1


def concatenate(parts):
    """Network outputs of consecutive slices joined along the batch axis (NumPy arrays or tensors)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)


class MicroBatched:
    """A predictor that runs the network on at most ``size`` slices per call, ``workers`` calls at a
    time on a thread pool, and concatenates the results in order.

    The wrapped predictor (``inner``) must allow concurrent calls (PyTorch in inference mode and an
    ONNX Runtime session do; both release the GIL while they compute) and use ``threads_per_worker``
    intra-op threads: an ONNX Runtime session has its count fixed when it is made; for PyTorch
    (``sets_torch_threads``), whose setting is process-wide, it is set for the call and restored
    after it. Everything else (``metadata``, ``device``, ``depth``, ``required_multiple``,
    ``backend`` …) is ``inner``'s.
    """

    def __init__(self, inner, size: int, workers: int = 1, threads_per_worker: Optional[int] = None, sets_torch_threads: bool = False) -> None:
        self.inner = inner
        self.size = max(1, int(size))
        self.workers = max(1, int(workers))
        self.threads_per_worker = threads_per_worker
        self.sets_torch_threads = bool(sets_torch_threads and threads_per_worker)
        self._pool: Optional[ThreadPoolExecutor] = None

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def with_inner(self, inner) -> "MicroBatched":
        """The same slicing and workers around another predictor."""
        return MicroBatched(inner, self.size, self.workers, self.threads_per_worker, self.sets_torch_threads)

    @property
    def threads(self) -> Optional[int]:
        """CPU threads in all: workers × intra-op threads each (None when not known)."""
        return self.workers * self.threads_per_worker if self.threads_per_worker else None

    def _run(self, batch):
        if len(batch) <= self.size:
            return self.inner(batch)
        parts = [batch[start:start + self.size] for start in range(0, len(batch), self.size)]
        if self.workers == 1:
            return concatenate([self.inner(part) for part in parts])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="unetseg-slice")
        return concatenate(list(self._pool.map(self.inner, parts)))  # the first error is raised here

    def __call__(self, batch):
        if not self.sets_torch_threads:
            return self._run(batch)
        import torch

        previous = torch.get_num_threads()
        if previous != self.threads_per_worker:
            torch.set_num_threads(self.threads_per_worker)
        try:
            return self._run(batch)
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)


# --- overlap -------------------------------------------------------------------------------------


def prefetch(items: Iterable, ahead: int = 1) -> Iterator:
    """Iterate ``items``, computed on a background thread up to ``ahead`` items in advance.

    numpy releases the GIL in the work this is used for (gathering, clipping, scaling and padding
    slices), so the next batch is prepared while the network computes the current one. An
    exception in the producer is re-raised in the consumer; closing the iterator early stops the
    producer. ``ahead=0`` (or the environment variable ``UNETSEG_NO_PREFETCH=1``) iterates in the
    calling thread.
    """
    if ahead < 1 or os.environ.get("UNETSEG_NO_PREFETCH", "") not in ("", "0"):
        yield from items
        return
    slots: "queue.Queue" = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    finished = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((finished, None))
        except BaseException as error:  # re-raised in the consumer
            put((finished, error))

    worker = threading.Thread(target=produce, name="unetseg-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if item is finished:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=10)

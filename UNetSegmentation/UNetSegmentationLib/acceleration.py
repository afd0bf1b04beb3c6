"""Inference speed: what runs the network, in which precision, on how many threads.

Everything here keeps results within a stated tolerance of the plain float32 PyTorch path
(``Testing/test_speed_paths.py`` checks each):

- :func:`fold_batchnorm`: BatchNorm after a convolution folded into the convolution's weights
  (exact up to float32 rounding, ~1e-6): one pass over memory less per layer.
- channels_last memory format for networks whose normalisation has no per-sample statistics
  (batch norm, folded or not); InstanceNorm/GroupNorm networks run slower in it on the CPU, so
  they stay contiguous (:func:`prefers_channels_last`).
- :class:`ProbabilityNetwork`: the network pruned to what inference needs (UNet++ at depth L: only
  the nodes i + j ≤ L and head L) with the softmax/sigmoid inside, so one call gives probabilities;
  it is what the ONNX backend exports.
- precision (:func:`resolve_precision`): bf16 autocast where the hardware has it (CUDA; CPUs with
  AVX512-BF16/AMX), float32 elsewhere; ``--precision fp32`` or ``bf16`` to choose.
- backend: ``auto`` uses ONNX Runtime on the CPU when it is installed (the ``[onnx]`` extra) and the
  precision is float32 (so not on native-bf16 CPUs), else PyTorch (:func:`resolve_backend`); :func:`create_predictor` builds the
  predictor and, for ONNX, finds or makes the cached export (:mod:`.onnx_backend`).
- :func:`configure_threads`, :func:`split_threads`: ``--threads`` CPU threads are shared out as
  ``workers`` slices computed at the same time, each on ``threads // workers`` intra-op threads
  (PyTorch and ONNX Runtime alike). Two one-thread slices at once beat one slice on two threads
  (1.1-1.5× measured here: no synchronisation between the threads inside every small layer).
- :class:`MicroBatched`: on the CPU the network sees one slice per call (:data:`CPU_MICRO_BATCH`)
  whatever ``--batch-size`` gathers, ``workers`` calls at a time: no slower per slice, and the
  activations of ``workers`` slices only.
- :func:`prefetch`: the next batch is prepared on a background thread while the network runs.

"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Optional, Tuple

import torch
from torch import nn

from UNetSegmentationLib.errors import UserError

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "bf16")

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


def configure_threads(threads: Optional[int] = None) -> int:
    """Set PyTorch's intra-op threads (``None``: leave PyTorch's default, one per core) and return the count.

    ONNX Runtime sessions use the same number, so the two backends compete on equal terms.
    """
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise UserError(f"--threads must be a positive integer, got {threads!r}")
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return torch.get_num_threads()


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
    elif not isinstance(workers, int) or workers < 1:
        raise UserError(f"--slice-workers must be a positive integer, got {workers!r}")
    workers = max(1, min(workers, threads))
    return workers, max(1, threads // workers)


# --- precision -----------------------------------------------------------------------------------


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX).

    Without it oneDNN emulates bf16 and a bf16 convolution runs far slower than float32
    (100× slower measured on an AVX2-only EPYC), so bf16 is never chosen automatically there.
    """
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            flags = _cpu_flags()
            return not flags or bool(flags & {"avx512_bf16", "amx_bf16"})
    except (AttributeError, RuntimeError):
        pass
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
    changes by less than 0.001 (BENCHMARKS.md). ``fp32`` forces float32 everywhere. ``None``: what
    :class:`~UNetSegmentationLib.inference.SlicePredictor` always did (CUDA autocast, CPU fp32).
    """
    legacy = precision is None
    precision = parse_choice(precision, PRECISIONS, "--precision")
    if getattr(device, "type", str(device)) == "cuda":
        if precision == "fp32":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "auto":
        return "bf16" if not legacy and cpu_has_native_bf16() else "fp32"
    return precision


def autocast(device, precision: str):
    """The autocast context for ``precision`` on ``device`` (a null context for fp32)."""
    import contextlib

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(getattr(device, "type", str(device)), dtype=dtype)


# --- model transforms ----------------------------------------------------------------------------


def _fold_into(conv, bn) -> bool:
    """Fold eval-mode BatchNorm ``bn`` into the preceding (non-transposed) convolution ``conv``."""
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return False
    if bn.training or bn.running_mean is None or bn.running_var is None or bn.num_features != conv.out_channels:
        return False
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
        weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        conv.weight.copy_(weight.to(conv.weight.dtype))
        new_bias = (bias * scale + shift).to(conv.weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias, requires_grad=False)
        else:
            conv.bias.copy_(new_bias)
    return True


def fold_batchnorm(model) -> int:
    """Fold every BatchNorm that directly follows a convolution into it, in place; returns how many.

    Covers MONAI ``Convolution`` blocks (``conv`` then ``adn`` whose first layer is the norm, the
    "NDA" order every network here uses) and ``nn.Sequential`` pairs ``Conv → BatchNorm``. The folded
    BatchNorm becomes ``nn.Identity``. Only for evaluation: the model must be in eval mode, and its
    ``state_dict`` no longer matches the checkpoint afterwards.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in evaluation mode")
    folded = 0
    for module in list(model.modules()):
        adn = getattr(module, "adn", None)
        conv = getattr(module, "conv", None)
        if isinstance(adn, nn.Sequential) and conv is not None and len(adn) and next(iter(adn._modules)) == "N":
            if _fold_into(conv, adn.N):
                adn._modules["N"] = nn.Identity()
                folded += 1
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                if _fold_into(module._modules[first], module._modules[second]):
                    module._modules[second] = nn.Identity()
                    folded += 1
    return folded


def prefers_channels_last(model) -> bool:
    """channels_last pays for batch-normalised (or unnormalised) networks on the CPU; InstanceNorm,
    GroupNorm and LayerNorm layers run slower in it, so networks with them stay contiguous."""
    slow = (nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
    return not any(isinstance(m, slow) for m in model.modules())


class ProbabilityNetwork(nn.Module):
    """``(B, C, H, W)`` → ``(B, K, H, W)`` float32 probabilities from ``model`` at ``depth``.

    ``depth``: an int (UNet++ sub-network: only its nodes and head are computed), ``"accurate"``
    (mean of every head's probabilities) or None (the network's own output). Softmax over
    background + classes, or sigmoid for one class. An ONNX export of this module contains only
    what that computation uses: no unused head, no pruned node.
    """

    def __init__(self, model: nn.Module, depth, uses_softmax: bool) -> None:
        super().__init__()
        self.model = model
        self.depth = depth
        self.uses_softmax = bool(uses_softmax)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.softmax(logits, dim=1) if self.uses_softmax else torch.sigmoid(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depth == "accurate":
            heads = self.model.forward_heads(x)
            return torch.stack([self._activate(h) for h in heads]).mean(0)
        if isinstance(self.depth, int):
            return self._activate(self.model.forward_depth(x, self.depth))
        return self._activate(self.model(x))


# --- backend -------------------------------------------------------------------------------------


def resolve_backend(backend: Optional[str], device, precision: str) -> str:
    """``torch`` or ``onnx`` for ``--backend`` (``auto``: ONNX Runtime on the CPU in fp32 when installed)."""
    from UNetSegmentationLib import onnx_backend

    backend = parse_choice(backend, BACKENDS, "--backend")
    on_cpu = getattr(device, "type", str(device)) == "cpu"
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
            raise UserError("--backend onnx computes in float32; use --precision fp32 or --backend torch for bf16")
    return backend


def create_predictor(checkpoint, device, depth, options, notes: Optional[list] = None):
    """The predictor ``predict_file`` runs: backend, precision and threads from ``options``.

    ``checkpoint``: a loaded :class:`~UNetSegmentationLib.checkpoint.Checkpoint`. For the ONNX backend
    a cached export of exactly this checkpoint, depth and classification guidance is used when there
    is one (the PyTorch network is then never built: no MONAI import), else it is exported, checked
    against PyTorch and cached. An export that fails or disagrees with PyTorch falls back to PyTorch
    when the backend was ``auto`` (the reason is appended to ``notes``, which ``predict`` reports as a
    warning), and is an error when ``onnx`` was asked for.
    """
    total = configure_threads(getattr(options, "threads", None))
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    workers, threads = split_threads(total, getattr(options, "slice_workers", None)) if on_cpu else (1, total)
    precision = resolve_precision(getattr(options, "precision", "auto"), device)
    backend = resolve_backend(getattr(options, "backend", "auto"), device, precision)
    guidance = getattr(options, "classification_guidance", True)
    if backend == "onnx":
        from UNetSegmentationLib import onnx_backend

        try:
            session = onnx_backend.OnnxSlicePredictor.for_checkpoint(checkpoint, depth, guidance, threads)
            return MicroBatched(session, CPU_MICRO_BATCH, workers, threads)
        except onnx_backend.ExportError as error:
            if parse_choice(getattr(options, "backend", "auto"), BACKENDS, "--backend") == "onnx":
                raise UserError(f"--backend onnx: {error}") from None
            if notes is not None:
                notes.append(f"ONNX Runtime cannot run this network ({error}); using PyTorch")
    from UNetSegmentationLib.checkpoint import build_model
    from UNetSegmentationLib.inference import SlicePredictor

    # positional: tests stand in for SlicePredictor with simpler callables
    predictor = SlicePredictor(build_model(checkpoint), checkpoint.metadata, device, depth, guidance, precision, True)
    return MicroBatched(predictor, CPU_MICRO_BATCH, workers, threads) if on_cpu else predictor


# --- batch size ----------------------------------------------------------------------------------

#: slices per network call on the CPU, whatever --batch-size gathers: measured (BENCHMARKS.md), larger
#: batches are no faster per slice on the CPU and need proportionally more memory for activations
CPU_MICRO_BATCH = 1


class MicroBatched:
    """A predictor that runs the network on at most ``size`` slices per call, ``workers`` calls at a
    time on a thread pool, and concatenates the results in order.

    The wrapped predictor (``inner``) must allow concurrent calls (PyTorch in inference mode and an
    ONNX Runtime session do; both release the GIL while they compute). During a call PyTorch runs
    ``threads_per_worker`` intra-op threads (its setting is process-wide, so it is set for the call
    and restored after it); an ONNX Runtime session has its own count, fixed when it was made.
    Everything else (``metadata``, ``device``, ``depth``, ``required_multiple``, ``backend`` …) is
    ``inner``'s.
    """

    def __init__(self, inner, size: int, workers: int = 1, threads_per_worker: Optional[int] = None) -> None:
        self.inner = inner
        self.size = max(1, int(size))
        self.workers = max(1, int(workers))
        self.threads_per_worker = threads_per_worker
        self._pool: Optional[ThreadPoolExecutor] = None

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    @property
    def threads(self) -> int:
        """CPU threads in all: workers × intra-op threads each."""
        return self.workers * (self.threads_per_worker or torch.get_num_threads())

    def __call__(self, batch):
        previous = torch.get_num_threads()
        if self.threads_per_worker and previous != self.threads_per_worker:
            torch.set_num_threads(self.threads_per_worker)
        try:
            if len(batch) <= self.size:
                return self.inner(batch)
            parts = [batch[start:start + self.size] for start in range(0, len(batch), self.size)]
            if self.workers == 1:
                return torch.cat([self.inner(part) for part in parts])
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="unetseg-slice")
            return torch.cat(list(self._pool.map(self.inner, parts)))  # the first error is raised here
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

"""Out of memory during inference: smaller batches first, then the CPU, and say so.

Decides only the reaction to running out of memory at run time; the plan's precision and device are
not resolved again (the CPU fallback computes in float32, which every CPU can).

:class:`MemoryGuard` wraps the predictor call of :func:`~UNetSegmentationLib.inference.pipeline.predict_volume`.
When a batch runs out of memory it frees the CUDA cache and retries the same slices in halves
(batch size 4 → 2 → 1; the smaller size is kept for the rest of the volume). When one slice at a
time still does not fit on the GPU, the network moves to the CPU and the run goes on there at the
requested batch size. Each step is a ``warning`` event. Out of memory on the CPU with one slice is
a :class:`~UNetSegmentationLib.errors.UserError` that says what to do.

Torch is imported lazily: :func:`is_out_of_memory` is also used by the CLI's error handler.
"""

from __future__ import annotations

import gc
import sys
from typing import Optional

from UNetSegmentationLib.backends.micro_batch import concatenate
from UNetSegmentationLib.backends.torch_predictor import SlicePredictor
from UNetSegmentationLib.errors import UserError

#: phrases of the RuntimeErrors that PyTorch and its allocators raise when memory runs out
_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate memory", "bad_alloc", "defaultcpuallocator")


def is_out_of_memory(error: BaseException) -> bool:
    """``torch.cuda.OutOfMemoryError``, ``MemoryError``, or a RuntimeError saying memory ran out."""
    if isinstance(error, MemoryError) or any(cls.__name__ == "OutOfMemoryError" for cls in type(error).__mro__):
        return True
    runtime = isinstance(error, RuntimeError) or type(error).__module__.startswith("onnxruntime")  # ORT's own exception types
    return runtime and any(phrase in str(error).lower() for phrase in _MESSAGES)


def free_cuda_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")  # not imported: no CUDA memory to free (and no import for it)
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def cpu_predictor(predictor):
    """The same network, depth and options as ``predictor``, on the CPU in float32."""
    import torch  # only after an out-of-memory error of the PyTorch backend (a GPU): torch is loaded

    model = predictor.model.to("cpu", memory_format=torch.contiguous_format).float()
    guidance = getattr(model, "classification_guidance", True)
    return SlicePredictor(model, predictor.metadata, torch.device("cpu"), predictor.depth, guidance, "fp32")


class MemoryGuard:
    """``guard(batch)`` is ``predictor(batch)`` with the out-of-memory fallbacks described above.

    ``predictor`` takes ``(B, C, H, W)`` numpy float32 and returns ``(B, K, H, W)`` on the CPU; it
    has ``device``, ``model``, ``metadata`` and ``depth`` (a
    :class:`~UNetSegmentationLib.backends.torch_predictor.SlicePredictor`). ``guard.predictor`` is the one in use.
    """

    def __init__(self, predictor, reporter=None) -> None:
        self.predictor = predictor
        self.reporter = reporter
        self.batch_limit: Optional[int] = None  # slices per call after an out-of-memory error

    def _warn(self, message: str) -> None:
        if self.reporter is not None:
            self.reporter.warning(message)

    def _on_gpu(self) -> bool:
        device = getattr(self.predictor, "device", None)
        return getattr(device, "type", str(device)) == "cuda"

    def __call__(self, batch):
        size = len(batch) if self.batch_limit is None else min(len(batch), self.batch_limit)
        while True:
            try:
                if size >= len(batch):
                    return self.predictor(batch)
                return concatenate([self.predictor(batch[start:start + size]) for start in range(0, len(batch), size)])
            except Exception as error:  # anything but out-of-memory is re-raised at once
                if not is_out_of_memory(error):
                    raise
            # out of the except block: the error and its frames (holding GPU tensors) are released
            where = "the GPU" if self._on_gpu() else "the CPU"
            free_cuda_memory()
            if size > 1:
                smaller = max(1, size // 2)
                self._warn(f"{where} ran out of memory with a batch of {size} slices; continuing with batches of {smaller} (as --batch-size {smaller})")
                size = self.batch_limit = smaller
                continue
            if self._on_gpu():
                self.predictor = cpu_predictor(self.predictor)
                free_cuda_memory()
                self.batch_limit = None
                size = len(batch)
                self._warn("the GPU ran out of memory even with one slice at a time; continuing on the CPU (slower)")
                continue
            rows, columns = batch.shape[-2:]
            raise UserError(
                f"out of memory on the CPU even with one slice ({rows}x{columns} pixels) at a time: close other programs, "
                "or crop or resample the volume to fewer pixels per slice"
            )

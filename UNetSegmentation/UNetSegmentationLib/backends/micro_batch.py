"""Running a batch as several smaller network calls, some of them at the same time.

Decides nothing: how many slices per call and how many calls at once come from the plan
(:data:`~UNetSegmentationLib.backends.plan.CPU_MICRO_BATCH`, ``ExecutionPlan.workers``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np


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

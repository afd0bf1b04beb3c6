"""Where a cohort's cases run: in the ``unetseg`` process, or in ``--workers N`` local processes.

Every executor takes the same jobs (a case, and whether its existing output is a leftover of this
cohort to replace) and yields each case's manifest record as it finishes, in any order. Each worker
opens the model once (:class:`~.worker.CaseWorker`); a process worker gets ``cores / N`` CPU threads
unless ``--threads`` says otherwise, so that N processes share the machine instead of fighting over it.
Processes are started with ``spawn`` (a forked PyTorch with running threads can deadlock). The Ray
executor, with the same interface, is :mod:`.ray_executor`.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Protocol, Sequence, Tuple

from UNetSegmentationLib.cohort.discovery import CohortCase
from UNetSegmentationLib.cohort.worker import CaseWorker
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.model.metadata import ModelMetadata

#: one job: a case, and whether its existing output may be replaced (a leftover of this cohort's interrupted run)
Job = Tuple[CohortCase, bool]


@dataclass(frozen=True)
class WorkerSpec:
    """How to build a :class:`~.worker.CaseWorker` anywhere (all fields picklable)."""

    checkpoint_path: str
    options: SegmentationOptions
    checkpoint_sha256: str
    plain_metadata: Optional[ModelMetadata] = None

    def build(self, threads: Optional[int] = None) -> CaseWorker:
        return CaseWorker(self.checkpoint_path, self.options, self.checkpoint_sha256, self.plain_metadata, threads)


class Executor(Protocol):
    """Runs jobs and yields their records as they finish; ``name`` and ``workers`` for the start event."""

    name: str
    workers: int

    def run(self, jobs: Sequence[Job]) -> Iterator[dict]: ...


class InProcessExecutor:
    """One worker, in this process: the model opened at the first job."""

    name, workers = "local", 1

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec

    def run(self, jobs: Sequence[Job]) -> Iterator[dict]:
        worker = self.spec.build() if jobs else None
        for case, overwrite in jobs:
            yield worker.run(case, overwrite)


class ProcessExecutor:
    """``workers`` local processes, each with its own model, cases handed out as processes free up."""

    name = "local"

    def __init__(self, spec: WorkerSpec, workers: int, cores: Optional[int] = None) -> None:
        self.spec, self.workers = spec, workers
        self.threads = max(1, (cores or os.cpu_count() or 1) // workers)

    def run(self, jobs: Sequence[Job]) -> Iterator[dict]:
        if not jobs:
            return
        pool = ProcessPoolExecutor(min(self.workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"), initializer=_remember_spec, initargs=(self.spec, self.threads))
        finished = False
        try:
            futures: Dict[Future, CohortCase] = {pool.submit(_run_job, case, overwrite): case for case, overwrite in jobs}
            for future in as_completed(futures):
                yield future.result()  # a worker that cannot open the model raises here: the run stops with its message
            finished = True
        finally:
            pool.shutdown(wait=finished, cancel_futures=True)
            if not finished:  # cancelled or failed: the cases in progress are abandoned (an output appears only when complete)
                for process in list((getattr(pool, "_processes", None) or {}).values()):  # the pool has no public way to stop a running task
                    process.terminate()


# --- inside a worker process ----------------------------------------------------------------------------

_spec: Optional[WorkerSpec] = None
_threads: Optional[int] = None
_worker: Optional[CaseWorker] = None


def _remember_spec(spec: WorkerSpec, threads: int) -> None:
    global _spec, _threads
    _spec, _threads = spec, threads


def _run_job(case: CohortCase, overwrite: bool) -> dict:
    """A job in a worker process: the model opened at its first job, kept for the next."""
    global _worker
    if _worker is None:
        _worker = _spec.build(_threads)
    return _worker.run(case, overwrite)

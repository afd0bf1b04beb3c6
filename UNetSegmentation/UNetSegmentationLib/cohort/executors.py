"""Where a cohort's cases run: in the ``unetseg`` process, or in ``--workers N`` local processes.

Every executor takes the same jobs (a case, and whether its existing output is a leftover of this
cohort to replace) and yields each case's manifest record as it finishes, in any order. Each worker
opens the model once (:class:`~.worker.CaseWorker`); how many workers, their threads and their memory
share come from the cohort's plan (:mod:`.resources`). Processes are started with ``spawn`` (a forked
PyTorch with running threads can deadlock). The Ray executor, with the same interface, is
:mod:`.ray_executor`.

Each worker process is driven over its own pipe, one case at a time, so that the parent always knows
which case a worker holds: a worker that dies (the out-of-memory killer's SIGKILL, a crash in native
code) fails *that* case, with the signal in its record, its lock and partial file are tidied away,
a fresh worker takes the remaining cases, and the run goes on. (A ``ProcessPoolExecutor`` answers a
dead worker with ``BrokenProcessPool`` for every case and cannot say which one killed it.) A worker
dies with its parent: the kernel sends it SIGKILL when the parent goes (``PR_SET_PDEATHSIG`` on Linux),
and a watch thread checks the parent elsewhere; Ctrl-C is the parent's to handle, not the workers'.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Iterator, List, Optional, Protocol, Sequence, Tuple

from UNetSegmentationLib.cohort.discovery import CohortCase
from UNetSegmentationLib.cohort.manifest import FAILED, now_text
from UNetSegmentationLib.cohort.worker import CaseWorker
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.model.metadata import ModelMetadata

#: one job: a case, and whether its existing output may be replaced (a leftover of this cohort's interrupted run)
Job = Tuple[CohortCase, bool]
#: how often a worker checks that its parent is still there (where the kernel cannot tell it)
PARENT_CHECK_S = 1.0
#: seconds a worker may take to stop once its pipe is closed, before it is terminated
STOP_GRACE_S = 5.0


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

    def __init__(self, spec: WorkerSpec, threads: Optional[int] = None) -> None:
        self.spec, self.threads = spec, threads

    def run(self, jobs: Sequence[Job]) -> Iterator[dict]:
        worker = self.spec.build(self.threads) if jobs else None
        for case, overwrite in jobs:
            yield worker.run(case, overwrite)


@dataclass
class _Slot:
    """A worker process, the parent's end of its pipe, and the job it holds (None: idle)."""

    process: multiprocessing.process.BaseProcess
    connection: Connection
    job: Optional[Job] = None


class ProcessExecutor:
    """``workers`` local processes, each with its own model, ``threads`` threads and ``memory_share`` bytes,
    cases handed out one at a time as processes free up."""

    name = "local"

    def __init__(self, spec: WorkerSpec, workers: int, threads: Optional[int] = None, memory_share: Optional[int] = None) -> None:
        self.spec, self.workers, self.threads, self.memory_share = spec, workers, threads, memory_share

    def run(self, jobs: Sequence[Job]) -> Iterator[dict]:
        pending: List[Job] = list(jobs)
        slots: List[_Slot] = []
        context = multiprocessing.get_context("spawn")
        try:
            while pending or any(slot.job for slot in slots):
                self._hand_out(pending, slots, context)
                busy = [slot for slot in slots if slot.job is not None]
                wait([slot.connection for slot in busy] + [slot.process.sentinel for slot in busy])
                for slot in busy:
                    record = _finished(slot)
                    if record is not None:
                        yield record
                    if not slot.process.is_alive() and slot.job is None:
                        slots.remove(slot)
                    elif not slot.process.is_alive():
                        yield _lost(slot)
                        slots.remove(slot)
        finally:
            _stop(slots)

    def _hand_out(self, pending: List[Job], slots: List[_Slot], context) -> None:
        """Give each idle worker the next job, starting workers up to ``workers``."""
        for slot in slots:
            if slot.job is None and pending:
                slot.job = pending.pop(0)
                slot.connection.send(slot.job)
        while pending and len(slots) < self.workers:
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_worker_main, args=(child_end, self.spec, self.threads, self.memory_share, os.getpid()), daemon=True)
            process.start()
            child_end.close()
            slot = _Slot(process, parent_end, pending.pop(0))
            slot.connection.send(slot.job)
            slots.append(slot)


def _finished(slot: _Slot) -> Optional[dict]:
    """The record ``slot``'s worker sent, if it sent one (the slot becomes idle); a worker that could not
    open the model stops the run with its message (every case would fail the same way)."""
    try:
        if not slot.connection.poll():
            return None
        kind, payload = slot.connection.recv()
    except (EOFError, OSError):
        slot.process.join(1.0)
        return None
    if kind == "fatal":
        raise UserError(payload)
    slot.job = None
    return payload


def _lost(slot: _Slot) -> dict:
    """The ``failed`` record of the case a dead worker held; its lock and partial output are removed."""
    from UNetSegmentationLib.io.outputs import remove_leftovers

    slot.process.join(1.0)
    case, _ = slot.job
    slot.job = None
    pid, code = slot.process.pid, slot.process.exitcode
    remove_leftovers([Path(case.output)], pid)
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        cause = f"was killed by {name}" + (" (most likely by the out-of-memory killer: lower --workers or free memory)" if -code == signal.SIGKILL else "")
    else:
        cause = f"stopped with exit status {code}"
    return {
        "case": case.name, "input": str(case.input), "series": case.series_uid, "output": str(case.output), "worker": f"{socket.gethostname()}:{pid}",
        "status": FAILED, "error": f"the worker process segmenting it {cause}; the other cases went on", "warnings": [], "finished": now_text(),
    }


def _stop(slots: List[_Slot]) -> None:
    """Close every pipe (an idle worker then exits), and terminate the workers still busy (their cases are abandoned)."""
    for slot in slots:
        with contextlib.suppress(OSError):
            slot.connection.close()
    for slot in slots:
        slot.process.join(STOP_GRACE_S if slot.job is None else 0.2)
        if slot.process.is_alive():
            slot.process.terminate()
            slot.process.join(STOP_GRACE_S)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join()


# --- inside a worker process ----------------------------------------------------------------------------


def _worker_main(connection: Connection, spec: WorkerSpec, threads: Optional[int], memory_share: Optional[int], parent_pid: int) -> None:
    """A worker process: its model opened once, then the jobs its pipe brings, until the pipe closes."""
    from UNetSegmentationLib.io.memory_budget import limit_to_share

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops the run and its workers
    die_with_parent(parent_pid)
    limit_to_share(memory_share)
    try:
        worker = spec.build(threads)
    except UserError as error:
        connection.send(("fatal", str(error)))
        return
    except Exception as error:  # noqa: BLE001 - the parent reports it as one message
        connection.send(("fatal", f"a cohort worker could not open the model: {type(error).__name__}: {error}"))
        return
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        connection.send(("record", worker.run(*job)))


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` ends: the kernel's parent-death signal (Linux), and a watch
    thread that checks the parent every :data:`PARENT_CHECK_S` (everywhere else, and as a fallback)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent went before the signal was asked for
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            threading.Event().wait(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="unetseg-parent-watch", daemon=True).start()

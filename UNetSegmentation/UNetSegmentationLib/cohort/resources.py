"""How many cases a cohort runs at once, with how many threads and how much memory each: planned once, here.

Why one place: ``--workers N`` used to start N processes whatever the machine (8 workers on 2 cores
took 3.4 GB and ran 4.3× slower than one), each worker took ``os.cpu_count() / N`` threads while the
execution plan counts the CPUs this process may use (affinity, cgroup quota), and each worker's memory
check saw the whole machine as if it ran alone (issues 22 and 23). Now:

- the CPUs are the execution plan's usable CPUs
  (:func:`~UNetSegmentationLib.backends.plan.usable_cpus`), never re-derived here;
- workers are capped by those CPUs and by the memory available
  (:func:`~UNetSegmentationLib.io.memory_budget.available_memory`, cgroup limits of this process's own
  group included), at :data:`WORKER_FLOOR_BYTES` each; a lowered ``--workers`` is said in a warning;
- each worker gets ``cpus // workers`` threads (``--threads`` wins) and an equal share of the memory,
  which its own memory check uses instead of the machine's (:func:`~UNetSegmentationLib.io.memory_budget.limit_to_share`).

Ray actors are placed by Ray on the cluster's resources; a *local* Ray instance gets the same CPU split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional

from UNetSegmentationLib.io.memory_budget import ENGINE_BYTES, available_memory
from UNetSegmentationLib.io.payload import format_bytes

#: the least memory a worker needs: the engine and the model (measured: 8 workers of the bundled model
#: on small CT crops took 3.4 GB, 0.43 GB each) plus room for one ordinary case
WORKER_FLOOR_BYTES = ENGINE_BYTES + 256 * 1024 * 1024


@dataclass(frozen=True)
class CohortPlan:
    """``workers`` at once, ``threads`` each (None: the user's ``--threads``), ``memory_share`` bytes each
    (None: unknown, not limited); ``notes``: what was lowered and why, for warnings."""

    workers: int
    threads: Optional[int]
    memory_share: Optional[int]
    notes: List[str] = field(default_factory=list)


def _usable_cpus() -> int:
    from UNetSegmentationLib.backends.plan import usable_cpus

    return usable_cpus()


def plan_cohort(
    requested: Optional[int],
    cases: int,
    user_threads: Optional[int] = None,
    cpus: Callable[[], int] = _usable_cpus,
    memory: Callable[[], Optional[int]] = available_memory,
) -> CohortPlan:
    """The plan for ``requested`` workers (None: 1) over ``cases`` cases; ``cpus``/``memory`` say what
    this process may use (injectable for tests)."""
    wanted = max(1, requested or 1)
    usable, available = max(1, int(cpus())), memory()
    workers, notes = wanted, []
    if workers > usable:
        workers = usable
        notes.append(f"--workers {wanted} lowered to {usable}: this process may use {usable} CPU(s) (affinity and cgroup quota); more workers would only compete for them")
    if available is not None and workers > 1 and workers * WORKER_FLOOR_BYTES > available:
        fitting = max(1, available // WORKER_FLOOR_BYTES)
        notes.append(f"--workers lowered from {workers} to {fitting}: {format_bytes(available)} of memory available, each worker needs at least {format_bytes(WORKER_FLOOR_BYTES)}")
        workers = fitting
    workers = max(1, min(workers, max(1, cases)))
    threads = None if user_threads is not None else max(1, usable // workers)
    share = available // workers if available is not None and workers > 1 else None
    return CohortPlan(workers, threads, share, notes)

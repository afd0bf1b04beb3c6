"""``--executor ray``: the cases of a cohort on a Ray cluster, one model load per worker (a Ray actor).

Each actor is a :class:`~.worker.CaseWorker` holding ``--ray-cpus-per-worker`` CPUs (its PyTorch
threads) and ``--ray-gpus-per-worker`` GPUs (Ray sets ``CUDA_VISIBLE_DEVICES``, so ``--device auto``
finds its GPU); ``--workers`` actors take cases as they free up. Outputs are written by the actors
into the output folder, which must be shared by every node (the same path everywhere); the records
come back to this process, which alone writes the manifest: the same manifest and resume semantics
as a local run.

``--ray-address ADDRESS`` joins a running cluster (``ray start --head`` on one machine, ``ray start
--address HEAD:6379`` on the others; ``auto`` finds a local one); without it a local Ray instance is
started for the run, bounded to the workers' CPUs, on the loopback interface, without a dashboard or
usage statistics, and shut down at the end. Ray is the ``[cluster]`` extra, imported only here.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from UNetSegmentationLib.cohort.discovery import CohortCase
from UNetSegmentationLib.cohort.executors import Job, WorkerSpec
from UNetSegmentationLib.cohort.manifest import FAILED, now_text
from UNetSegmentationLib.cohort.worker import CaseWorker
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.protocol.child_environment import with_engine_on_path

INSTALL_HINT = 'pip install "UNetSegmentationLib[cluster]" (Ray)'
#: the object store of a local instance: records are small, outputs go through the file system
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024


class RayExecutor:
    """``workers`` Ray actors on the cluster at ``address`` (None: a local instance for this run)."""

    name = "ray"

    def __init__(self, spec: WorkerSpec, workers: int, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, address: Optional[str] = None) -> None:
        self.spec, self.workers, self.address = spec, workers, address
        self.cpus_per_worker, self.gpus_per_worker = cpus_per_worker, gpus_per_worker

    def run(self, jobs: Sequence[Job]) -> Iterator[dict]:
        if not jobs:
            return
        ray = _ray_module()
        started_here = self._connect(ray)
        actors: List = []
        try:
            actor_class = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker)(CaseWorker)
            threads = max(1, math.floor(self.cpus_per_worker))
            spec = self.spec
            actors = [actor_class.remote(spec.checkpoint_path, spec.options, spec.checkpoint_sha256, spec.plain_metadata, threads) for _ in range(min(self.workers, len(jobs)))]
            yield from _dispatch(ray, actors, list(jobs))
        finally:
            for actor in actors:
                ray.kill(actor)
            if started_here:
                ray.shutdown()

    def _connect(self, ray) -> bool:
        """Join the cluster (or start a local instance); True when this run started it (and shuts it down)."""
        if ray.is_initialized():
            return False
        if self.address:
            try:
                ray.init(address=self.address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise UserError(f"cannot join the Ray cluster at {self.address}: {str(error).strip().splitlines()[0][:200]}; start it with `ray start --head`") from None
            return True
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves this machine
        _share_package_path()
        ray.init(
            num_cpus=max(1, math.ceil(self.workers * self.cpus_per_worker)),
            num_gpus=math.ceil(self.workers * self.gpus_per_worker),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            log_to_driver=False,  # the workers' prints stay off this process's stdout (JSON lines with --progress json)
        )
        return True


def _dispatch(ray, actors: List, queue: List[Job]) -> Iterator[dict]:
    """Hand each idle actor the next job; yield each record as it comes back. A dead actor fails its case and leaves the pool."""
    idle: List = list(actors)
    pending: Dict[object, Tuple[object, CohortCase]] = {}  # the running task → its actor and case
    while queue or pending:
        while idle and queue:
            actor = idle.pop()
            case, overwrite = queue.pop(0)
            pending[actor.run.remote(case, overwrite)] = (actor, case)
        if not pending:
            raise UserError(f"every Ray worker died; {len(queue)} case(s) were not run (see the Ray logs)")
        ready, _ = ray.wait(list(pending), num_returns=1)
        actor, case = pending.pop(ready[0])
        try:
            record = ray.get(ready[0])
        except ray.exceptions.RayActorError as error:  # the worker died (out of memory, its node lost) or could not open the model
            yield {"case": case.name, "input": str(case.input), "output": str(case.output), "status": FAILED, "error": f"the Ray worker died: {_first_line(error)}", "finished": now_text()}
            continue
        idle.append(actor)
        yield record


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def _share_package_path() -> None:
    """A local instance's workers import this engine as this process does, installed or not (they inherit the environment)."""
    os.environ["PYTHONPATH"] = with_engine_on_path(os.environ.get("PYTHONPATH"))  # the one rule for a child's path (protocol/child_environment)


def _ray_module():
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray: {INSTALL_HINT}") from None
    return ray

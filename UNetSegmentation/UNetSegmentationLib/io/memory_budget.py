"""Will a run fit in memory? Estimated from the input's header, checked before any voxel is allocated.

A volume's header says how much it holds; a file that claims more than the machine can hold must be
refused with both numbers, not read until the kernel kills the process (without a message, leaving
its lock behind). The estimate follows what ``unetseg predict`` really allocates, phase by phase
(measured: ``docs/hardening.md``), and the peak phase is compared with the memory the process may
still use: ``MemAvailable`` of ``/proc/meminfo``, lowered by a cgroup memory limit (v1 or v2; what
the cgroup holds in reclaimable file cache counts as free) and by an address-space limit
(``ulimit -v``). Where the system says nothing (not Linux), nothing is refused.

The cgroup is this process's own (``/proc/self/cgroup`` names it), and every group above it up to the
hierarchy's root: a job limit on an HPC cluster sits on the job's group, and the root of a cgroup-v1
hierarchy shows no limit at all (issue 23). A cohort worker runs beside others: its share of the
memory (:func:`limit_to_share`, given by :mod:`~UNetSegmentationLib.cohort.resources`) lowers what it
sees, so that N workers do not each plan with the whole machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.payload import format_bytes

try:  # POSIX only: elsewhere there is no address-space limit to respect
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

#: what the engine needs besides the voxels: PyTorch or ONNX Runtime, the network, the interpreter
#: (measured: a run on a 64×64×3 volume peaks at 0.53 GB, 0.13 GB of it before the check)
ENGINE_BYTES = 512 * 1024 * 1024
#: extra bytes per label voxel of --largest-component (a label copy, masks, SimpleITK's 32-bit component
#: images; measured 12.6 bytes per voxel on 512×512×120)
LARGEST_COMPONENT_BYTES_PER_VOXEL = 13
#: batches alive at once: the one the network computes, the one prefetched, the one in the queue
BATCHES_IN_FLIGHT = 3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes each phase of a run holds at its peak; the run needs the largest."""

    phases: Dict[str, Dict[str, int]] = field(default_factory=dict)  # phase → what it holds → bytes

    @property
    def peak(self) -> Tuple[str, int]:
        """``(phase, bytes)`` of the phase that needs the most."""
        name = max(self.phases, key=lambda phase: sum(self.phases[phase].values()))
        return name, sum(self.phases[name].values())

    def describe(self) -> str:
        """``about 25.3 GB (at its peak, while writing: input 16.8 GB, labels 8.4 GB, ...)``."""
        name, total = self.peak
        parts = ", ".join(f"{what} {format_bytes(size)}" for what, size in self.phases[name].items() if size)
        return f"about {format_bytes(total)} of memory (at its peak, {name}: {parts})"


def estimate_prediction_memory(
    voxels: int,
    input_bytes_per_voxel: int,
    reader_copies: int,
    label_bytes_per_voxel: int,
    batch_bytes: int,
    volume_statistics: bool = False,
    confidence: bool = False,
    largest_component: bool = False,
) -> MemoryEstimate:
    """What ``unetseg predict`` holds in each phase, for a volume of ``voxels`` voxels.

    ``reader_copies``: buffers the reader holds at once (ITK's NIfTI reader copies the voxels once: 2;
    others 1). ``batch_bytes``: one float32 network input batch. ``volume_statistics``: the normalisation
    takes percentiles of the whole volume (MR), which copies it once. ``confidence``: a float32 map is
    written too (``--probabilities``). ``largest_component``: ``--largest-component`` runs.
    """
    engine = ENGINE_BYTES
    volume = voxels * input_bytes_per_voxel
    labels = voxels * label_bytes_per_voxel
    confidence_map = voxels * 4 if confidence else 0
    held = {"input": volume, "labels": labels, "confidence map": confidence_map, "the engine": engine}
    phases = {
        "while reading": {"input": volume * reader_copies, "the engine": engine},
        "while normalising": {"input": volume * (2 if volume_statistics else 1), "the engine": engine},
        "while predicting": {**held, "batches": BATCHES_IN_FLIGHT * batch_bytes},
        "while writing": {**held, "copy being written": max(labels, confidence_map)},
    }
    if largest_component:
        phases["while keeping the largest components"] = {**held, "component maps": voxels * LARGEST_COMPONENT_BYTES_PER_VOXEL}
    return MemoryEstimate(phases)


def check_memory(estimate: MemoryEstimate, available: Optional[int], source: str) -> None:
    """Refuse a run whose peak phase needs more than ``available`` bytes (None: unknown, nothing refused)."""
    if available is None:
        return
    _, needed = estimate.peak
    if needed > available:
        raise UserError(
            f"{source} needs {estimate.describe()} to segment, but only {format_bytes(available)} is available; "
            "crop or resample it to fewer voxels (Slicer: Crop Volume), or close other programs"
        )


# --- what the machine has ------------------------------------------------------------------------------


#: the bytes this process may use at most as one of several cohort workers (None: not one of them)
_share: Optional[int] = None


def limit_to_share(share: Optional[int]) -> None:
    """From now on this process sees at most ``share`` bytes (a cohort worker's part; None: no share)."""
    global _share
    _share = share


def available_memory(root: Path = Path("/")) -> Optional[int]:
    """Bytes this process may still allocate: the least of ``MemAvailable``, the room of its cgroups
    (its own and those above), the address-space limit less what is mapped, and its share as a cohort
    worker; None where the system does not say."""
    limits = [_meminfo_available(root), _cgroup_room(root), _address_space_room(root), _share]
    known = [value for value in limits if value is not None]
    return max(min(known), 0) if known else None


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def _meminfo_available(root: Path) -> Optional[int]:
    text = _read(root / "proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else None
    return None


def _cgroup_room(root: Path) -> Optional[int]:
    """The least room (limit less usage, reclaimable file cache counted as free) of this process's memory
    cgroup and of every group above it; None where no group has a limit."""
    rooms: List[int] = []
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        hierarchy, controllers, relative = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":  # cgroup v2: one unified hierarchy
            mount, names = root / "sys/fs/cgroup", ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # cgroup v1: the memory controller's own hierarchy
            mount, names = root / "sys/fs/cgroup/memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        for folder in own_group_and_above(mount, relative.strip()):
            room = _room_in(folder, *names)
            if room is not None:
                rooms.append(room)
    return min(rooms) if rooms else None


def own_group_and_above(mount: Path, relative: str) -> List[Path]:
    """The one walk of a cgroup path (memory here, CPU quota in ``backends/device.py``): the folders of this process's group ``relative`` under ``mount`` and of its parents up to the mount.
    In a container the mount often shows the process's own group at its root while ``relative`` names
    the host's path: then the path does not exist and the mount's root is the own group."""
    parts = [part for part in relative.split("/") if part and part not in (".", "..")]
    folders = [mount.joinpath(*parts[:depth]) for depth in range(len(parts), 0, -1)]
    return [folder for folder in folders if folder.is_dir()] + [mount]


def _room_in(folder: Path, limit_name: str, usage_name: str, cache_name: str) -> Optional[int]:
    limit, usage = (_read(folder / name) for name in (limit_name, usage_name))
    if limit is None or usage is None or not limit.strip().isdigit() or not usage.strip().isdigit():
        return None  # "max": no limit
    if int(limit) >= 1 << 60:  # cgroup v1's "no limit" is a page-rounded 2**63
        return None
    cache = 0
    for line in (_read(folder / "memory.stat") or "").splitlines():
        key, _, value = line.partition(" ")
        if key == cache_name and value.strip().isdigit():
            cache = int(value)
    return int(limit) - int(usage) + cache


def _address_space_room(root: Path, limit: Optional[Callable[[], int]] = None) -> Optional[int]:
    """``ulimit -v`` less the address space this process has mapped already."""
    if limit is None and resource is None:
        return None
    soft = limit() if limit else resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft < 0 or (resource is not None and soft == resource.RLIM_INFINITY):
        return None
    for line in (_read(root / "proc/self/status") or "").splitlines():
        if line.startswith("VmSize:") and line.split()[1].isdigit():
            return soft - int(line.split()[1]) * 1024
    return soft


def machine_memory_note() -> str:
    """For messages: how much memory this process may use, in words."""
    available = available_memory()
    return f"{format_bytes(available)} available" if available is not None else "available memory unknown"

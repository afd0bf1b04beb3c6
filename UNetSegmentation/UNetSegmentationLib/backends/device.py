"""What the hardware can do, asked through one seam, and which device a ``--device`` value names.

Decides: which device ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) means here, and whether
that device exists (:func:`device_for`). Everything else the plan decides
(:mod:`~UNetSegmentationLib.backends.plan`) from the answers of a :class:`Capabilities` object:

- :class:`Capabilities`: the questions the decisions ask (CUDA present, how many GPUs, native bf16
  on a GPU, its free and total memory, native bf16 on the CPU, ONNX Runtime installed, and optionally
  how many CPUs the process may use). Tests pass a
  fake one; nothing else in the decisions looks at the machine.
- :class:`SystemCapabilities` (:data:`SYSTEM`): the real answers. PyTorch is imported only where the
  answer can be a GPU (:func:`cuda_is_impossible` says when it cannot, without importing it), so a
  CPU-only run on a cached ONNX export never imports PyTorch (~2 s of start-up saved).
- :class:`PlainDevice`: ``torch.device`` as far as the plan needs it (``type``, ``index``, ``str``),
  without importing PyTorch; :data:`CPU` is the CPU.

No numpy or torch import at module level: the Slicer panel imports the options, which import the plan.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Tuple

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.memory_budget import own_group_and_above


@dataclass(frozen=True)
class PlainDevice:
    """A device as the plan names it: ``type`` ``"cpu"`` or ``"cuda"``, ``index`` None or the GPU's
    number; ``str()`` is what ``torch.device`` accepts (``cpu``, ``cuda``, ``cuda:1``)."""

    type: str
    index: Optional[int] = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    __repr__ = __str__


#: the CPU, without importing PyTorch
CPU = PlainDevice("cpu")


class Capabilities(Protocol):
    """The hardware questions the execution plan asks, and nothing more."""

    def cuda_available(self) -> bool:
        """A CUDA GPU can be used by this PyTorch build."""

    def cuda_device_count(self) -> int:
        """How many CUDA GPUs are visible (0 without CUDA)."""

    def cuda_bf16_supported(self, index: int) -> bool:
        """GPU ``index`` computes bfloat16 natively (compute capability 8.0 or newer; ROCm)."""

    def cuda_memory(self, index: int) -> Tuple[int, int]:
        """``(free, total)`` bytes of GPU ``index``."""

    def cpu_native_bf16(self) -> bool:
        """The CPU computes bfloat16 in hardware (AVX512-BF16 or AMX)."""

    def onnx_runtime_installed(self) -> bool:
        """ONNX Runtime and ONNX are importable."""

    # Optional (a Capabilities without it sets no cap on --threads): how many CPUs this process may use.
    # def usable_cpus(self) -> int: ...


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


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def usable_cpu_count(root: Path = Path("/")) -> int:
    """CPUs this process may use: its affinity where the OS tells it, fewer where a CPU quota of its
    own cgroup or of any group above it allows less (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``;
    a container's ``--cpus``, a Slurm or PBS job's share). ``root``: where ``/proc`` and ``/sys`` are
    (a fake tree in tests). Asked only through the plan (:func:`~UNetSegmentationLib.backends.plan.usable_cpus`)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    return max(1, min(count, quota) if quota else count)


def cgroup_cpu_quota(root: Path = Path("/")) -> Optional[int]:
    """CPUs the tightest quota on this process's cgroup path allows (rounded up); None without one.

    The process's own group is read from ``/proc/self/cgroup`` (the root of the hierarchy is not the
    process's group on a cluster node), then every group above it: a limit set on a parent binds too.
    """
    try:
        lines = (root / "proc/self/cgroup").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    quotas = []
    for line in lines:
        hierarchy, controllers, relative = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":  # cgroup v2
            quotas += [_v2_quota(folder) for folder in own_group_and_above(root / "sys/fs/cgroup", relative)]
        elif "cpu" in controllers.split(","):  # cgroup v1: mounted as cpu,cpuacct (or cpu) with the groups inside
            for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
                quotas += [_v1_quota(folder) for folder in own_group_and_above(root / "sys/fs/cgroup" / mount, relative)]
    if not lines:  # no /proc/self/cgroup: the mounted root is all there is to ask
        quotas.append(_v2_quota(root / "sys/fs/cgroup"))
    found = [quota for quota in quotas if quota]
    return min(found) if found else None


def _v2_quota(folder: Path) -> Optional[int]:
    """``cpu.max`` (``quota period`` or ``max period``) as whole CPUs, rounded up."""
    try:
        quota, period = (folder / "cpu.max").read_text(encoding="ascii").split()[:2]
        return None if quota == "max" else max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> Optional[int]:
    """``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` as whole CPUs, rounded up (-1: no quota)."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period = int((folder / "cpu.cfs_period_us").read_text(encoding="ascii"))
        return None if quota <= 0 or period <= 0 else max(1, -(-quota // period))
    except (OSError, ValueError):
        return None


class SystemCapabilities:
    """:class:`Capabilities` of this machine. PyTorch is imported only by the CUDA questions, and only
    where :func:`cuda_is_impossible` cannot rule a GPU out."""

    def cuda_available(self) -> bool:
        if cuda_is_impossible():
            return False
        import torch  # only here can the answer be a GPU

        return bool(torch.cuda.is_available())

    def cuda_device_count(self) -> int:
        if not self.cuda_available():
            return 0
        import torch

        return int(torch.cuda.device_count())

    def cuda_bf16_supported(self, index: int) -> bool:
        import torch

        if torch.version.hip:  # every ROCm GPU PyTorch supports computes bf16
            return True
        # native only: torch.cuda.is_bf16_supported() also says yes where bf16 is emulated (pre-Ampere), far slower than fp16
        return torch.cuda.get_device_capability(index)[0] >= 8

    def cuda_memory(self, index: int) -> Tuple[int, int]:
        import torch

        free, total = torch.cuda.mem_get_info(index)
        return int(free), int(total)

    def cpu_native_bf16(self) -> bool:
        """Without native bf16 oneDNN emulates it and a bf16 convolution runs far slower than float32
        (100× slower measured on an AVX2-only EPYC). Where ``/proc/cpuinfo`` lists the CPU's flags and
        they have neither AVX512-BF16 nor AMX, PyTorch is not asked (nor imported)."""
        flags = _cpu_flags()
        if flags and not flags & {"avx512_bf16", "amx_bf16"}:
            return False
        try:
            import torch

            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError, ImportError):
            return False

    def usable_cpus(self) -> int:
        return usable_cpu_count()

    def onnx_runtime_installed(self) -> bool:
        return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


#: the real machine: what :func:`~UNetSegmentationLib.backends.plan.plan_execution` asks unless told otherwise
SYSTEM: Capabilities = SystemCapabilities()


def device_for(spec: Optional[str], capabilities: Capabilities = SYSTEM) -> PlainDevice:
    """The device ``--device spec`` names: ``auto`` (the first CUDA GPU when there is one, else the
    CPU), ``cpu``, ``cuda`` or ``cuda:N``. A GPU that is not there is a :class:`UserError`."""
    spec = (spec or "auto").lower()
    if spec == "cpu":
        return CPU
    if spec == "auto":
        return PlainDevice("cuda") if capabilities.cuda_available() else CPU
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not capabilities.cuda_available():
            raise UserError(f"--device {spec}: no CUDA GPU is available to this PyTorch build; use --device cpu or auto")
        index = int(spec[5:]) if ":" in spec else None
        count = capabilities.cuda_device_count()
        if index is not None and index >= count:
            raise UserError(f"--device {spec}: only {count} CUDA device(s) are present")
        return PlainDevice("cuda", index)
    raise UserError(f"--device must be auto, cpu, cuda or cuda:N; got {spec!r}")


def resolve_device(spec: Optional[str], plain_cpu: bool = False, capabilities: Capabilities = SYSTEM):
    """:func:`device_for` as a ``torch.device`` (for training and evaluation, which run PyTorch
    anyway); ``plain_cpu``: the CPU as :data:`CPU`, so that saying "CPU" imports no PyTorch."""
    device = device_for(spec, capabilities)
    if plain_cpu and device.type == "cpu":
        return CPU
    import torch

    return torch.device(str(device))


def cpu_has_native_bf16() -> bool:
    """This machine's CPU computes bfloat16 in hardware (:meth:`SystemCapabilities.cpu_native_bf16`)."""
    return SYSTEM.cpu_native_bf16()


def onnx_runtime_available() -> bool:
    """ONNX Runtime and ONNX are importable here (checked without importing them)."""
    return SYSTEM.onnx_runtime_installed()

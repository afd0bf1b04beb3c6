"""The device combo box of the Slicer panel: what a short child process found (:class:`DeviceProbe`),
so the GUI process never imports torch just to fill a combo box.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

DEVICE_AUTO, DEVICE_CPU, DEVICE_GPU = "auto", "cpu", "cuda"
#: the values the device combo box (and the Slicer parameter node) can hold
DEVICE_VALUES = (DEVICE_AUTO, DEVICE_CPU, DEVICE_GPU)


@dataclass(frozen=True)
class DeviceChoice:
    """One entry of the device combo box: ``value`` goes to ``--device``."""

    value: str
    label: str
    enabled: bool = True


@dataclass
class DeviceInfo:
    """What a short child process found: the torch version and the CUDA GPUs it can use."""

    torch_version: Optional[str] = None
    cuda: bool = False
    gpu_names: List[str] = field(default_factory=list)
    error: Optional[str] = None


#: run in a child by :class:`DeviceProbe` (``python -c PROBE_CODE``): prints one JSON line
PROBE_CODE = (
    "import json\n"
    "try:\n"
    "    import torch\n"
    "except Exception as error:\n"
    "    print(json.dumps({'torch_version': None, 'error': type(error).__name__ + ': ' + str(error)}))\n"
    "else:\n"
    "    cuda = bool(torch.cuda.is_available())\n"
    "    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []\n"
    "    print(json.dumps({'torch_version': torch.__version__, 'cuda': cuda, 'gpu_names': names}))\n"
)


def parse_probe_output(text: str) -> DeviceInfo:
    """The probe's JSON line (the last line that parses), or a DeviceInfo with ``error``."""
    for line in reversed((text or "").strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return DeviceInfo(
                torch_version=data.get("torch_version"),
                cuda=bool(data.get("cuda", False)),
                gpu_names=[str(n) for n in data.get("gpu_names", [])],
                error=data.get("error"),
            )
    return DeviceInfo(error="the device check printed nothing readable")


def device_choices(info: Optional[DeviceInfo]) -> List[DeviceChoice]:
    """Entries of the device combo box, saying what is available (``info`` None: not checked yet)."""
    if info is None:
        return [
            DeviceChoice(DEVICE_AUTO, "Automatic (GPU if available)"),
            DeviceChoice(DEVICE_CPU, "CPU"),
            DeviceChoice(DEVICE_GPU, "GPU (CUDA) \u2014 checking\u2026"),
        ]
    if info.torch_version is None:
        return [
            DeviceChoice(DEVICE_AUTO, "Automatic (PyTorch not installed yet)"),
            DeviceChoice(DEVICE_CPU, "CPU"),
            DeviceChoice(DEVICE_GPU, "GPU (CUDA) \u2014 unknown until PyTorch is installed"),
        ]
    if info.cuda and info.gpu_names:
        gpu = info.gpu_names[0] + (f" (+{len(info.gpu_names) - 1} more)" if len(info.gpu_names) > 1 else "")
        return [
            DeviceChoice(DEVICE_AUTO, f"Automatic (GPU: {gpu})"),
            DeviceChoice(DEVICE_CPU, "CPU"),
            DeviceChoice(DEVICE_GPU, f"GPU: {gpu}"),
        ]
    return [
        DeviceChoice(DEVICE_AUTO, "Automatic (CPU: no CUDA GPU found)"),
        DeviceChoice(DEVICE_CPU, "CPU"),
        DeviceChoice(DEVICE_GPU, "GPU (CUDA) \u2014 not available", enabled=False),
    ]


class DeviceProbe:
    """``python -c PROBE_CODE`` in the background; :meth:`poll` never blocks."""

    def __init__(self, python: Optional[str] = None, timeout_s: float = 120.0) -> None:
        self.python = python or sys.executable
        self.timeout_s = timeout_s
        self.result: Optional[DeviceInfo] = None
        self._process: Optional[subprocess.Popen] = None
        self._started = 0.0

    def start(self) -> "DeviceProbe":
        try:
            self._process = subprocess.Popen(
                [self.python, "-c", PROBE_CODE],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError as error:
            self.result = DeviceInfo(error=f"cannot run {self.python}: {error}")
        self._started = time.monotonic()
        return self

    def poll(self) -> Optional[DeviceInfo]:
        """The result once the child has finished (or timed out), else None."""
        if self.result is not None or self._process is None:
            return self.result
        if self._process.poll() is None:
            if time.monotonic() - self._started < self.timeout_s:
                return None
            self._process.kill()
            self._process.wait()
            self.result = DeviceInfo(error=f"the device check took longer than {self.timeout_s:g} s")
            return self.result
        output = self._process.stdout.read() if self._process.stdout else ""
        if self._process.stdout:
            self._process.stdout.close()
        self.result = parse_probe_output(output)
        return self.result

    def wait(self, timeout_s: Optional[float] = None) -> DeviceInfo:
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.poll() or DeviceInfo(error="the device check did not finish")

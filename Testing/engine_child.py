"""Running ``unetseg`` in a child process, as a shell would: under operating-system limits (address space,
file size), within a time limit, with the child's peak memory measured.

A refused memory bomb must stay small (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a probe
process whose only child is the engine); a full disk is an operating-system limit on writes
(``RLIMIT_FSIZE``: every write past it fails, as on a full disk, without needing root to mount one);
an input that could block must fail the test by timing out, not hang the suite (the probe leads its
own process group, which is killed whole on a time-out).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import UNetSegmentationLib

#: the folder holding the engine package the tests import (the children import the same one)
PACKAGE_PARENT = Path(UNetSegmentationLib.__file__).resolve().parent.parent

_PROBE = """
import json, resource, signal, subprocess, sys
limits = json.loads(sys.argv[1])

def limited():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE then fails with EFBIG, as on a full disk
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))

child = subprocess.run([sys.executable, "-m", "UNetSegmentationLib", *sys.argv[2:]], capture_output=True, text=True, preexec_fn=limited)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
print(json.dumps({"code": child.returncode, "stdout": child.stdout, "stderr": child.stderr, "peak_bytes": peak}))
"""


@dataclass
class ChildRun:
    """What a ``unetseg`` child did: exit code, output, and its peak resident memory in bytes."""

    code: int
    stdout: str
    stderr: str
    peak_bytes: int

    @property
    def events(self) -> list:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip().startswith("{")]

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 1e6


def run_unetseg(*args, address_space: Optional[int] = None, file_size: Optional[int] = None, timeout: float = 180, env: Optional[Dict[str, str]] = None) -> ChildRun:
    """``python -m UNetSegmentationLib ARGS`` in a child limited to ``address_space`` bytes of memory
    (``RLIMIT_AS``) and files of ``file_size`` bytes (``RLIMIT_FSIZE``); a time-out fails the test."""
    limits = {name: value for name, value in (("RLIMIT_AS", address_space), ("RLIMIT_FSIZE", file_size)) if value is not None}
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT)] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else []))
    probe = subprocess.Popen(
        [sys.executable, "-c", _PROBE, json.dumps(limits), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,  # its own process group: a time-out kills the engine child too
    )
    try:
        out, err = probe.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(probe.pid, signal.SIGKILL)
        probe.communicate()
        raise AssertionError(f"unetseg {' '.join(map(str, args))} did not finish within {timeout} s (it hangs)") from None
    assert probe.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    return ChildRun(result["code"], result["stdout"], result["stderr"], result["peak_bytes"])

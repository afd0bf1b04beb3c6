"""bench/gpu_check.py, the prepared GPU check (issue 18), stays runnable: without CUDA it says so in
one line; ``--cpu-smoke`` runs every section on the CPU at tiny sizes and prints every table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def run_check(*arguments: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the check would measure it")
def test_without_cuda_the_check_says_so_in_one_line_and_succeeds():
    finished = run_check(timeout=120)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]


@pytest.mark.slow
def test_the_cpu_smoke_run_goes_through_every_section(tmp_path):
    numbers = tmp_path / "check.json"
    finished = run_check("--cpu-smoke", "--json", str(numbers), timeout=300)
    assert finished.returncode == 0, finished.stderr
    report = finished.stdout
    for heading in ("### Architectures at 64²", "### UNet++ (paper features) pruned", "### End to end", "### Out of memory, provoked",
                    "### Training", "### Time per section"):
        assert heading in report, heading
    assert "failed" not in report, report
    found = json.loads(numbers.read_text())
    assert all(row["bf16"]["best_batch"] is not None for row in found["architectures"].values())  # every architecture measured
    assert set(found["depths"]) == {"L1", "L2", "L3", "L4"}
    runs = found["end to end"]["runs"]
    assert len(runs) == 2 and runs[0]["precision"] == "fp32" and all(run["timings"]["total_s"] > 0 for run in runs)  # fp32, then auto
    assert found["end to end"]["fresh process"]["wall_s"] > 0
    assert found["end to end"]["agreement"]["fp16"]["agree"] > 0.9
    halving, to_cpu = found["out of memory"]["halving"], found["out of memory"]["to_cpu"]
    assert halving["out"] == halving["slices"] and halving["ended_on"] == "cuda" and len(halving["warnings"]) == 2  # 8 → 4 → 2
    assert to_cpu["ended_on"] == "cpu" and to_cpu["warnings"][-1].endswith("continuing on the CPU (slower)")
    assert to_cpu["max_difference_from_cpu_fp32"] < 1e-4
    assert all(run["steps"] >= 1 for run in found["training"].values())

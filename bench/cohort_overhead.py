"""Per-case overhead of ``--workers 2`` and of ``--executor ray`` against one process, on a small cohort.

The cohort: ``--cases`` copies of the slicerio chest CT (128x128x34), segmented by the bundled model, each run
a fresh ``unetseg predict --output-dir`` process (what a user runs: start-up, model loads, the cases). The
three ways are run in turn, ``--rounds`` times (interleaved, so that a noisy neighbour hits them all alike);
the table gives medians of the wall time, the time per case, and the difference per case to one process.

Usage: ``python bench/cohort_overhead.py [--cases 6] [--rounds 3]`` (from the repository root).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Resources" / "Tools"))
from render_qc_report import MODEL, cohort_volumes  # noqa: E402  (the same cohort generator as the README's QC picture)

WAYS = {
    "one process": [],
    "--workers 2": ["--workers", "2"],
    "--executor ray --workers 2": ["--executor", "ray", "--workers", "2", "--ray-cpus-per-worker", "1"],
}


def run_once(inputs: Path, output: Path, extra) -> float:
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "UNetSegmentationLib", "predict", "--checkpoint", str(MODEL), "--progress", "none", "--output-dir", str(output), *extra, str(inputs)]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="unetseg-cohort-bench-"))
    inputs = work / "cohort"
    cohort_volumes(inputs, copies=args.cases)
    times = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way, extra in WAYS.items():
            times[way].append(run_once(inputs, work / "out", extra))
    base = statistics.median(times["one process"])
    print(f"{args.cases} cases (slicerio chest CT 128x128x34, bundled model), medians of {args.rounds} interleaved runs, each a fresh process\n")
    print("| way | wall s | s per case | per case vs one process |")
    print("|---|---:|---:|---:|")
    for way, values in times.items():
        median = statistics.median(values)
        print(f"| {way} | {median:.1f} | {median / args.cases:.2f} | {(median - base) / args.cases:+.2f} s |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which CPU path is fastest on this machine: the measurement behind ``--precision auto`` on the CPU.

Runs the bundled model (or ``--checkpoint``) at its recommended depth through the predictors ``predict``
builds (backends/factory.py) for ONNX Runtime fp32, PyTorch fp32 and PyTorch bf16, on the same random
batch of ``--size``² slices, interleaved ``--rounds`` times, and prints the median ms per slice and what
``plan_execution`` chooses here. On CPUs with native bf16 (AVX512-BF16/AMX) the plan picks PyTorch bf16;
elsewhere ONNX Runtime fp32 (emulated bf16 is far slower).

    python bench/backend_choice.py [--size 512] [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UNetSegmentation"))

from UNetSegmentationLib.backends.device import SYSTEM  # noqa: E402
from UNetSegmentationLib.backends.factory import create_predictor  # noqa: E402
from UNetSegmentationLib.backends.plan import ExecutionRequest, plan_execution  # noqa: E402
from UNetSegmentationLib.model.bundled import bundled_model_path  # noqa: E402
from UNetSegmentationLib.model.checkpoint import load_checkpoint  # noqa: E402

VARIANTS = {"ONNX Runtime fp32": ("onnx", "fp32"), "PyTorch fp32": ("torch", "fp32"), "PyTorch bf16": ("torch", "bf16")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=bundled_model_path())
    parser.add_argument("--size", type=int, default=512, help="slice side in pixels (default 512)")
    parser.add_argument("--batch", type=int, default=4, help="slices per call (default 4, predict's default batch)")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    depth = checkpoint.metadata.recommended_depth
    predictors = {}
    for name, (backend, precision) in VARIANTS.items():
        if precision == "bf16" and not SYSTEM.cpu_native_bf16():
            continue  # emulated bf16 would take minutes and prove nothing
        predictors[name], _ = create_predictor(checkpoint, plan_execution(ExecutionRequest("cpu", backend, precision)), depth)
    batch = np.random.default_rng(0).random((args.batch, checkpoint.metadata.in_channels, args.size, args.size), dtype=np.float32)
    times = {name: [] for name in predictors}
    for name, predictor in predictors.items():  # warm-up: sessions, kernels, caches
        predictor(batch)
    for _ in range(args.rounds):
        for name, predictor in predictors.items():
            started = time.perf_counter()
            predictor(batch)
            times[name].append(1000 * (time.perf_counter() - started) / args.batch)
    chosen = plan_execution(ExecutionRequest("cpu"))
    print(f"| path ({args.size}², batch {args.batch}, {args.rounds} interleaved rounds) | ms/slice, median [range] |")
    print("| --- | --- |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} [{min(values):.1f}–{max(values):.1f}] |")
    print(f"\n`--precision auto` here: {chosen.backend} {chosen.precision} (native bf16: {SYSTEM.cpu_native_bf16()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

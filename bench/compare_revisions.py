"""Compare two revisions of the engine end to end: same labels, and speed within noise.

Checks out ``--old`` and ``--new`` (any git revisions; ``WORKTREE`` means the working tree as it is)
into temporary worktrees, then runs ``unetseg predict`` of each on the same inputs, alternating old
and new ``--rounds`` times in fresh processes (so that machine noise falls on both alike), and prints
one Markdown table: median and range of the wall time per run and of the engine's own ``total_s``,
and whether the labels of the two revisions are identical voxel for voxel.

Inputs: the slicerio chest CT (34 slices of 128², the bundled model's own data) and a 512×512 version
of it (resampled in-plane with SimpleITK, linear; ``--slices`` of them), both with the bundled model,
for each ``--precision`` given (``auto`` is what a user gets; ``fp32`` is the ONNX Runtime path).

    python bench/compare_revisions.py --old f3e6e32 --new HEAD
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
MODEL = "UNetSegmentation/Resources/Models/chest-ct-unetplusplus.safetensors"


def checkout(revision: str, folder: Path) -> Path:
    """The repository at ``revision`` in ``folder`` (the working tree itself for ``WORKTREE``)."""
    if revision == "WORKTREE":
        return REPO
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(folder), revision], check=True, capture_output=True)
    return folder


def inputs(folder: Path, slices: int) -> dict:
    """The slicerio CT as it is, and resampled to 512×512 in-plane (first ``slices`` slices)."""
    import slicerio

    ct = Path(slicerio.get_testdata_file("CTChest4.nrrd"))
    image = sitk.ReadImage(str(ct))
    size = image.GetSize()
    spacing = image.GetSpacing()
    target = (512, 512, min(slices, size[2]))
    new_spacing = (spacing[0] * size[0] / 512, spacing[1] * size[1] / 512, spacing[2])
    resampled = sitk.Resample(image, target, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), new_spacing, image.GetDirection(), -1024.0, image.GetPixelID())
    big = folder / "ct-512.nrrd"
    sitk.WriteImage(resampled, str(big))
    return {f"CT 128²×{size[2]}": ct, f"CT 512²×{target[2]}": big}


def run(tree: Path, volume: Path, output: Path, precision: str) -> tuple:
    """``(wall seconds, engine total_s)`` of one ``unetseg predict`` of ``tree`` in a fresh process."""
    environment = dict(os.environ, PYTHONPATH=str(tree / "UNetSegmentation"), UNETSEG_CACHE_DIR=str(output.parent / f"cache-{tree.name}"))
    command = [sys.executable, "-m", "UNetSegmentationLib", "predict", "--checkpoint", str(tree / MODEL), "--precision", precision,
               "--progress", "json", "--overwrite", str(volume), str(output)]
    started = time.perf_counter()
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{tree}: predict failed: {result.stderr.strip().splitlines()[-1:]}")
    done = [json.loads(line) for line in result.stdout.splitlines() if '"done"' in line][-1]
    return wall, done["timings"]["total_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="git revision (or WORKTREE)")
    parser.add_argument("--new", default="WORKTREE", help="git revision (or WORKTREE, the default)")
    parser.add_argument("--rounds", type=int, default=5, help="old/new pairs per input (default 5)")
    parser.add_argument("--slices", type=int, default=34, help="slices of the 512² input (default 34, the whole CT)")
    parser.add_argument("--precision", default="auto,fp32", help="comma-separated --precision values to run (default auto,fp32)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="unetseg-compare-") as scratch:
        scratch = Path(scratch)
        trees = {"old": checkout(args.old, scratch / "old"), "new": checkout(args.new, scratch / "new")}
        try:
            print("| input | precision | old wall s (median [range]) | new wall s | old engine total_s | new engine total_s | labels identical |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for name, volume in inputs(scratch, args.slices).items():
                for precision in args.precision.split(","):
                    times = {"old": [], "new": []}
                    outputs = {key: scratch / f"{key}.nrrd" for key in trees}
                    for key in trees:  # warm-up: caches (ONNX export) and the page cache
                        run(trees[key], volume, outputs[key], precision)
                    for _ in range(args.rounds):
                        for key in trees:
                            times[key].append(run(trees[key], volume, outputs[key], precision))
                    same = np.array_equal(*(sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[key]))) for key in trees))

                    def cell(key: str, index: int) -> str:
                        values = [t[index] for t in times[key]]
                        return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"

                    print(f"| {name} | {precision} | {cell('old', 0)} | {cell('new', 0)} | {cell('old', 1)} | {cell('new', 1)} | {'yes' if same else 'NO'} |", flush=True)
        finally:
            for key, tree in trees.items():
                if tree != REPO:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Clinical resolution (issue 14): accuracy, speed and memory of segmenting at the model's spacing,
against the engine before it (``--old``, a git revision that ran the network on the input's grid).

Inputs: the slicerio chest CT (the bundled model's own data, 128² × 34 at 3.05 × 3.05 × 10 mm) as it is,
resampled to 0.76 mm in-plane (512² × 34, a clinical CT matrix) and to 2.5 mm slices (128² × 136), each
with its ground truth resampled onto the same grid (``Testing/clinical_volumes.py``). Three tables:

1. ``accuracy``: per-class Dice of the bundled model (its recommended depth L3) against the ground
   truth, old and new, from ``unetseg evaluate`` of each revision;
2. ``speed``: ``unetseg predict`` end to end in fresh processes, old / new / new ``--no-crop``
   alternating ``--rounds`` times on the 512² version (medians and ranges of the wall time and of the
   engine's ``total_s``), with the share of the new run's time spent resampling (``resample_s``:
   slices to the model's grid and probabilities back) and finding the body (``body_s``);
3. ``memory``: peak resident memory (``ru_maxrss`` of the child) of ``predict`` on a 512 × 512 × 600
   volume (the CT resampled to 0.76 × 0.76 × 0.57 mm), old and new.

    python bench/clinical_resolution.py --old ac3cd34 [--rounds 5] [--tables accuracy,speed,memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))
sys.path.insert(0, str(REPO / "bench"))

from clinical_volumes import VERSIONS, resampled_grid, write_version  # noqa: E402
from compare_revisions import MODEL, checkout  # noqa: E402


def engine(tree: Path, *arguments: str, scratch: Path) -> tuple:
    """``(wall seconds, done event, peak RSS in MB)`` of one ``unetseg`` command of ``tree`` in a fresh process."""
    environment = dict(os.environ, PYTHONPATH=str(tree / "UNetSegmentation"), UNETSEG_CACHE_DIR=str(scratch / f"cache-{tree.name}"))
    command = [sys.executable, "-c", "import resource, runpy, sys; sys.argv = ['unetseg', *sys.argv[1:]]\n"
               "try:\n    runpy.run_module('UNetSegmentationLib', run_name='__main__')\n"
               "finally:\n    print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)", *arguments]
    started = time.perf_counter()
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{tree}: {arguments[0]} failed: {result.stderr.strip().splitlines()[-3:]}")
    done = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{") and '"done"' in line]
    peak = [int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("peak_rss_kb")][-1]
    return wall, (done[-1] if done else {}), peak / 1024


def accuracy(trees: dict, versions: dict, scratch: Path) -> None:
    print("\n| version | class | Dice before (old revision) | Dice after | after − original grid |")
    print("| --- | --- | --- | --- | --- |")
    dice = {}
    for name, (ct, truth) in versions.items():
        for key, tree in trees.items():
            folder = scratch / f"evaluate-{key}-{name}"
            engine(tree, "evaluate", "--checkpoint", str(tree / MODEL), "--image", str(ct), "--label", str(truth), "--depth", "3",
                   "--output-dir", str(folder), "--progress", "none", "--overwrite", scratch=scratch)
            rows = json.loads((folder / "evaluation.json").read_text())["rows"]
            dice[key, name] = {row["class"]: row["dice"] for row in rows}
    for name in versions:
        for label, before in dice["old", name].items():
            after = dice["new", name][label]
            print(f"| {name} | {label} | {before:.3f} | {after:.3f} | {after - dice['new', 'original'][label]:+.3f} |")
        means = [sum(dice[key, name].values()) / len(dice[key, name]) for key in ("old", "new")]
        print(f"| {name} | **mean** | **{means[0]:.3f}** | **{means[1]:.3f}** | |", flush=True)


def speed(trees: dict, volume: Path, rounds: int, scratch: Path) -> None:
    variants = {"old (input grid)": (trees["old"], ()), "new": (trees["new"], ()), "new --no-crop": (trees["new"], ("--no-crop",))}
    results = {name: [] for name in variants}
    for round_ in range(rounds + 1):  # round 0: warm-up (page cache, ONNX exports)
        for name, (tree, extra) in variants.items():
            output = scratch / f"speed-{tree.name}.nrrd"
            measured = engine(tree, "predict", "--checkpoint", str(tree / MODEL), "--progress", "json", "--overwrite", *extra, str(volume), str(output), scratch=scratch)
            if round_:
                results[name].append(measured)
    print(f"\n| {volume.name} | wall s (median [range]) | engine total_s | network_s | resample_s (share of total) | body_s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        walls = [r[0] for r in runs]
        timings = [r[1]["timings"] for r in runs]

        def median(key: str) -> float:
            return statistics.median(t.get(key, 0.0) for t in timings)

        share = f"{median('resample_s'):.3f} ({median('resample_s') / median('total_s'):.0%})" if "resample_s" in timings[0] else "—"
        body = f"{median('body_s'):.3f}" if "body_s" in timings[0] else "—"
        print(f"| {name} | {statistics.median(walls):.2f} [{min(walls):.2f}–{max(walls):.2f}] | {median('total_s'):.2f} | {median('network_s'):.2f} | {share} | {body} |", flush=True)


def memory(trees: dict, ct: Path, scratch: Path) -> None:
    image = sitk.ReadImage(str(ct))
    grid = resampled_grid(image, (0.25, 0.25, 1.0))
    grid = sitk.Resample(image, [512, 512, 600], sitk.Transform(), sitk.sitkLinear, grid.GetOrigin(),
                         (grid.GetSpacing()[0], grid.GetSpacing()[1], image.GetSpacing()[2] * image.GetSize()[2] / 600), image.GetDirection(), -1024.0, image.GetPixelID())
    volume = scratch / "ct-512x512x600.nrrd"
    sitk.WriteImage(grid, str(volume))
    print(f"\n| {volume.name} ({volume.stat().st_size / 1e6:.0f} MB on disk, int16) | peak RSS MB | wall s |")
    print("| --- | --- | --- |")
    for key, tree in trees.items():
        wall, _, peak = engine(tree, "predict", "--checkpoint", str(tree / MODEL), "--progress", "json", "--overwrite", str(volume), str(scratch / f"big-{key}.nrrd"), scratch=scratch)
        print(f"| {key} | {peak:.0f} | {wall:.1f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="git revision before issue 14 (e.g. ac3cd34)")
    parser.add_argument("--new", default="WORKTREE", help="git revision (or WORKTREE, the default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tables", default="accuracy,speed,memory")
    args = parser.parse_args()
    import slicerio

    ct = Path(slicerio.get_testdata_file("CTChest4.nrrd"))
    truth = Path(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
    with tempfile.TemporaryDirectory(prefix="unetseg-clinical-") as scratch:
        scratch = Path(scratch)
        trees = {"old": checkout(args.old, scratch / "old"), "new": checkout(args.new, scratch / "new")}
        try:
            versions = {name: write_version(ct, truth, REPO / MODEL, name, scratch / "versions") for name in VERSIONS}
            tables = args.tables.split(",")
            if "accuracy" in tables:
                accuracy(trees, versions, scratch)
            if "speed" in tables:
                speed(trees, versions["0.76mm-in-plane"][0], args.rounds, scratch)
            if "memory" in tables:
                memory(trees, ct, scratch)
        finally:
            for tree in trees.values():
                if tree != REPO:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

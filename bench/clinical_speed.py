"""Clinical CT speed (issue 25): where ``unetseg predict``'s time and memory go on a clinical chest CT,
before and after, and against what a MONAI user would write and against the limit.

Inputs: the slicerio chest CT (the bundled model's own data, 128² × 34 at 3.05 × 3.05 × 10 mm)
resampled to a clinical grid: 512 × 512 at 0.76 mm in-plane with 300 slices of 1.13 mm (or 600 of
0.57 mm), intensities linearly (``Testing/clinical_volumes.py``'s grid rule, the same extent), its
ground truth onto the same grid. Built once into ``--cache`` (default: a folder in the temp directory).

Tables:
1. ``stages``: ``unetseg predict --progress json`` of ``--old`` (a git revision, checked out into a
   worktree) and of the working tree, alternating in fresh processes ``--rounds`` times per size
   (machine noise falls on both alike); medians of the wall time, the child's CPU time (user + system, all
   its threads: what a loaded machine does not inflate as it does the wall time), the done event's stage
   timings and peak RSS (``ru_maxrss`` of the child), labels compared voxel for voxel and as Dice against the truth;
2. ``compare``: in one process, interleaved: the network alone on the model-grid slices (plus reading
   and writing: the limit) and MONAI's ``Spacing`` to the model's spacing, ``SliceInferer`` of the same
   network, ``Spacing`` back.

    python bench/clinical_speed.py --old 7c54b3f [--rounds 3] [--sizes 300,600] [--tables stages,compare] [--encodings gzip,raw] [--checkpoint CKPT]

``--checkpoint``: another model than the bundled one (both revisions run it; the truth is mapped onto its
classes, and Dice is the mean over its classes that the truth holds). The table's last columns say how the
work around the network compares with the network: ``(total - network) / network``, and the same without
reading and writing the files (what is left once the limit's parts are taken out).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing"))
sys.path.insert(0, str(REPO / "UNetSegmentation"))
MODEL = REPO / "Testing/Data/chest-ct-unetplusplus.safetensors"  # the chest model of rounds 1-2 (the bundled one until issue 24): --checkpoint bundled for today's
STAGES = ("load_model", "read", "body", "preprocess", "network", "postprocess", "resample", "write")


def fixture(slices: int, cache: Path, checkpoint: Path = MODEL) -> tuple:
    """``(ct, truth)`` files of the slicerio CT on a 512 × 512 × ``slices`` grid (0.76 mm in-plane), built once;
    the truth in ``checkpoint``'s class values (the bundled model's: the file names of before)."""
    import slicerio
    from clinical_volumes import resampled_grid, resampled_labels, truth_label_map
    from UNetSegmentationLib.io.segmentations import write_labels
    from UNetSegmentationLib.model.header import read_metadata

    suffix = "" if Path(checkpoint).resolve() == MODEL.resolve() else f"-{Path(checkpoint).stem}"
    ct_file, truth_file = cache / f"ct-512x512x{slices}.nrrd", cache / f"ct-512x512x{slices}-truth{suffix}.seg.nrrd"
    if ct_file.exists() and truth_file.exists():
        return ct_file, truth_file
    cache.mkdir(parents=True, exist_ok=True)
    source, segmentation = Path(slicerio.get_testdata_file("CTChest4.nrrd")), Path(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
    image = sitk.ReadImage(str(source))
    grid = resampled_grid(image, (0.25, 0.25, image.GetSize()[2] / slices))
    ct = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, image.GetPixelID())
    truth = resampled_labels(truth_label_map(source, segmentation, checkpoint), grid)
    if not ct_file.exists():
        sitk.WriteImage(ct, str(ct_file), True)
    write_labels(sitk.GetArrayFromImage(truth), ct, truth_file, read_metadata(checkpoint).classes)
    return ct_file, truth_file


#: the input files a run reads: ``gzip`` the fixture as written above (a compressed NRRD on disk, as a clinician's
#: export often is; ITK's reader stores it as int32), ``raw`` the same voxels as uncompressed 16-bit NRRD, which
#: is what the Slicer panel sends the engine (``scene.export_volume`` writes its temporary input uncompressed)
ENCODINGS = ("gzip", "raw")


def encoded(ct_file: Path, encoding: str) -> Path:
    """``ct_file`` as ``encoding`` (:data:`ENCODINGS`), written once beside it."""
    if encoding == "gzip":
        return ct_file
    raw_file = ct_file.with_name(ct_file.stem + "-raw.nrrd")
    if not raw_file.exists():
        image = sitk.ReadImage(str(ct_file))
        values = sitk.GetArrayViewFromImage(image)
        if values.min() < -32768 or values.max() > 32767:
            raise SystemExit(f"{ct_file}: values beyond 16 bits")
        sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(raw_file), False)
    return raw_file


def labels_of(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def dice(labels: np.ndarray, truth: np.ndarray, values) -> float:
    """Mean Dice over the model's classes present in the truth."""
    scores = []
    for value in values:
        a, b = labels == value, truth == value
        if b.any():
            scores.append(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
    return float(np.mean(scores))


def stages(trees: dict, sizes, rounds: int, cache: Path, scratch: Path, checkpoint: Path = MODEL, encodings=("gzip",)) -> None:
    """Table 1: old and new alternating in fresh processes; medians; each size read from each of ``encodings``."""
    from clinical_resolution import engine
    from UNetSegmentationLib.model.header import read_metadata

    values = [c.value for c in read_metadata(checkpoint).classes]
    print(f"\nload average at start: {os.getloadavg()[0]:.1f} (2 cores); {rounds} rounds, old/new alternating, medians; model {Path(checkpoint).name}\n")
    print("| volume | input | revision | wall s | CPU s | total_s | " + " | ".join(STAGES[:1] + ("check",) + STAGES[1:]) + " | around the network ÷ network | without read and write | peak RSS MB | voxels as old | mean Dice vs truth |")
    print("| --- | --- | --- | " + " | ".join(["---"] * (len(STAGES) + 9)) + " |")
    for slices, encoding in [(slices, encoding) for slices in sizes for encoding in encodings]:
        ct, truth_file = fixture(slices, cache, checkpoint)
        ct = encoded(ct, encoding)
        truth = labels_of(truth_file)
        runs = {name: [] for name in trees}
        outputs = {}
        for _ in range(rounds):
            for name, tree in trees.items():
                outputs[name] = scratch / f"{name}-{slices}.nrrd"
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                wall, done, peak = engine(tree, "predict", "--checkpoint", str(checkpoint), str(ct), str(outputs[name]), "--overwrite", "--progress", "json", scratch=scratch)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                runs[name].append((wall, done, peak, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime))
        old_labels = labels_of(outputs["old"]) if "old" in outputs else None
        for name in trees:
            walls = [r[0] for r in runs[name]]
            timings = [r[1].get("timings", {}) for r in runs[name]]

            def median(key: str) -> float:
                return statistics.median(t.get(key, 0.0) for t in timings)

            labels = labels_of(outputs[name])
            around = median("total_s") - median("network_s")
            inner = around - median("check_s") - median("read_s") - median("write_s")
            agreement = float((labels == old_labels).mean()) if old_labels is not None else float("nan")
            cells = [f"{median(k + '_s'):.2f}" for k in STAGES[:1] + ("check",) + STAGES[1:]]
            print(f"| 512²×{slices} | {encoding} | {name} | {statistics.median(walls):.2f} | {statistics.median(r[3] for r in runs[name]):.2f} | {median('total_s'):.2f} | " + " | ".join(cells)
                  + f" | {around / max(median('network_s'), 1e-9):.1f} | {inner / max(median('network_s'), 1e-9):.1f} | {statistics.median(r[2] for r in runs[name]):.0f} | {100 * agreement:.3f} % | {dice(labels, truth, values):.4f} |")


def _checkpoint(text: str) -> Path:
    """``--checkpoint``: a file, or ``bundled`` (the bundled model)."""
    from UNetSegmentationLib.model.bundled import checkpoint_path

    return Path(checkpoint_path(text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default=None, help="git revision to compare against (checked out into a worktree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="300,600")
    parser.add_argument("--tables", default="stages,compare")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "unetseg-clinical-speed")
    parser.add_argument("--encodings", default="gzip", help=f"the input files of the stage table, comma-separated: {', '.join(ENCODINGS)}")
    parser.add_argument("--checkpoint", type=_checkpoint, default=MODEL, help="the model: a checkpoint file, or 'bundled' (default: the chest model of rounds 1-2, Testing/Data)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    sizes = [int(s) for s in args.sizes.split(",")]
    encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
    if not encodings or set(encodings) - set(ENCODINGS):
        parser.error(f"--encodings: choose from {', '.join(ENCODINGS)}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        trees = {}
        if args.old:
            from compare_revisions import checkout

            trees["old"] = checkout(args.old, scratch / "old")
        trees["new"] = REPO
        if "fixtures" in args.tables:  # (the child below) build the fixtures, nothing else
            for slices in sizes:
                for encoding in encodings:
                    encoded(fixture(slices, args.cache, args.checkpoint.resolve())[0], encoding)
            return 0
        # built in a child process: a run's ru_maxrss starts at its parent's peak on Linux, and building a truth
        # resamples every label's indicator on the 512² grid (GB for a many-class model)
        subprocess.run([sys.executable, __file__, "--tables", "fixtures", "--sizes", args.sizes, "--encodings", args.encodings, "--cache", str(args.cache), "--checkpoint", str(args.checkpoint)], check=True)
        if "stages" in args.tables:
            stages(trees, sizes, args.rounds, args.cache, scratch, args.checkpoint.resolve(), encodings)
        if "compare" in args.tables:
            from clinical_comparisons import compare

            compare(sizes, args.rounds, args.cache, scratch, args.checkpoint.resolve())
        if args.old:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(trees["old"])], capture_output=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

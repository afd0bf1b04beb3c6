"""Which uncertainty score finds the slices to review first: the measurement behind ``inference/review.py``.

On the real chest CT shipped in slicerio, each model segments the CT through ``unetseg predict`` (with
``--probabilities``, so the confidence of every voxel is known, and ``--review-list``, so the ranking
the engine writes is checked against the one computed here). For every candidate score of
``quality.UNCERTAINTY_SCORES`` the slices are ranked, and compared with each slice's Dice against the
ground truth (the mean over the classes present in the truth or the prediction of that slice):

- the mean Dice of the top ``--top`` slices against the median slice's Dice (lower = the ranking finds the errors);
- how many of the top slices lie below the median;
- Spearman's rank correlation between score and Dice (negative = more uncertain, worse).

Models: the bundled model at weak depths (``--depths``, default 1 and 2: there are errors to find),
and a model from a short training on the CT itself (``--trained CKPT``, or trained here for
``--train-epochs`` x ``--train-steps`` steps from scratch). Prints a Markdown table.

    python bench/review_ranking.py [--depths 1,2] [--trained CKPT] [--top 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "UNetSegmentation"))

from UNetSegmentationLib.cli.evaluate import labelled_volumes  # noqa: E402
from UNetSegmentationLib.inference.quality import DEFAULT_SCORE, UNCERTAINTY_SCORES  # noqa: E402
from UNetSegmentationLib.inference.slicing import SliceGeometry  # noqa: E402
from UNetSegmentationLib.model.bundled import bundled_model_path  # noqa: E402
from UNetSegmentationLib.model.header import read_metadata  # noqa: E402
from UNetSegmentationLib.protocol.child_environment import engine_root  # noqa: E402
from UNetSegmentationLib.training.cases import Case  # noqa: E402


def unetseg(*arguments) -> List[dict]:
    """``python -m UNetSegmentationLib ARGUMENTS --progress json``: its events (stops on failure)."""
    command = [sys.executable, "-m", "UNetSegmentationLib", *map(str, arguments), "--progress", "json"]
    result = subprocess.run(command, capture_output=True, text=True, env={"PYTHONPATH": str(engine_root()), "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def slice_dice(predicted: np.ndarray, truth: np.ndarray, classes: int, channels: Optional[Sequence[int]] = None) -> np.ndarray:
    """``(slices,)`` mean Dice over the classes present in either of ``[slice, row, column]`` channel maps (NaN: none);
    ``channels``: only these (a case's labelled classes: the others are unknown in its truth), default 1..classes."""
    dice = np.full(predicted.shape[0], np.nan)
    for index in range(predicted.shape[0]):
        values = []
        for channel in (range(1, classes + 1) if channels is None else sorted(channels)):
            p, t = predicted[index] == channel, truth[index] == channel
            total = int(p.sum()) + int(t.sum())
            if total:
                values.append(2.0 * int((p & t).sum()) / total)
        if values:
            dice[index] = float(np.mean(values))
    return dice


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def measure(name: str, checkpoint: Path, depth: Optional[str], ct: Path, segmentation: Path, folder: Path, top: int) -> List[dict]:
    """Segment the CT with one model and score every candidate ranking; one row per candidate."""
    output, confidence_path, review_path = folder / f"{name}.seg.nrrd", folder / f"{name}-confidence.nrrd", folder / f"{name}-review.json"
    started = time.perf_counter()
    events = unetseg("predict", "--checkpoint", checkpoint, *(["--depth", depth] if depth else []),
                     "--probabilities", confidence_path, "--review-list", review_path, "--overwrite", ct, output)
    seconds = time.perf_counter() - started
    done = next(e for e in events if e["event"] == "done")
    metadata = read_metadata(checkpoint)
    truth, predicted = labelled_volumes([Case("truth", ct, segmentation), Case("predicted", ct, output)], metadata.classes, "background")
    geometry = SliceGeometry.from_direction(truth.direction)
    truth_slices, predicted_slices = geometry.slices_view(truth.truth), geometry.slices_view(predicted.truth)
    confidence = geometry.slices_view(sitk.GetArrayFromImage(sitk.ReadImage(str(confidence_path))))
    dice = slice_dice(predicted_slices, truth_slices, len(metadata.classes))
    scored = ~np.isnan(dice)
    median = float(np.median(dice[scored]))
    engine_order = [entry["slice"] for entry in json.loads(review_path.read_text())["slices"]]
    rows = []
    for candidate, score in UNCERTAINTY_SCORES.items():
        scores = score(predicted_slices, confidence.astype(np.float32))
        order = sorted(range(len(scores)), key=lambda index: (-scores[index], index))
        first = [index for index in order if scored[index]][:top]
        if candidate == DEFAULT_SCORE:
            assert engine_order == order, f"{name}: the engine's ranking differs from the benchmark's"
            assert [e["slice"] for e in done["review"]] == order[:len(done["review"])]
        rows.append({
            "model": name, "slices": int(scored.sum()), "mean_dice": float(np.mean(dice[scored])), "median_dice": median,
            "candidate": candidate, "top_dice": float(np.mean(dice[first])), "top_below_median": sum(dice[i] < median for i in first),
            "spearman": spearman(scores[scored], dice[scored]), "predict_s": seconds,
        })
    return rows


def train_short(ct: Path, segmentation: Path, folder: Path, epochs: int, steps: int) -> Tuple[Path, float]:
    """A small UNet++ trained from scratch on the CT for ``epochs`` x ``steps`` steps; ``(checkpoint, seconds)``."""
    checkpoint = folder / "short-training.safetensors"
    started = time.perf_counter()
    unetseg("train", "--image", ct, "--label", segmentation, "--arch", "unetplusplus", "--features", "8,16,32,64,128",
            "--epochs", epochs, "--steps-per-epoch", steps, "--batch-size", 4, "--val-slices", 0.2, "--seed", 0, checkpoint)
    return checkpoint, time.perf_counter() - started


def table(rows: List[dict], top: int) -> str:
    lines = [
        f"| model | slices | mean Dice | median slice Dice | score | top-{top} mean Dice | top-{top} below median | Spearman (score, Dice) |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        chosen = " (chosen)" if row["candidate"] == DEFAULT_SCORE else ""
        lines.append(f"| {row['model']} | {row['slices']} | {row['mean_dice']:.3f} | {row['median_dice']:.3f} | {row['candidate']}{chosen} | "
                     f"{row['top_dice']:.3f} | {row['top_below_median']}/{top} | {row['spearman']:+.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    import slicerio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="1,2", help="depths of the bundled model to measure (default 1,2)")
    parser.add_argument("--trained", type=Path, help="a checkpoint from a short training (default: trained here)")
    parser.add_argument("--train-epochs", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=5, help="how many of the first-ranked slices to compare (default 5)")
    args = parser.parse_args()
    ct, segmentation = Path(slicerio.get_testdata_file("CTChest4.nrrd")), Path(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
    rows: List[dict] = []
    notes: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="review-ranking-") as temporary:
        folder = Path(temporary)
        for depth in args.depths.split(","):
            rows += measure(f"bundled L{depth}", bundled_model_path(), depth, ct, segmentation, folder, args.top)
        trained = args.trained
        if trained is None:
            trained, seconds = train_short(ct, segmentation, folder, args.train_epochs, args.train_steps)
            notes["short training"] = f"{args.train_epochs} epochs x {args.train_steps} steps from scratch, {seconds:.0f} s"
        rows += measure("short training", trained, None, ct, segmentation, folder, args.top)
    print(table(rows, args.top), end="")
    for model, note in notes.items():
        print(f"\n{model}: {note}")
    chosen = [row for row in rows if row["candidate"] == DEFAULT_SCORE]
    print(f"\n{DEFAULT_SCORE}: top-{args.top} Dice below the median slice for "
          f"{sum(r['top_dice'] < r['median_dice'] for r in chosen)}/{len(chosen)} models; "
          f"median Spearman {statistics.median(r['spearman'] for r in chosen):+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

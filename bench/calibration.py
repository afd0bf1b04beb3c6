"""Do the probabilities mean something on patients the model never saw? Calibration and the review ranking, before and after.

For the fold models of a leave-one-patient-out training (fold K trained without the datalist's fold K),
each fold model segments its held-out patient's volumes through the engine's own path
(``Resources/Tools/calibrate_model.py``, :mod:`UNetSegmentationLib.evaluation.calibration`), and the
temperature for fold K is fitted on the other folds' held-out data only, so the figures after
calibration are honest. Per held-out patient:

- the expected calibration error (15 equal-width bins of the confidence of the chosen label, over the
  voxels inside the body boxes whose correctness is known: the case's labelled classes), before and after;
- the review ranking (``inference/review.py``, the score ``predict --review-list`` writes, from the
  labels and confidence the same pipeline decides): the mean Dice of its top ``--top`` slices against
  the median slice Dice, and Spearman's correlation between score and slice Dice (negative: the
  uncertain slices are the bad ones), as ``bench/review_ranking.py`` measures it, with the slice Dice
  over the case's labelled classes only.

    python bench/calibration.py --datalist training-data/datalist.json \\
        --fold-models '/tmp/lopo/CONFIG/fold{fold}.safetensors' [--top 5] [--depth L] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "UNetSegmentation"))
sys.path.insert(0, str(ROOT / "Resources" / "Tools"))
sys.path.insert(0, str(ROOT / "bench"))

import calibrate_model  # noqa: E402
from review_ranking import slice_dice, spearman  # noqa: E402
from UNetSegmentationLib.evaluation.calibration import replay, tempered  # noqa: E402
from UNetSegmentationLib.inference.review import ReviewRanking  # noqa: E402


def ranking(recorded: list, ratio: float, top: int) -> dict:
    """The review ranking of a patient's volumes (their slices pooled) at ``ratio``: top-``top`` mean Dice, median, Spearman."""
    scores, dice = [], []
    for volume in recorded:
        ranked = ReviewRanking("ijk"[volume.geometry.slice_axis])
        result = replay(volume, tempered(ratio), observers=[ranked])
        predicted = volume.geometry.slices_view(volume.channels(result.labels))
        truth = volume.geometry.slices_view(volume.truth)
        per_slice = slice_dice(predicted, truth, len(volume.metadata.classes), volume.labelled)
        scores += [ranked.scores.get(index, 0.0) for index in range(len(per_slice))]
        dice += list(per_slice)
    scores, dice = np.array(scores), np.array(dice)
    scored = ~np.isnan(dice)
    order = [i for i in np.argsort(-scores, kind="stable") if scored[i]][:top]
    return {"top": float(np.mean(dice[order])), "median": float(np.median(dice[scored])), "spearman": spearman(scores[scored], dice[scored]),
            "slices": int(scored.sum())}


def _signed(value: float) -> str:
    """A correlation, or n/a where it is undefined (every slice scored alike, or every Dice equal)."""
    return "n/a" if value != value else f"{value:+.2f}"


def table(rows: List[dict], top: int) -> str:
    lines = [f"| held-out patient (fold) | T (other folds) | ECE before | ECE after | slices | median slice Dice | top-{top} Dice before | "
             f"top-{top} Dice after | Spearman before | Spearman after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['patient']} ({r['fold']}) | {r['temperature_other_folds']:.3f} | {r['ece_before']:.4f} | {r['ece_after']:.4f} | "
                     f"{r['before']['slices']} | {r['before']['median']:.3f} | {r['before']['top']:.3f} | {r['after']['top']:.3f} | "
                     f"{_signed(r['before']['spearman'])} | {_signed(r['after']['spearman'])} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", type=Path, required=True)
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--fold-models", required=True, help="the fold models' path with {fold} for the fold number")
    parser.add_argument("--folds", help="only these folds, e.g. 0,1 (default: every fold)")
    parser.add_argument("--depth", help="UNet++ depth (default: each checkpoint's recommended depth)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=5, help="first-ranked slices compared with the median (default 5)")
    parser.add_argument("--benchmarks", type=Path, help="also write the table into this Markdown file (BENCHMARKS.md) between its calibration markers")
    args = parser.parse_args()
    from UNetSegmentationLib.model.depth import parse_depth

    runs = calibrate_model.held_out_runs(args.datalist, args.fold_models, parse_depth(args.depth) if args.depth else None, args.threads, args.data_root,
                                         calibrate_model.parse_folds(args.folds))
    temperatures, rows = calibrate_model.fit(runs)
    for row in rows:
        checkpoint, recorded = runs[row["fold"]]
        own = checkpoint.metadata.temperature
        after = calibrate_model.temperature_after(own, row["temperature_other_folds"])
        row["before"], row["after"] = ranking(recorded, 1.0, args.top), ranking(recorded, after / own, args.top)
    text = table(rows, args.top) + (f"\ntemperature fitted on all held-out data (what the shipped model gets): {temperatures.shipped:.4f}; "
                                    f"per fold on its own data: {', '.join(f'{k}: {t:.3f}' for k, t in temperatures.own.items())}\n")
    print(text, end="")
    if args.benchmarks:
        from marked_section import write_marked_section

        command = "python bench/calibration.py " + " ".join(sys.argv[1:])
        write_marked_section(args.benchmarks, "<!-- calibration:start -->", "<!-- calibration:end -->", f"{text}\n`{command}`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

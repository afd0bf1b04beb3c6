"""What ``unetseg evaluate`` shows and writes: the screen table, CSV, JSON and the accuracy-vs-speed plot.

For several depths, the PNG plot of mean Dice against measured ms/slice is the UNet++ paper's pruning
figure (Zhou et al., IEEE TMI 2020, Fig. 7) for your data. The caller writes each file through
:func:`~UNetSegmentationLib.io.outputs.atomic_output` (complete or absent).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict

import numpy as np

from UNetSegmentationLib.evaluation.evaluate import Evaluation
from UNetSegmentationLib.evaluation.metrics import METRICS

#: the files of an evaluation, in its output folder
OUTPUT_FILES = {"csv": "evaluation.csv", "json": "evaluation.json", "plot": "accuracy-vs-speed.png"}


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 100 else f"{value:.{digits - 1}f}"
    return str(value)


def format_table(evaluation: Evaluation) -> str:
    """The per-volume/per-class table and the per-depth summary, as plain text."""
    header = ["volume", "depth", "class", "dice", "iou", "hd95 mm", "precision", "recall", "f1"]
    lines = [[r["volume"], r["depth"], r["class"]] + [_cell(r[m]) for m in METRICS] for r in evaluation.rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    text = io.StringIO()
    for line in [header] + lines:
        text.write("  ".join(str(x).ljust(w) if i < 3 else str(x).rjust(w) for i, (x, w) in enumerate(zip(line, widths))).rstrip() + "\n")
    text.write("\nper depth (means over volumes and classes)\n")
    summary_header = ["depth", "dice", "iou", "hd95 mm", "precision", "recall", "ms/slice", "parameters"]
    summary_lines = [
        [depth, _cell(s["mean_dice"]), _cell(s["mean_iou"]), _cell(s["mean_hd95_mm"]), _cell(s["mean_precision"]), _cell(s["mean_recall"]), _cell(s.get("ms_per_slice")), str(s.get("parameters", ""))]
        for depth, s in evaluation.summary().items()
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(summary_header, *summary_lines)]
    for line in [summary_header] + summary_lines:
        text.write("  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(line, widths))).rstrip() + "\n")
    return text.getvalue()


def write_csv(evaluation: Evaluation, path: Path) -> None:
    """One row per volume, depth and class, with the depth's ms/slice."""
    columns = ["volume", "depth", "class", *METRICS, "truth_voxels", "predicted_voxels", "slices", "ms_per_slice"]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in evaluation.rows:
            writer.writerow({**{k: ("" if v is None else v) for k, v in row.items()}, "ms_per_slice": evaluation.speed.get(row["depth"], {}).get("ms_per_slice", "")})


def write_json(evaluation: Evaluation, path: Path) -> None:
    """Checkpoint, classes, what ran (backend, precision, threads), the per-depth summary and every row."""
    Path(path).write_text(json.dumps(evaluation.to_json(), indent=2))


def plot_accuracy_vs_speed(summary: Dict[str, dict], path: Path, title: str = "") -> None:
    """Mean Dice against ms/slice per depth; marker area grows with the parameter count."""
    from UNetSegmentationLib.evaluation.plotting import pyplot

    plt = pyplot()

    names = [d for d, s in summary.items() if s.get("mean_dice") is not None and s.get("ms_per_slice") is not None]
    x = [summary[d]["ms_per_slice"] for d in names]
    y = [summary[d]["mean_dice"] for d in names]
    params = np.array([summary[d].get("parameters", 0) for d in names], dtype=float)
    sizes = 40 + 400 * np.sqrt(params / params.max()) if params.size and params.max() > 0 else 80
    figure, axis = plt.subplots(figsize=(5.5, 4.2))
    axis.plot(x, y, color="0.6", zorder=1)
    axis.scatter(x, y, s=sizes, c=range(len(names)), cmap="viridis", zorder=2, edgecolors="black")
    for name, xi, yi, p in zip(names, x, y, params):
        axis.annotate(f"{name} ({p / 1e6:.2f}M)", (xi, yi), textcoords="offset points", xytext=(8, -12), fontsize=9)
    axis.margins(x=0.2, y=0.1)
    axis.set_xlabel("inference time (ms per slice)")
    axis.set_ylabel("mean Dice")
    axis.set_title(title or "accuracy vs speed per prune depth", fontsize=10)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

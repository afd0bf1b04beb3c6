"""``unetseg evaluate``: segment volumes with a checkpoint and compare with their ground truth.

Per volume, per class (and, for a prunable network such as UNet++, per depth): Dice, IoU, HD95 in
millimetres (the 95th percentile of symmetric surface distances, with the volume's anisotropic
spacing), precision, recall and F1 — computed with MONAI's metric functions on the volume's own
grid. A class absent from the ground truth gives no Dice/IoU/recall (``null``, left out of means);
a class absent from the prediction or the ground truth gives no HD95. Results go to the screen (a
table), to CSV and JSON, and, for several depths, to a PNG plot of accuracy against measured
ms/slice — the UNet++ paper's pruning figure (Zhou et al., IEEE TMI 2020, Fig. 7) for your data.

Prediction is the engine's own: :func:`~UNetSegmentationLib.inference.pipeline.predict_volume` through a
:class:`~UNetSegmentationLib.backends.torch_predictor.SlicePredictor`, exactly what ``unetseg predict`` runs.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from UNetSegmentationLib.errors import UserError

METRICS = ("dice", "iou", "hd95_mm", "precision", "recall", "f1")
OUTPUT_FILES = {"csv": "evaluation.csv", "json": "evaluation.json", "plot": "accuracy-vs-speed.png"}


# --- metrics ------------------------------------------------------------------------------------------


def _finite(value) -> Optional[float]:
    value = float(value)
    return value if math.isfinite(value) else None


def class_metrics(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> Dict[str, Optional[float]]:
    """Metrics of one binary mask against another (same shape; ``spacing`` in mm per array axis).

    Dice, IoU, recall: ``None`` when the truth is empty. Precision: ``None`` when the prediction is
    empty. F1: ``None`` when both are. HD95: ``None`` when either is empty.
    """
    import torch
    from monai.metrics import compute_confusion_matrix_metric, compute_dice, compute_hausdorff_distance, compute_iou, get_confusion_matrix

    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    y_pred = torch.from_numpy(np.ascontiguousarray(prediction, dtype=np.float32))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(truth, dtype=np.float32))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks; they become None below
        confusion = get_confusion_matrix(y_pred, y, include_background=True)
        result = {
            "dice": _finite(compute_dice(y_pred, y, include_background=True, ignore_empty=True)[0, 0]),
            "iou": _finite(compute_iou(y_pred, y, include_background=True, ignore_empty=True)[0, 0]),
            "hd95_mm": None,
            "precision": _finite(compute_confusion_matrix_metric("precision", confusion)[0, 0]),
            "recall": _finite(compute_confusion_matrix_metric("recall", confusion)[0, 0]),
            "f1": _finite(compute_confusion_matrix_metric("f1 score", confusion)[0, 0]),
        }
        if prediction.any() and truth.any():
            spacing = [float(s) for s in spacing]
            result["hd95_mm"] = _finite(compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)[0, 0])
    if not truth.any():
        result["f1"] = None if not prediction.any() else result["f1"]
    return result


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, class_count: int) -> np.ndarray:
    """Dice of channels 1..class_count between two channel-index arrays (NaN where the truth lacks the class).

    The quick form used by validation during training, with MONAI's Dice.
    """
    import torch
    from monai.metrics import compute_dice

    channels = np.arange(1, class_count + 1).reshape((-1,) + (1,) * prediction.ndim)
    y_pred = torch.from_numpy(prediction[None] == channels).float()[None]
    y = torch.from_numpy(truth[None] == channels).float()[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compute_dice(y_pred, y, include_background=True, ignore_empty=True)[0].numpy().astype(float)


# --- prediction of chosen slices ----------------------------------------------------------------------


def predict_slices(predictor, slices: np.ndarray, mapping, indices: Sequence[int], batch_size: int = 4) -> np.ndarray:
    """Channel indices ``(n, rows, columns)`` for ``indices`` of a ``[slice, row, column]`` view.

    :func:`~UNetSegmentationLib.inference.pipeline.predict_volume` restricted to some slices (held-out slices
    during training): the same gathering, normalisation, padding and label decision.
    """
    from UNetSegmentationLib.inference.pipeline import labels_from_probabilities
    from UNetSegmentationLib.inference.slicing import gather_context, padding_for

    metadata = predictor.metadata
    rows, columns = slices.shape[1:]
    pad_rows, pad_columns = padding_for((rows, columns), predictor.required_multiple)
    channel_values = np.arange(metadata.out_channels if metadata.uses_softmax else 2)
    out = np.zeros((len(indices), rows, columns), dtype=np.uint8)
    indices = np.asarray(indices, dtype=int)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        batch = mapping(gather_context(slices, chunk, metadata.context))
        if pad_rows or pad_columns:
            batch = np.pad(batch, ((0, 0), (0, 0), (0, pad_rows), (0, pad_columns)))
        probabilities = predictor(batch)[:, :, :rows, :columns]
        out[start:start + len(chunk)] = labels_from_probabilities(probabilities, channel_values)[0]
    return out


# --- slices to evaluate --------------------------------------------------------------------------------


def parse_slices(text: Optional[str]) -> Optional[object]:
    """``None`` (all), ``"checkpoint"`` (the held-out slices recorded at training), or a sorted index array from ``4-6,16,17``."""
    if text is None or text == "all":
        return None
    if text == "checkpoint":
        return text
    indices = set()
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            low, high = int(low), int(high) if high else int(low)
            if low < 0 or high < low:
                raise ValueError
            indices.update(range(low, high + 1))
    except ValueError:
        raise UserError(f"--slices must be 'all', 'checkpoint' or indices and ranges like 4-6,16,17; got {text!r}") from None
    return np.array(sorted(indices), dtype=int)


def held_out_slices_of(metadata, image_path: Path) -> np.ndarray:
    """The held-out slices the checkpoint's training recorded for an image of this file name."""
    entries = (metadata.training.get("data") or {}).get("held_out_slices") or []
    matches = [e for e in entries if isinstance(e, dict) and e.get("image") == Path(image_path).name]
    if not matches:
        known = ", ".join(sorted({str(e.get("image")) for e in entries if isinstance(e, dict)})) or "none"
        raise UserError(f"--slices checkpoint: the checkpoint records no held-out slices for {Path(image_path).name} (it has them for: {known})")
    return np.array(sorted({int(s) for e in matches for s in e.get("slices", [])}), dtype=int)


# --- evaluate ------------------------------------------------------------------------------------------


@dataclass
class EvaluationOptions:
    depths: Optional[List] = None  # None: every depth of a prunable network, else the default output
    device: str = "auto"
    batch_size: int = 4
    axis: Optional[int] = None
    slices: Optional[object] = None  # None, "checkpoint" or an index array
    other_labels: str = "background"


@dataclass
class Evaluation:
    checkpoint: str
    classes: List[str]
    rows: List[dict] = field(default_factory=list)  # one per volume × depth × class
    speed: Dict[str, Dict[str, float]] = field(default_factory=dict)  # depth → {"ms_per_slice", "parameters"}

    def summary(self) -> Dict[str, dict]:
        """Per depth: mean of each metric over volumes and classes (ignoring ``None``), ms/slice, parameters."""
        out = {}
        for depth in dict.fromkeys(row["depth"] for row in self.rows):
            rows = [r for r in self.rows if r["depth"] == depth]
            means = {}
            for metric in METRICS:
                values = [r[metric] for r in rows if r[metric] is not None]
                means[f"mean_{metric}"] = float(np.mean(values)) if values else None
            out[depth] = {**means, **self.speed.get(depth, {})}
        return out

    def to_json(self) -> dict:
        return {"checkpoint": self.checkpoint, "classes": self.classes, "summary": self.summary(), "rows": self.rows}


def _depth_name(depth) -> str:
    return "default" if depth is None else (depth if isinstance(depth, str) else f"L{depth}")


def evaluate_cases(checkpoint_path, cases, options: EvaluationOptions, reporter=None) -> Evaluation:
    """Segment every case at every requested depth and measure it against its label."""
    from UNetSegmentationLib.model.checkpoint import build_model, load_checkpoint
    from UNetSegmentationLib.backends.device import resolve_device
    from UNetSegmentationLib.backends.torch_predictor import SlicePredictor
    from UNetSegmentationLib.inference.pipeline import predict_volume
    from UNetSegmentationLib.model.depth import resolve_depth
    from UNetSegmentationLib.networks.registry import get_architecture, prune_depths_of
    from UNetSegmentationLib.inference.normalization import fit_normalization
    from UNetSegmentationLib.inference.slicing import SliceGeometry
    from UNetSegmentationLib.training.data import load_case, resolve_classes

    checkpoint = load_checkpoint(checkpoint_path)
    metadata = checkpoint.metadata
    architecture = get_architecture(metadata.architecture)
    depths = options.depths
    if depths is None:
        depths = list(prune_depths_of(architecture, metadata.kwargs)) or [None]
    else:
        depths = [resolve_depth(metadata, d) for d in depths]
    device = resolve_device(options.device)
    model = build_model(checkpoint)
    parameters = {}
    for depth in depths:
        if isinstance(depth, int) and hasattr(model, "parameter_count"):
            parameters[_depth_name(depth)] = int(model.parameter_count(depth))
        else:
            parameters[_depth_name(depth)] = int(sum(p.numel() for p in model.parameters()))
    value_to_channel = {c.value: channel for channel, c in enumerate(metadata.classes, 1)}
    evaluation = Evaluation(str(checkpoint_path), [c.name for c in metadata.classes])
    network_time = {_depth_name(d): [0.0, 0] for d in depths}

    loaded = [load_case(case) for case in cases]  # every file checked before the first prediction
    _, lookups = resolve_classes([(l.case.name, l.label) for l in loaded], declared=metadata.classes, other_labels=options.other_labels)
    for item, lookup in zip(loaded, lookups):
        truth = lookup[np.minimum(item.label.array, lookup.size - 1)]
        truth[item.label.array >= lookup.size] = 0
        geometry = SliceGeometry.from_direction(item.direction, options.axis)
        selected = np.ones(geometry.slices_view(item.volume).shape[0], dtype=bool)
        if options.slices is not None:
            indices = held_out_slices_of(metadata, item.case.image) if isinstance(options.slices, str) else options.slices
            if indices.size and indices.max() >= selected.size:
                raise UserError(f"--slices: {item.case.name} has {selected.size} slices (0..{selected.size - 1}); got index {indices.max()}")
            selected[:] = False
            selected[indices] = True
        mask = np.zeros(item.volume.shape, dtype=bool)
        geometry.slices_view(mask)[selected] = True
        truth = np.where(mask, truth, 0)
        spacing = tuple(float(s) for s in reversed(item.spacing))  # [k, j, i] axes
        mapping = fit_normalization(metadata.normalization, item.volume)
        for depth in depths:
            name = _depth_name(depth)
            predictor = SlicePredictor(model, metadata, device, depth)
            predictor(np.zeros((1, metadata.in_channels, predictor.required_multiple, predictor.required_multiple), dtype=np.float32))  # warm-up
            result = predict_volume(item.volume, geometry, predictor, mapping, options.batch_size)
            network_time[name][0] += result.timings["network_s"]
            network_time[name][1] += geometry.slices_view(item.volume).shape[0]
            predicted = np.zeros(item.volume.shape, dtype=np.uint8)
            for value, channel in value_to_channel.items():
                predicted[result.labels == value] = channel
            predicted[~mask] = 0
            for channel, info in enumerate(metadata.classes, 1):
                metrics = class_metrics(predicted == channel, truth == channel, spacing)
                evaluation.rows.append(
                    {
                        "volume": item.case.name,
                        "depth": name,
                        "class": info.name,
                        **metrics,
                        "truth_voxels": int((truth == channel).sum()),
                        "predicted_voxels": int((predicted == channel).sum()),
                        "slices": int(selected.sum()),
                    }
                )
            if reporter is not None:
                reporter(item.case.name, name)
    for name, (seconds, count) in network_time.items():
        evaluation.speed[name] = {"ms_per_slice": 1000.0 * seconds / max(count, 1), "parameters": parameters[name]}
    return evaluation


# --- output ---------------------------------------------------------------------------------------------


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
    columns = ["volume", "depth", "class", *METRICS, "truth_voxels", "predicted_voxels", "slices", "ms_per_slice"]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in evaluation.rows:
            writer.writerow({**{k: ("" if v is None else v) for k, v in row.items()}, "ms_per_slice": evaluation.speed.get(row["depth"], {}).get("ms_per_slice", "")})


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

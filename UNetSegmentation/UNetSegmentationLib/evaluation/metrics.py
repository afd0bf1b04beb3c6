"""Segmentation metrics of one class: a predicted binary mask against the ground truth.

Dice, IoU, HD95 in millimetres (the 95th percentile of symmetric surface distances, with the
volume's anisotropic spacing), precision, recall and F1, computed with MONAI's metric functions on
the volume's own grid. A metric that is undefined for the masks given (e.g. Dice when the truth is
empty) is ``None``, never a misleading number.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Optional, Sequence

import numpy as np

#: what :func:`class_metrics` returns, in the order reports show them
METRICS = ("dice", "iou", "hd95_mm", "precision", "recall", "f1")


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

"""The label decision: from class probabilities to a label and the probability of the label chosen.

One class (K = 1): foreground where p ≥ 0.5, confidence p or 1 - p. Several: argmax over background +
classes, confidence the winning probability; ties go to the lower channel, as in PyTorch's ``max``.

The decision commutes with blending: where two probability maps choose the same channel, any convex
combination of them (the linear interpolation between the network's slice positions, :mod:`.model_slices`)
chooses it too, with the blended confidence (the winning channel's probability is linear in the blend).
So a blend only needs the channels where the two choices differ.
"""

from __future__ import annotations

import numpy as np


def labels_from_probabilities(probabilities, label_values: np.ndarray) -> tuple:
    """``(labels, confidence)`` numpy arrays from ``(B, K, H, W)`` probabilities: a tensor (PyTorch decides,
    on its device) or a numpy array (ONNX Runtime's: decided in numpy, no PyTorch needed).
    ``label_values[c]`` is the label of channel c (``label_values[0] == 0`` for background)."""
    if isinstance(probabilities, np.ndarray):
        chosen, confidence = decided_in_numpy(probabilities)
        return label_values[chosen], confidence
    import torch

    if probabilities.shape[1] == 1:
        foreground = probabilities[:, 0]
        chosen = (foreground >= 0.5).long()
        confidence = torch.where(chosen.bool(), foreground, 1 - foreground)
    else:
        confidence, chosen = probabilities.max(dim=1)
    return label_values[chosen.cpu().numpy()], confidence.float().cpu().numpy()


def decided_in_numpy(probabilities: np.ndarray) -> tuple:
    """``(chosen channel, its probability)`` of ``(B, K, H, W)`` float probabilities; channel by channel,
    which is several times faster than ``argmax`` over the strided channel axis. Channels as uint8 (a
    network has fewer than 256 outputs): an eighth of the bytes of an index array to compare and look up."""
    if probabilities.shape[1] == 1:
        foreground = probabilities[:, 0]
        chosen = foreground >= 0.5
        return chosen.astype(np.uint8), np.where(chosen, foreground, 1 - foreground).astype(np.float32)
    best = np.array(probabilities[:, 0], dtype=np.float32)
    chosen = np.zeros(best.shape, dtype=np.uint8)
    for channel in range(1, probabilities.shape[1]):
        candidate = probabilities[:, channel]
        better = candidate > best
        chosen[better] = channel
        np.maximum(best, candidate, out=best)
    return chosen, best


def blended_decision(lower: tuple, upper: tuple, weight: float) -> tuple:
    """``(chosen, confidence)`` of ``lower + weight · (upper - lower)``, each side ``(probabilities (K, H, W),
    chosen (H, W), confidence (H, W))`` as :func:`decided_in_numpy` gives them: the shared choice where both
    agree (confidence blended), the K channels blended only where they differ."""
    probabilities, chosen, confidence = lower
    if weight <= 0.0 or upper is lower:
        return chosen, confidence
    if weight >= 1.0:
        return upper[1], upper[2]
    w = np.float32(weight)
    blended = confidence + w * (upper[2] - confidence)
    differ = np.flatnonzero(chosen != upper[1])
    chosen = chosen.copy()
    if differ.size:
        below = probabilities.reshape(probabilities.shape[0], -1)[:, differ]
        above = upper[0].reshape(probabilities.shape[0], -1)[:, differ]
        mixed_chosen, mixed_confidence = decided_in_numpy((below + w * (above - below))[None, :, :, None])
        chosen.reshape(-1)[differ] = mixed_chosen.reshape(-1)
        blended.reshape(-1)[differ] = mixed_confidence.reshape(-1)
    return chosen, blended

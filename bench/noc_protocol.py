"""The simulated-click protocol of the interactive benchmark (issue 26): where each click goes, when the
run stops, and what NoC@85 / NoC@90 count.

**Clicks.** The click simulation of the interactive literature (Xu et al., "Deep Interactive Object
Selection", CVPR 2016; Sofiiuk et al., RITM, ICIP 2022; in 3D: DeepEdit, Diaz-Pinto et al. 2022, and
nnInteractive, Isensee et al. 2025) puts each next click at the centre of the largest error region:
the point of the error farthest from its border (distance-transform maximum), positive where the
object was missed, negative where background was taken. In 3D this benchmark first chooses the slice
(along the volume's slice axis, the first array axis) with the most wrong voxels (missed object plus
false positive; the lowest index on a tie), then asks the interactive package's own 2D simulation,
:func:`UNetSegmentationLib.interactive.simulation.next_click`, for the click on that slice: the one
rule the interactive network was trained with. From nothing (an empty mask) the first click is
therefore positive, at the centre of the object's largest region on the slice where the object is
largest.

**Counting.** A run starts from a mask (empty, or the automatic result), records the 3D Dice before
any click, then clicks until the Dice reaches the highest target or ``cap`` clicks were given (20,
the literature's cap). NoC@t is the number of clicks after which the 3D Dice first reached ``t``
(0 when the starting mask already did); a run that never reached ``t`` counts as ``cap`` and is
reported as a failure.

**Timing.** Each interaction's wall time (the method's answer to one click, the whole updated mask
back in the caller's hands) is recorded; the benchmark reports median and p95.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Protocol, Sequence, Tuple

import numpy as np

#: a click on the volume's voxel grid: (slice, row, column, positive)
VoxelClick = Tuple[int, int, int, bool]
#: the Dice targets of NoC@85 and NoC@90
TARGETS: Tuple[float, ...] = (0.85, 0.90)
#: the literature's click cap
CAP = 20


class Refinement(Protocol):
    """One method under test (the interactive network's session, or Grow from seeds), started on one
    volume and one object: ``click`` adds a click and answers the whole current mask (bool, the
    volume's shape)."""

    def click(self, click: VoxelClick) -> np.ndarray: ...


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """3D Dice of two boolean masks (1.0 when both are empty)."""
    overlap = int(np.count_nonzero(prediction & truth))
    total = int(np.count_nonzero(prediction)) + int(np.count_nonzero(truth))
    return 1.0 if total == 0 else 2.0 * overlap / total


def error_slice(prediction: np.ndarray, truth: np.ndarray) -> Optional[int]:
    """The slice (first axis) with the most wrong voxels, the lowest index on a tie; None when the
    prediction is perfect."""
    wrong = np.count_nonzero(prediction != truth, axis=(1, 2))
    return None if not wrong.any() else int(np.argmax(wrong))


def next_click_3d(prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> Optional[VoxelClick]:
    """The next simulated click: on :func:`error_slice`, where the interactive package's
    ``next_click`` puts it (centre of that slice's largest error region)."""
    from UNetSegmentationLib.interactive.simulation import next_click

    index = error_slice(prediction, truth)
    if index is None:
        return None
    found = next_click(prediction[index], truth[index], rng)
    if found is None:
        return None
    row, column, positive = found
    return index, int(row), int(column), bool(positive)


@dataclass
class Trace:
    """One run: the Dice before any click and after each click, each click, each interaction's ms."""

    dice: List[float]
    clicks: List[VoxelClick] = field(default_factory=list)
    latency_ms: List[float] = field(default_factory=list)

    def noc(self, target: float, cap: int = CAP) -> Optional[int]:
        """Clicks until the Dice first reached ``target``; None when it did not within ``cap``."""
        for count, value in enumerate(self.dice[: cap + 1]):
            if value >= target:
                return count
        return None


def simulate(start: Callable[[], Tuple[Refinement, np.ndarray]], truth: np.ndarray, targets: Sequence[float] = TARGETS,
             cap: int = CAP, seed: int = 0) -> Trace:
    """Run the protocol: ``start()`` opens the method and answers it with its starting mask; clicks
    follow :func:`next_click_3d` until the Dice reaches ``max(targets)`` or ``cap`` clicks."""
    rng = np.random.default_rng(seed)
    method, mask = start()
    trace = Trace(dice=[dice(mask, truth)])
    while len(trace.clicks) < cap and trace.dice[-1] < max(targets):
        click = next_click_3d(mask, truth, rng)
        if click is None:
            break
        started = time.perf_counter()
        mask = method.click(click)
        trace.latency_ms.append((time.perf_counter() - started) * 1000.0)
        trace.clicks.append(click)
        trace.dice.append(dice(mask, truth))
    return trace

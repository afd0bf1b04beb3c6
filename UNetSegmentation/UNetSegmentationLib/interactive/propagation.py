"""Propagation in 2.5D: a correction made on one slice carried to its neighbours, outwards.

After an edit on slice k, slices k - 1 and k + 1 are segmented (in one network call) with k's corrected
mask as their previous-mask channel, then k ± 2 with k ± 1's, and so on, as mask propagation does in video and slice-by-slice segmentation
(the previous frame's mask as guidance: Perazzi et al., "Learning Video Object Segmentation from Static
Images", CVPR 2017; the slice-to-slice propagation of DeepEdit / MONAI Label's 2D models). The clicks
reach the neighbours too, fading with their distance (:func:`~.guidance.guidance_maps`).

It stops, on each side, where:

- the object ends: the slice's result is empty (nothing is written there or beyond);
- the change becomes negligible: the new mask differs from the slice's current one in at most
  :attr:`PropagationRule.negligible_share` of their union (and at most ``negligible_pixels`` pixels
  when the union is small): the slices beyond already agree with the correction;
- the object runs away: the new mask is more than :attr:`PropagationRule.max_growth` times the larger of
  the edited slice's mask and the slice's current one (a network that dilates the previous mask it is
  given grows it a little on every slice, past where the object ends: measured on the slicerio CT with an
  early interactive model, a 50-pixel lung click grew to 6025 pixels 12 slices on, where there is no lung;
  the slice is not written, a click there corrects it);
- the answer would replace, not correct, the slice's own mask (from the automatic result or an earlier
  edit): their Dice is below :attr:`PropagationRule.min_agreement` (0.5). Measured with the first shipped
  interactive model on the slicerio CT, its lungs' masks corrupted as an automatic result's errors would be
  (``interactive/simulation.corrupt_mask``): one click and its propagation took the right lung from Dice
  0.742 to 0.320 and another from 0.641 to 0.379 without this stop, to 0.701 and 0.601 with it (the same
  clicks without any propagation: 0.741, 0.635). A correction changes part of a mask; where the network's
  answer agrees with less than half of it, the user's click decides, not the neighbour's mask;
- it reaches a slice the user edited (their own clicks decide that slice: a far click corrects from
  there), the volume's end, or :attr:`PropagationRule.max_slices`.

Pure numpy over the session's two callables, so the rule is tested without a network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Container, List, Sequence, Tuple

import numpy as np

#: slices on each side a propagation runs at most (the issue's ±30, ≤ 3 s on 2 cores)
MAX_SLICES = 30


@dataclass(frozen=True)
class PropagationRule:
    """When a propagation stops (see the module's docstring); the threshold is the sessions' one (0.5)."""

    max_slices: int = MAX_SLICES
    max_growth: float = 2.0
    min_agreement: float = 0.5
    negligible_share: float = 0.01
    negligible_pixels: int = 4
    threshold: float = 0.5

    def runs_away(self, new: np.ndarray, current: np.ndarray, source_area: int) -> bool:
        """Whether the new mask is more than ``max_growth`` times the edited slice's and the slice's own."""
        return np.count_nonzero(new) > self.max_growth * max(source_area, np.count_nonzero(current))

    def replaces(self, new: np.ndarray, current: np.ndarray) -> bool:
        """Whether the new mask agrees with the slice's own mask (where it has one) by a Dice below ``min_agreement``."""
        own = np.count_nonzero(current)
        return own > 0 and 2.0 * np.count_nonzero(new & current) < self.min_agreement * (own + np.count_nonzero(new))

    def negligible(self, new: np.ndarray, current: np.ndarray) -> bool:
        """Whether the new mask differs from the current one by no more than the rule's share of their union."""
        changed = int(np.count_nonzero(new != current))
        union = int(np.count_nonzero(new | current))
        return changed <= max(self.negligible_pixels, self.negligible_share * union)


#: the model-grid probabilities of some slices from their previous-mask channels: ``segment(slices, priors) -> (N, H, W)``
Segment = Callable[[Sequence[int], Sequence[np.ndarray]], np.ndarray]
#: a slice's current model-grid probabilities
Current = Callable[[int], np.ndarray]


def propagate(start: int, slice_count: int, source: np.ndarray, segment: Segment, current: Current,
              edited: Container[int] = (), rule: PropagationRule = PropagationRule(), directions: Sequence[int] = (-1, +1)) -> List[Tuple[int, np.ndarray]]:
    """``[(slice, probabilities), ...]`` to write on the slices on each side of ``start`` (``directions``),
    each segmented with the previous one's result (``source``: ``start`` 's own) as its prior, up to where
    :class:`PropagationRule` stops that side. The sides advance together, one network call for both
    (a batch of two costs less than two calls of one: the network's fixed cost per call is paid once)."""
    results: List[Tuple[int, np.ndarray]] = []
    source_area = int(np.count_nonzero(source >= rule.threshold))
    fronts = {direction: source for direction in directions}  # each side still going → its last result
    for distance in range(1, rule.max_slices + 1):
        for direction in list(fronts):
            k = start + direction * distance
            if k < 0 or k >= slice_count or k in edited:
                del fronts[direction]
        if not fronts:
            break
        sides = list(fronts)
        slices = [start + direction * distance for direction in sides]
        for direction, k, probabilities in zip(sides, slices, segment(slices, [fronts[d] for d in sides])):
            mask = probabilities >= rule.threshold
            was = current(k) >= rule.threshold
            if not mask.any() or rule.negligible(mask, was) or rule.runs_away(mask, was, source_area) or rule.replaces(mask, was):
                del fronts[direction]  # the object ended, nothing left to carry, a run-away growth or a replacement: not written
            else:
                results.append((k, probabilities))
                fronts[direction] = probabilities
    return results

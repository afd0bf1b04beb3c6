"""A refinement session: one volume, one interactive model, one object, and the user's clicks on it.

The session opens once per object: the volume is read and resampled to the model grid once
(:class:`~.session_grid.SessionGrid`), the initial mask (a segment of the automatic result, or nothing)
is the first previous-mask channel. Then:

- a click (or a scribble) re-segments only the slice(s) it lies on: that slice's ``2c+1`` image channels,
  its current mask as the previous-mask channel and every click's guidance maps
  (:func:`~.guidance.guidance_maps`; clicks on other slices fade with their distance), one network call,
  around the object and the clicks only (:mod:`.work_region`);
- ``propagate`` carries the slices edited since the last propagation to their neighbours
  (:mod:`.propagation`);
- ``undo`` puts back the slices, clicks and edits of the last click, scribble or propagation;
- the result (:attr:`RefineSession.mask`) is the object on the input's grid; nothing leaves the session
  unless its caller accepts it (``unetseg refine`` writes it, the warm engine on ``refine_accept``).

Every answer is the changed slices' masks on the input's grid (:class:`SliceMasks`), in the input
array's own layout, so a caller puts them back without knowing the model grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.interactive.click_points import ClickPoints
from UNetSegmentationLib.interactive.guidance import GUIDANCE_CHANNELS, Click, GuidanceSpec, guidance_maps, scribble_clicks
from UNetSegmentationLib.interactive.propagation import PropagationRule, propagate
from UNetSegmentationLib.interactive.session_grid import SessionGrid
from UNetSegmentationLib.interactive.work_region import work_box
from UNetSegmentationLib.io.volumes import check_finite, inspect_input, read_volume, verify_data
from UNetSegmentationLib.model.metadata import ModelMetadata


class GuidedModel(Protocol):
    """What a session needs of an interactive network (:class:`~.predictor.InteractiveModel` is one;
    tests give a stub): its metadata (normalisation, spacing, slice distance, context), its guidance
    encoding, and probabilities of the object for image channels and guidance."""

    metadata: ModelMetadata
    spec: GuidanceSpec

    def predict(self, image_channels: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        """``(N, 2c+1, H, W)`` normalised images and ``(N, 3, H, W)`` guidance → ``(N, H, W)`` probabilities."""
        ...


@dataclass
class SliceMasks:
    """An answer: the masks of the changed slices on the input's grid.

    ``axis``: the numpy axis of the input's ``[k, j, i]`` array the slices run along; ``slices``: their
    indices along it; ``masks``: ``(len(slices), ...)`` bool, each the input array's slice as
    ``np.take(array, slice, axis)`` gives it (``np.moveaxis(labels, axis, 0)[slices] = masks`` puts them back);
    ``seconds``: what the edit took.
    """

    axis: int
    slices: List[int]
    masks: np.ndarray
    seconds: float = 0.0


@dataclass
class _Step:
    """One undoable edit: the slices it changed as they were before it, and the session's state then."""

    kind: str
    clicks: int
    edited: frozenset
    pending: Tuple[int, ...]
    saved: Dict[int, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def read_session_input(path, source: Optional[str] = None) -> sitk.Image:
    """The input volume read as ``predict`` reads it (its header checked first, its data whole, finite):
    an empty, 2D, 4D or vector volume, a missing voxel size or a NaN is one :class:`UserError`."""
    header = verify_data(inspect_input(path))
    image = read_volume(header.path, header)
    check_finite(sitk.GetArrayViewFromImage(image), source=source or str(path))
    return image


class RefineSession:
    """The state of one object's refinement (see the module's docstring).

    Args:
        grid: the volume on the model grid (:meth:`open` makes it).
        model: the interactive network (:class:`GuidedModel`).
        initial: the object to start from, a ``[k, j, i]`` mask on the input's grid (None: nothing).
        rule: when a propagation stops.
        crop: the network runs around the object and the clicks only (:mod:`.work_region`); False: whole slices.
    """

    def __init__(self, grid: SessionGrid, model: GuidedModel, initial: Optional[np.ndarray] = None, rule: PropagationRule = PropagationRule(),
                 crop: bool = True) -> None:
        self.grid = grid
        self.model = model
        self.rule = rule
        self.crop = crop
        shape = (grid.size[2], grid.size[1], grid.size[0])
        if initial is not None and tuple(initial.shape) != shape:
            raise UserError(f"the initial mask has {tuple(initial.shape)} voxels ([k, j, i]); the volume has {shape}")
        self.mask = np.zeros(shape, dtype=bool) if initial is None else np.asarray(initial, dtype=bool).copy()
        self._view = grid.geometry.slices_view(self.mask)  # [slice, row, column]: writes go through to ``mask``
        self.prior = np.zeros((grid.slice_count,) + grid.model_size, dtype=np.float32)  # the previous-mask channel
        for k in np.flatnonzero(self._view.any(axis=(1, 2))):
            self.prior[k] = grid.model_probabilities(self._view[k][None])[0]
        self.clicks: List[Click] = []
        self.edited: set = set()  # slices the user clicked or scribbled on
        self.pending: List[int] = []  # ... since the last propagation
        self.changed: set = set()  # every slice changed since the session opened
        self.click_latency_ms: List[float] = []
        self._undo: List[_Step] = []

    @classmethod
    def open(cls, image: sitk.Image, model: GuidedModel, initial: Optional[np.ndarray] = None, axis: Optional[int] = None,
             source: str = "input", rule: PropagationRule = PropagationRule(), crop: bool = True) -> "RefineSession":
        """A session on ``image`` (read by :func:`read_session_input`); a volume the model cannot handle is one message."""
        grid = SessionGrid(image, sitk.GetArrayViewFromImage(image), model.metadata, axis)
        grid.check_handled(source)
        return cls(grid, model, initial, rule, crop)

    # -- edits -----------------------------------------------------------------------------------------

    def add(self, click: ClickPoints) -> SliceMasks:
        """Apply one click or scribble: the slice(s) it lies on are segmented again with it; their masks."""
        started = time.perf_counter()
        positions = [self.grid.position(click, point) for point in click.points]  # outside the volume: refused before any change
        new = scribble_clicks(positions, click.positive) if click.scribble else [Click(positions[0], click.positive)]
        slices = sorted({int(round(c.position[0])) for c in new})
        step = self._begin("scribble" if click.scribble else "click")
        self.clicks.extend(new)
        probabilities = self._segment(slices, [self.prior[k] for k in slices])
        for k, values in zip(slices, probabilities):
            self._write(step, k, values)
        self.edited.update(slices)
        self.pending.extend(k for k in slices if k not in self.pending)
        self._undo.append(step)
        answer = self._answer(slices, started)
        self.click_latency_ms.append(round(answer.seconds * 1000.0, 2))
        return answer

    def propagate(self, slices: Optional[Sequence[int]] = None) -> SliceMasks:
        """Carry the slices edited since the last propagation (or ``slices``) to their neighbours; the
        masks of every slice it changed."""
        started = time.perf_counter()
        sources = list(self.pending) if slices is None else [self._slice_index(k) for k in slices]
        step = self._begin("propagate")
        written: List[int] = []
        for source in sources:
            results = propagate(source, self.grid.slice_count, self.prior[source], self._segment, self.prior.__getitem__, self.edited, self.rule)
            for k, values in results:
                self._write(step, k, values)
                written.append(k)
        self.pending = []
        if written:  # a propagation that changed nothing is nothing to undo
            self._undo.append(step)
        return self._answer(sorted(set(written)), started)

    def undo(self) -> SliceMasks:
        """Take back the last click, scribble or propagation; the masks of the slices it had changed."""
        started = time.perf_counter()
        if not self._undo:
            raise UserError("nothing to undo: no click, scribble or propagation since the session opened")
        step = self._undo.pop()
        for k, (mask, prior) in step.saved.items():
            self._view[k] = mask
            self.prior[k] = prior
        del self.clicks[step.clicks:]
        self.edited, self.pending = set(step.edited), list(step.pending)
        return self._answer(sorted(step.saved), started)

    @property
    def can_undo(self) -> int:
        """How many edits can be taken back."""
        return len(self._undo)

    # -- the network -----------------------------------------------------------------------------------

    def _segment(self, slices: Sequence[int], priors: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, rows', columns')`` probabilities of ``slices`` with ``priors`` as their previous-mask channel."""
        grid = self.grid
        guidance = np.empty((len(slices), GUIDANCE_CHANNELS) + grid.model_size, dtype=np.float32)
        for n, (k, prior) in enumerate(zip(slices, priors)):
            guidance[n, 0] = prior
            guidance[n, 1:] = guidance_maps(self.clicks, float(k), grid.model_size, grid.model_spacing, grid.slice_spacing, self.model.spec)
        probabilities = np.zeros((len(slices),) + grid.model_size, dtype=np.float32)
        box = work_box(guidance, grid.model_spacing, getattr(self.model, "multiple", 1)) if self.crop else (0, grid.model_size[0], 0, grid.model_size[1])
        if box is None:  # neither object nor click near these slices: nothing to segment
            return probabilities
        r0, r1, c0, c1 = box
        images = grid.channels(slices)[:, :, r0:r1, c0:c1]
        probabilities[:, r0:r1, c0:c1] = self.model.predict(np.ascontiguousarray(images), np.ascontiguousarray(guidance[:, :, r0:r1, c0:c1]))
        return probabilities

    # -- state -----------------------------------------------------------------------------------------

    def _begin(self, kind: str) -> _Step:
        return _Step(kind, len(self.clicks), frozenset(self.edited), tuple(self.pending))

    def _write(self, step: _Step, k: int, probabilities: np.ndarray) -> None:
        if k not in step.saved:
            step.saved[k] = (self._view[k].copy(), self.prior[k].copy())
        self.prior[k] = probabilities
        self._view[k] = self.grid.input_masks(probabilities[None])[0]
        self.changed.add(k)

    def _answer(self, slices: List[int], started: float) -> SliceMasks:
        axis = self.grid.slice_axis_of_array()
        masks = np.moveaxis(np.take(self.mask, slices, axis=axis), axis, 0) if slices else np.zeros((0,), dtype=bool)
        return SliceMasks(axis, list(slices), np.ascontiguousarray(masks), time.perf_counter() - started)

    def _slice_index(self, value: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < self.grid.slice_count:
            raise UserError(f"slice {value!r} is not a slice of the volume (0..{self.grid.slice_count - 1} along its slice axis)")
        return int(value)

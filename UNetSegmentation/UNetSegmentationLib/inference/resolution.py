"""Segmenting at the model's resolution: how a volume's slices meet the spacing a network learned at.

A network learns structures at one size in pixels. :class:`ModelGrid` says, for one volume, how its
slices are brought to the model's in-plane spacing (and the probabilities back onto the input's exact
pixel grid before the label decision) and how far apart, in slices, the 2.5D neighbour channels are
taken so that they lie the model's slice distance away in millimetres.

Both grids cover the same physical extent: an input slice of ``n`` pixels of ``s`` mm becomes
``n' = round(n·s/m)`` model pixels, each ``n·s/n'`` mm (within half a pixel of ``m`` over the slice),
with pixel centres placed as in ``align_corners=False`` interpolation, so going there and back is
exact in geometry. Intensities and probabilities are resampled bilinearly at the new pixel centres
(``align_corners=False``), in both directions: labels follow smooth boundaries, not blocky copies of
model pixels. Shrinking without a wider filter was measured best (the slicerio CT at 0.76 mm, bundled
model, ribs Dice 0.833 against 0.846 on its own grid; averaging each model pixel's area: 0.816;
bilinear with antialiasing, twice that width: 0.794; BENCHMARKS.md, *Clinical resolution*) and is the
rule along the slice axis too (:mod:`.model_slices`). Numpy arrays are resampled in numpy
(:func:`bilinear`: separable, two gathers and a blend per axis; the ONNX path imports no PyTorch, which
cost more than all the resampling of a clinical CT), tensors by PyTorch's ``interpolate`` on their
device, with the same rule; both ten times faster than SimpleITK slice by slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np

from UNetSegmentationLib.geometry.slice_distance import is_thin_step, neighbour_step
from UNetSegmentationLib.geometry.spacing_match import same_in_plane, same_spacing

if TYPE_CHECKING:  # annotations only: torch is imported where the resampling runs
    import torch

    from UNetSegmentationLib.model.metadata import ModelMetadata

Size = Tuple[int, int]


def model_grid_size(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> Size:
    """``(rows', columns')``: the pixels of a ``shape`` (rows, columns) slice of ``spacing`` mm at
    ``target`` mm, covering the same extent (at least one pixel). Sizes stay as they are where the
    spacing is within :data:`~UNetSegmentationLib.geometry.spacing_match.SAME_SPACING` of the target."""
    sizes = []
    for count, have, want in zip(shape, spacing, target):
        same = same_spacing(have, want)
        sizes.append(int(count) if same else max(1, int(round(count * have / want))))
    return sizes[0], sizes[1]


def _interpolated(batch: "torch.Tensor", size: Size) -> "torch.Tensor":
    import torch.nn.functional as F

    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False)


def axis_weights(count: int, size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(first, second, weight of the second)`` source pixels of each of ``size`` output pixels along an
    axis of ``count``: bilinear at the new pixel centres, ``align_corners=False``, held at the edges
    (PyTorch's ``interpolate`` rule, so a tensor and a numpy array are resampled alike)."""
    source = np.maximum((np.arange(size, dtype=np.float64) + 0.5) * (count / size) - 0.5, 0.0)
    first = np.minimum(np.floor(source).astype(np.intp), count - 1)
    second = np.minimum(first + 1, count - 1)
    return first, second, (source - first).astype(np.float32)


def _along_rows(batch: np.ndarray, size: int) -> np.ndarray:
    """``batch`` resampled to ``size`` along its second-to-last axis: whole rows gathered and blended."""
    first, second, weight = axis_weights(batch.shape[-2], size)
    upper = batch[..., first, :]
    return upper + weight[:, None] * (batch[..., second, :] - upper)


def bilinear(batch: np.ndarray, size: Size) -> np.ndarray:
    """``(..., H, W)`` float32 → ``(..., rows', columns')`` float32, bilinear, in numpy (the same values as
    PyTorch's ``interpolate(mode="bilinear", align_corners=False)`` up to float rounding; no PyTorch for
    a run whose predictor gives numpy). Separable, each pass gathering whole rows: the columns pass on the
    transposed array (gathering single elements along the last axis is twice as slow as transposing,
    and slower than PyTorch)."""
    batch = np.asarray(batch, dtype=np.float32)
    transposed = np.ascontiguousarray(batch.swapaxes(-1, -2))
    columns = np.ascontiguousarray(_along_rows(transposed, size[1]).swapaxes(-1, -2))
    return _along_rows(columns, size[0])


def resample_images(batch: np.ndarray, size: Size) -> np.ndarray:
    """``(B, C, H, W)`` float32 intensities → ``(B, C, rows', columns')`` float32, bilinear (the array itself
    when the size is already ``size``)."""
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    return bilinear(batch, size)


def resample_probabilities(probabilities, size: Size):
    """``(B, K, h, w)`` class probabilities on the model grid → ``(B, K, rows, columns)`` on the input grid.

    ``probabilities`` as the predictor gives them: a tensor (resampled on its device: a GPU run resamples
    on the GPU) or ONNX Runtime's numpy array (resampled in numpy: the ONNX path imports no PyTorch).
    Already of ``size``: returned as they are."""
    if tuple(probabilities.shape[-2:]) == tuple(size):
        return probabilities
    if isinstance(probabilities, np.ndarray):
        return bilinear(probabilities, size)
    import torch

    with torch.inference_mode():
        return _interpolated(probabilities.float(), size)


def resample_labels(labels: np.ndarray, size: Size, channel_count: int) -> np.ndarray:
    """``(B, H, W)`` channel indices (0 background … ``channel_count - 1``) → ``(B, rows', columns')`` uint8:
    each channel's indicator resampled like an image and the largest taken (no blocky nearest-neighbour
    copies, and thin structures survive a shrink as long as they stay the locally largest channel)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.astype(np.uint8, copy=False)
    import torch

    with torch.inference_mode():
        indices = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
        one_hot = torch.nn.functional.one_hot(indices, channel_count).permute(0, 3, 1, 2).float()
        return _interpolated(one_hot, size).argmax(dim=1).to(torch.uint8).numpy()


@dataclass(frozen=True)
class ModelGrid:
    """How one volume's slices meet the model.

    ``input_spacing``: (row, column) mm of the input's slices (the slice view's in-plane axes);
    ``model_spacing``: (row, column) mm the network learned at, None to run on the input's grid;
    ``context_step``: how many input slices apart the 2.5D neighbours are taken (1.0: the next slice;
    4.0 for a model trained with 10 mm between slices on a 2.5 mm scan; fractional steps interpolate).
    """

    input_spacing: Tuple[float, float]
    model_spacing: Optional[Tuple[float, float]] = None
    context_step: float = 1.0

    def model_size(self, shape: Sequence[int]) -> Size:
        """The model-grid size of an input region of ``shape`` (rows, columns)."""
        if self.model_spacing is None:
            return int(shape[0]), int(shape[1])
        return model_grid_size(shape, self.input_spacing, self.model_spacing)

    def network_positions(self, slice_count: int) -> np.ndarray:
        """Where along the slice axis the network runs, in (fractional) input slices: on every slice, or,
        where the scan's slices lie closer together than the model's slice distance (``context_step`` > 1),
        at the centres of cells of that distance covering the same extent (as in-plane): a model that
        learned from slices 10 mm apart gets slices 10 mm apart, and the probabilities between them are
        interpolated (:mod:`.model_slices`)."""
        if not is_thin_step(self.context_step):
            return np.arange(slice_count, dtype=np.float64)
        cells = max(1, int(round(slice_count / self.context_step)))
        return (np.arange(cells) + 0.5) * (slice_count / cells) - 0.5

    def input_pixels_per_model_pixel(self) -> Tuple[float, float]:
        """How many input pixels one model pixel spans, along rows and columns."""
        if self.model_spacing is None:
            return 1.0, 1.0
        return self.model_spacing[0] / self.input_spacing[0], self.model_spacing[1] / self.input_spacing[1]

    @property
    def resamples(self) -> bool:
        """Whether slices are resampled in-plane at all (the model's spacing differs from the input's)."""
        if self.model_spacing is None:
            return False
        return not same_in_plane(self.input_spacing, self.model_spacing)

    def describe(self) -> str:
        """One line for the ``start`` event and the log."""
        rows, columns = self.input_spacing
        text = f"input {rows:.3g}x{columns:.3g} mm"
        if self.model_spacing is None:
            text += ", on the input's grid"
        elif self.resamples:
            text += f", segmented at the model's {self.model_spacing[0]:.3g}x{self.model_spacing[1]:.3g} mm"
        else:
            text += ", the model's spacing"
        if is_thin_step(self.context_step):
            return text + f"; every {self.context_step:.3g} slices (the model's slice distance), neighbours as far apart"
        return text + f"; 2.5D neighbours {self.context_step:.3g} slice(s) apart"


def plan_model_grid(spacing: Sequence[float], metadata: "ModelMetadata", at_model_spacing: bool = True) -> ModelGrid:
    """The :class:`ModelGrid` of a volume whose slice view has ``spacing`` (slice, row, column) mm.

    ``at_model_spacing`` False (``--spacing native``), or a checkpoint that records no spacing: the
    input's grid and the next slices as neighbours, as the network is run on the voxels it is given.
    """
    slice_spacing, rows, columns = (float(s) for s in spacing)
    in_plane = (rows, columns)
    if not at_model_spacing:
        return ModelGrid(in_plane)
    return ModelGrid(in_plane, metadata.in_plane_spacing, neighbour_step(metadata.context_distance, slice_spacing, metadata.context))

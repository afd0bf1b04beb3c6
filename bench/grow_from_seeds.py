"""Slicer's own "Grow from seeds" as the CPU baseline of the interactive benchmark (issue 26).

The Segment Editor's "Grow from seeds" effect runs ``vtkImageGrowCutSegment``, the filter slicer-core
ships (``slicer.vtkImageGrowCutSegment``): Fast GrowCut (Zhu, Kolesov, Gao, Kikinis, Tannenbaum, "An
Effective Interactive Medical Image Segmentation Method Using Fast GrowCut", MICCAI 2014 IMIC
workshop), a shortest-path approximation of GrowCut (Vezhnevets & Konouchine, Graphicon 2005). It
takes the intensity volume and a seed label volume (0 = not a seed, one label per segment) and labels
every voxel with the seed label whose path to it is cheapest; after a first computation, seeds that
are only *added* are grown incrementally, and the filter must be ``Reset()`` when a seed is removed or
relabelled (its documented contract). Here it is driven as a Slicer user would drive it with clicks:

- **A click is a seed disk** on the clicked slice, of the same radius as the interactive network's
  click disk (``radius_mm``, in-plane millimetres): label 1 (object) for a positive click, 2
  (background) for a negative one. A click paints over the seeds under it, as Segment Editor's paint
  does with "overwrite other segments"; when that relabels an earlier seed the filter is reset
  (full recomputation, timed like any other interaction).
- **A background seed is always there.** Grow from seeds needs at least two labels, and a first
  positive click alone would fill the whole volume. The background seed given equally to every run is
  the volume's four side faces (the in-plane border of every slice: its first and last row and
  column). The first and last slices are not seeded, since an organ may reach them.
- **Every voxel takes part.** The filter neither grows from nor into the image's outermost voxels
  (measured: seeds there stay where they are), so the volume is padded by one replicated voxel on
  each face before it is handed over, and the padding is cut off the result.
- **From the automatic result**, its mask is the object's seed, as Grow from seeds takes an existing
  segment's content as its seed: the mask eroded by ``band`` pixels in-plane is object, and a one-pixel
  shell ``band`` pixels outside it is background (the band between is left for the filter to decide).
  Beyond the shell nothing is seeded, so a positive click on an object the automatic result missed
  grows there, and the regions no seed reaches first stay background (the border seed's).

The mask of the object is where the filter's output is the object label. No distance penalty (the
effect's default "seed locality" of 0). The engine never imports this (it needs VTK): it is a
benchmark adapter.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from noc_protocol import VoxelClick

OBJECT, BACKGROUND = 1, 2


def _image_data(array: np.ndarray, spacing_mm: Sequence[float]):
    """A vtkImageData sharing ``array``'s memory ((slice, row, column) order: x = column)."""
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonDataModel import vtkImageData

    image = vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.SetSpacing(float(spacing_mm[2]), float(spacing_mm[1]), float(spacing_mm[0]))
    scalars = numpy_to_vtk(array.ravel(), deep=False)
    image.GetPointData().SetScalars(scalars)
    return image, scalars


def disk(shape: Sequence[int], row: float, column: float, radius_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    """The in-plane disk of ``radius_mm`` around (row, column), at least the clicked pixel."""
    rows = (np.arange(shape[0]) - row) * spacing_mm[0]
    columns = (np.arange(shape[1]) - column) * spacing_mm[1]
    inside = rows[:, None] ** 2 + columns[None, :] ** 2 <= radius_mm ** 2
    inside[int(round(row)), int(round(column))] = True
    return inside


class GrowFromSeeds:
    """One Grow-from-seeds run on one volume and one object (``click`` answers the current mask)."""

    def __init__(self, image: np.ndarray, spacing_mm: Sequence[float], radius_mm: float,
                 initial: Optional[np.ndarray] = None, band: int = 2) -> None:
        """``image`` (slice, row, column), ``spacing_mm`` in the same order, ``initial`` an optional
        starting mask (the automatic result)."""
        import slicer

        self.spacing_mm = tuple(float(s) for s in spacing_mm)
        self.radius_mm = float(radius_mm)
        self.intensity = np.pad(image, 1, mode="edge")
        self._padded_seeds = np.zeros(self.intensity.shape, dtype=np.int16)
        self.seeds = self._padded_seeds[1:-1, 1:-1, 1:-1]  # a view: the volume's own voxels
        self.seeds[:, [0, -1], :] = BACKGROUND
        self.seeds[:, :, [0, -1]] = BACKGROUND
        if initial is not None and initial.any():
            plane = np.zeros((1, 3, 3), dtype=bool)
            plane[0] = ndimage.generate_binary_structure(2, 1)
            near = ndimage.binary_dilation(initial, plane, iterations=band)
            self.seeds[ndimage.binary_dilation(near, plane, iterations=1) & ~near] = BACKGROUND
            self.seeds[ndimage.binary_erosion(initial, plane, iterations=band)] = OBJECT
        self.mask = np.zeros(image.shape, dtype=bool) if initial is None else initial.astype(bool).copy()
        self._intensity, self._intensity_scalars = _image_data(self.intensity, self.spacing_mm)
        self._seed_image, self._seed_scalars = _image_data(self._padded_seeds, self.spacing_mm)
        self._filter = slicer.vtkImageGrowCutSegment()
        self._filter.SetIntensityVolume(self._intensity)
        self._filter.SetSeedLabelVolume(self._seed_image)
        self._filter.SetDistancePenalty(0.0)
        self._computed = False

    def click(self, click: VoxelClick) -> np.ndarray:
        """Paint the click's seed disk and grow; the object mask after this interaction."""
        index, row, column, positive = click
        label = OBJECT if positive else BACKGROUND
        inside = disk(self.seeds.shape[1:], row, column, self.radius_mm, self.spacing_mm[1:])
        plane = self.seeds[index]
        relabelled = bool(np.any((plane[inside] != 0) & (plane[inside] != label)))
        plane[inside] = label
        if relabelled and self._computed:
            self._filter.Reset()
        self._seed_scalars.Modified()
        self._seed_image.Modified()
        if not (self.seeds == OBJECT).any():
            return self.mask  # only background seeds: nothing is the object
        self._filter.Update()
        self._computed = True
        from vtkmodules.util.numpy_support import vtk_to_numpy

        output = vtk_to_numpy(self._filter.GetOutput().GetPointData().GetScalars()).reshape(self._padded_seeds.shape)
        self.mask = output[1:-1, 1:-1, 1:-1] == OBJECT
        return self.mask

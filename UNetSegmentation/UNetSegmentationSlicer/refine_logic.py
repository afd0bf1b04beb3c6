"""The scene side of the "UNet refine" Segment Editor effect: clicks into the engine's coordinates, the
engine's proposal shown as a preview, and Apply or Cancel, on arrays and MRML nodes (no Qt).

The effect refines the *selected* segment: the engine proposes a new mask of that one object on some
slices (the clicked slice and those its propagation reached), and only those slices of that segment
change. The proposal is shown in a preview segmentation node of its own (the target segment hidden
meanwhile, as Grow from seeds previews), already cut to what Apply may change. Apply saves Segment
Editor's undo state first, then edits the segment through Segment Editor's own modification
(``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap``, or the effect's ``modifySegmentByLabelmap``
inside Slicer), in two steps per run of slices: *add* where the proposal has the object, *remove* where
it has not. So Segment Editor decides, exactly as for its Paint and Erase, what the editable area
allows (everywhere, inside or outside all or the visible segments, the source volume's intensity range)
and which other segments lose voxels (overwrite all, visible or none): a "set" would clear the segment
outside the slices, and masking a set is not the same as masking a paint. Cancel removes the preview
and changes nothing.

The slices whose segment Apply changed are remembered on the segmentation node
(:func:`remember_corrected_slices`, along the engine's slice axis of the source volume): "Improve the
model" trains on them when its slice box is empty (:func:`corrected_slices`), since the other slices
are still the model's own result. Which *classes* were corrected needs nothing here: the segment no
longer matches the fingerprint of the model's result (:mod:`.finetune`).

Clicks: a left click adds (positive), a right click or a shift-click removes (negative)
(:func:`click_is_positive`); a click's world RAS point becomes the source volume's continuous voxel
index and the LPS millimetres of the file the engine reads (:func:`volume_click`).

Plain MRML calls and numpy (imported where used: the module's setup stays light): tested on the
``slicer-core`` scene (``Testing/test_mrml_refine_effect.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Sequence, Set, Tuple

import slicer
import vtk

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.grammar.slice_ranges import format_slice_ranges, parse_slice_ranges
from UNetSegmentationSlicer import slices

#: node attribute of the preview segmentation (a transient node: never saved with the scene)
PREVIEW_ATTRIBUTE = "UNetSegmentation.RefinePreview"
#: segmentation attribute: the slices the user corrected ("12-18,40", along the source volume's slice axis)
CORRECTED_SLICES_ATTRIBUTE = "UNetSegmentation.CorrectedSlices"
#: segmentation reference: the volume whose slices those are (another volume's numbers would be wrong)
CORRECTED_VOLUME_REFERENCE = "UNetSegmentation.correctedSlicesVolume"
#: the preview's fill opacity in the slice views (its outline is drawn in full)
PREVIEW_OPACITY = 0.6


@dataclass(frozen=True)
class VolumeClick:
    """A click on the source volume: ``ijk`` its continuous voxel index (i, j, k), ``lps`` the same point
    in millimetres in the frame of the volume file the engine reads (LPS), ``positive`` add or remove."""

    ijk: Tuple[float, float, float]
    lps: Tuple[float, float, float]
    positive: bool


def click_is_positive(left: bool, right: bool, shift: bool) -> Optional[bool]:
    """Which click a mouse press is: True positive (a left click), False negative (a right click or a
    shift + left click), None not a click of this effect."""
    if right:
        return False
    if left:
        return not shift
    return None


def volume_click(volume_node, ras: Sequence[float], positive: bool) -> VolumeClick:
    """The click at world ``ras`` on ``volume_node``; RuntimeError when it is outside the volume.

    The point goes through the inverse of the volume's parent transforms (the engine reads the volume
    file, written without them by :func:`.scene.export_volume`), then its IJK-to-RAS matrix; LPS is that
    local RAS with x and y negated (the file's frame, as ITK reads it)."""
    point = [float(value) for value in ras[:3]]
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        from_world = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, from_world)
        point = list(from_world.TransformPoint(point))
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(matrix)
    ijk = tuple(float(value) for value in matrix.MultiplyPoint(point + [1.0])[:3])
    dimensions = volume_node.GetImageData().GetDimensions()
    if not all(-0.5 <= index <= size - 0.5 for index, size in zip(ijk, dimensions)):
        raise RuntimeError("the click is outside the volume '%s'" % volume_node.GetName())
    return VolumeClick(ijk, (-point[0], -point[1], point[2]), bool(positive))


@dataclass
class Proposal:
    """What the engine answered, in its session's form (``interactive/session.py``'s ``SliceMasks``): the
    object's masks on ``slices`` along numpy axis ``axis`` of the source volume's array [k, j, i],
    ``masks[n]`` being ``np.take(array, slices[n], axis)``'s pixels."""

    slices: Sequence[int]
    masks: Any
    axis: int


@dataclass(frozen=True)
class Applied:
    """What Apply did to the target segment: the slices it changed (along the source volume's slice
    axis) and the voxels added and removed, as measured on the volume's grid afterwards."""

    slices: List[int]
    added: int
    removed: int


class SegmentEditing(Protocol):
    """How the logic edits a segment as Segment Editor does (its undo state, masking and overwrite)."""

    def save_state_for_undo(self) -> None: ...

    def modify(self, segmentation_node, segment_id: str, modifier, add: bool) -> None: ...

    def not_editable(self, volume_node) -> Any: ...  # a bool array [k, j, i], or None: editable everywhere


class EditorLogicEditing:
    """Segment Editor's own logic (``vtkSlicerSegmentEditorLogic``) on a Segment Editor parameter set
    node (``vtkMRMLSegmentEditorNode``: the segmentation, the selected segment, the source volume, the
    mask and overwrite settings): the editing of scripts and tests, and the preview's editable area in
    Slicer (where the effect routes undo and modification through the widget instead)."""

    def __init__(self, editor_node) -> None:
        self.editor_node = editor_node
        self.logic = None
        if hasattr(slicer, "vtkSlicerSegmentEditorLogic"):  # a Slicer without it: edits through the effect, the preview uncut
            self.logic = slicer.vtkSlicerSegmentEditorLogic()
            self.logic.SetMRMLScene(editor_node.GetScene())
            self.logic.SetSegmentEditorNode(editor_node)

    def save_state_for_undo(self) -> None:
        self.logic.SaveStateForUndo()

    def undo(self) -> None:
        self.logic.Undo()

    def modify(self, segmentation_node, segment_id: str, modifier, add: bool) -> None:
        mode = self.logic.ModificationModeAdd if add else self.logic.ModificationModeRemove
        self.logic.ModifySegmentByLabelmap(segmentation_node, segment_id, modifier, mode, False, False)

    def not_editable(self, volume_node):
        """Where the editor node's settings forbid editing, as a bool array [k, j, i] on ``volume_node``'s
        grid: the segment-based mask Segment Editor computes, and the source intensity range; None when
        editing is allowed everywhere (Segment Editor's default: nothing to compute)."""
        import numpy as np

        logic, node = self.logic, self.editor_node
        everywhere = node.GetMaskMode() == slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere
        if everywhere and not node.GetSourceVolumeIntensityMask():
            return None
        blocked = np.zeros(_array_shape(volume_node), dtype=bool)
        if not everywhere and logic is not None and logic.ResetModifierLabelmapToDefault() and logic.UpdateMaskLabelmap() and logic.GetMaskLabelmap() is not None:
            segmentation_node = node.GetSegmentationNode()
            reference = _volume_grid_image(volume_node, segmentation_node)
            resampled = slicer.vtkOrientedImageData()
            if slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(logic.GetMaskLabelmap(), reference, resampled):
                blocked |= _image_array(resampled, volume_node.GetImageData().GetExtent()).astype(bool)
        if node.GetSourceVolumeIntensityMask():
            low, high = node.GetSourceVolumeIntensityMaskRange()
            values = slicer.util.arrayFromVolume(volume_node)
            blocked |= (values < low) | (values > high)
        return blocked


class RefineLogic:
    """One refinement of one segment: :meth:`start`, then :meth:`show` each proposal, then :meth:`apply`
    or :meth:`cancel`."""

    def __init__(self, editing: SegmentEditing) -> None:
        self.editing = editing
        self.segmentation_node = None
        self.segment_id: Optional[str] = None
        self.volume_node = None
        self.preview_node = None
        self._original = None  # the target segment on the volume's grid when the refinement started
        self._proposed = None  # the target as Apply would leave it, on the volume's grid
        self._blocked = None  # where editing is not allowed (asked once per refinement; None: everywhere allowed)
        self._hidden: Optional[bool] = None  # the target's visibility before the preview hid it
        self._blocked_any, self._asked = False, False
        self._touched: Dict[int, Set[int]] = {}  # the slices proposals wrote, by numpy axis (only they can differ)

    @property
    def previewing(self) -> bool:
        return self.preview_node is not None

    def start(self, segmentation_node, segment_id: str, volume_node) -> None:
        """Begin refining ``segment_id`` of ``segmentation_node`` on ``volume_node`` (an earlier preview is cancelled)."""
        if segmentation_node is None or segmentation_node.GetSegmentation().GetSegment(segment_id or "") is None:
            raise RuntimeError("select the segment to refine")
        if volume_node is None or volume_node.GetImageData() is None:
            raise RuntimeError("select the source volume")
        self.cancel()
        self.segmentation_node, self.segment_id, self.volume_node = segmentation_node, segment_id, volume_node
        self._original = segment_array(segmentation_node, segment_id, volume_node)
        self._proposed = None

    def target_array(self):
        """The target segment on the source volume's grid ([k, j, i], 0/1) as the refinement started:
        the mask the engine's session starts from (the automatic result is refined, not replaced)."""
        self._require_started()
        return self._original

    def show(self, proposal: Proposal) -> None:
        """Put the proposal's slices into the preview (only where editing is allowed) and show it."""
        import numpy as np

        self._require_started()
        if not self._asked:
            self._blocked, self._asked = self.editing.not_editable(self.volume_node), True
            self._blocked_any = self._blocked is not None and bool(self._blocked.any())
        if self._proposed is None:
            self._proposed = self._original.copy()
        masks = np.asarray(proposal.masks)
        if masks.dtype != bool and (masks.dtype != np.uint8 or (masks.size and masks.max() > 1)):
            masks = masks != 0  # (the engine's uint8 0/1 masks go in as they are)
        proposed = np.moveaxis(self._proposed, proposal.axis, 0)
        blocked = np.moveaxis(self._blocked, proposal.axis, 0) if self._blocked_any else None
        if masks.shape != (len(proposal.slices),) + proposed.shape[1:]:
            raise RuntimeError("the engine's masks have the shape %s, the volume's slices %s" % (masks.shape[1:], proposed.shape[1:]))
        indices = [int(index) for index in proposal.slices]
        outside = [index for index in indices if not 0 <= index < proposed.shape[0]]
        if outside:
            raise RuntimeError("the engine answered slice %d of a volume of %d slices" % (outside[0], proposed.shape[0]))
        if blocked is None:
            proposed[indices] = masks  # a view: self._proposed changes
        else:
            for index, mask in zip(indices, masks):
                allowed = ~blocked[index]
                proposed[index][allowed] = mask[allowed]
        self._touched.setdefault(proposal.axis, set()).update(indices)
        self._show_preview()

    def apply(self) -> Applied:
        """Save the undo state, change the target on the proposed slices, remember them, end the preview."""
        import numpy as np

        self._require_started()
        if self._proposed is None:
            self.cancel()
            return Applied([], 0, 0)
        axis = 2 - slices.slice_axes(self.volume_node)[0]  # the numpy axis of [k, j, i]
        changed = self._changed(axis)
        if not changed:
            self.cancel()
            return Applied([], 0, 0)
        self.editing.save_state_for_undo()
        for first, last in _runs(changed):
            slab = _slab_index(axis, first, last)
            proposed, original = self._proposed[slab].astype(bool), self._original[slab].astype(bool)
            for add, wanted in ((True, proposed & ~original), (False, original & ~proposed)):
                if wanted.any():
                    self.editing.modify(self.segmentation_node, self.segment_id, self._modifier(wanted, axis, first, last), add)
        first, last = changed[0], changed[-1]  # what Apply did, measured on the slices it could change
        before = self._original[_slab_index(axis, first, last)]
        after = segment_array(self.segmentation_node, self.segment_id, self.volume_node, (axis, first, last))
        done = [first + i for i in _changed_slices(before, after, axis)]
        added, removed = int(np.count_nonzero(after > before)), int(np.count_nonzero(after < before))
        remember_corrected_slices(self.segmentation_node, self.volume_node, done)
        self.cancel()
        return Applied(done, added, removed)

    def _changed(self, axis: int) -> List[int]:
        """The slices along numpy ``axis`` where the proposal differs from the segment: among those the
        proposals wrote, when they all ran along that axis; else measured on the whole volume."""
        if set(self._touched) != {axis}:
            return _changed_slices(self._original, self._proposed, axis)
        return [i for i in sorted(self._touched[axis]) if (self._original[_slab_index(axis, i, i)] != self._proposed[_slab_index(axis, i, i)]).any()]

    def cancel(self) -> None:
        """Remove the preview and show the target again; the segmentation is not touched."""
        node, self.preview_node = self.preview_node, None
        if node is not None and node.GetScene() is not None:
            node.GetScene().RemoveNode(node)
        display = self.segmentation_node.GetDisplayNode() if self.segmentation_node is not None else None
        if display is not None and self._hidden is not None:
            display.SetSegmentVisibility(self.segment_id, self._hidden)
        self._hidden, self._proposed, self._blocked, self._touched = None, None, None, {}
        self._blocked_any, self._asked = False, False

    def export_target(self, path) -> Optional[str]:
        """Write the target as the preview now shows it (the segment as it is before any proposal) to
        ``path``, a 0/1 label map on the source volume's grid (its IJK-to-RAS, without parent transform, as
        :func:`.scene.export_volume` writes the volume): what a session (re)starts from. None, and nothing
        written, when the target is empty (a session then starts from nothing)."""
        self._require_started()
        array = self._proposed if self._proposed is not None else self._original
        if not array.any():
            return None
        write_label_map(array, self.volume_node, path)
        return str(path)

    # -- the preview -----------------------------------------------------------------------------

    def _show_preview(self) -> None:
        """The preview segment's labelmap is the proposal array itself (shared, not copied): a click changes
        the array's slices, and the segment is told (as ``slicer.util.arrayFromSegmentInternalBinaryLabelmap``
        says), so a click costs no copy of the volume."""
        name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        if self.preview_node is None:
            segment = self.segmentation_node.GetSegmentation().GetSegment(self.segment_id)
            self.preview_node = _new_preview_node(self.segmentation_node, self.volume_node, self.segment_id, segment)
            image = _oriented_image(self._proposed, self.volume_node, shared=True)
            self.preview_node.GetSegmentation().GetSegment(self.segment_id).AddRepresentation(name, image)
            display = self.segmentation_node.GetDisplayNode()
            if display is not None:
                self._hidden = bool(display.GetSegmentVisibility(self.segment_id))
                display.SetSegmentVisibility(self.segment_id, False)
        self.preview_node.GetSegmentation().GetSegment(self.segment_id).GetRepresentation(name).Modified()
        self.preview_node.GetSegmentation().GetSegment(self.segment_id).Modified()

    def _modifier(self, wanted, axis: int, first: int, last: int):
        """``wanted`` (slices ``first``..``last`` of the volume's grid) as a labelmap there, in the
        segmentation's frame (through the transforms between the volume and the segmentation)."""
        return _oriented_image(wanted, self.volume_node, (axis, first, last), self.segmentation_node)

    def _require_started(self) -> None:
        if self.segmentation_node is None or self._original is None:
            raise RuntimeError("the refinement has not started: select a segment and a source volume")


# -- the corrected slices, for "Improve the model" -----------------------------------------------------


def remember_corrected_slices(segmentation_node, volume_node, indices: Sequence[int]) -> None:
    """Add ``indices`` (slices of ``volume_node`` along its slice axis) to the segmentation's corrected slices."""
    if not indices:
        return
    known = _recorded(segmentation_node, volume_node)
    segmentation_node.SetAttribute(CORRECTED_SLICES_ATTRIBUTE, format_slice_ranges(sorted(set(known) | set(int(i) for i in indices))))
    segmentation_node.SetNodeReferenceID(CORRECTED_VOLUME_REFERENCE, volume_node.GetID())


def corrected_slices(segmentation_node, volume_node) -> str:
    """The slices of ``volume_node`` the user corrected in ``segmentation_node`` ("12-18,40"; "" when none):
    what "Improve the model" trains on when its slice box is empty."""
    if segmentation_node is None or volume_node is None:
        return ""
    return format_slice_ranges(_recorded(segmentation_node, volume_node))


def _recorded(segmentation_node, volume_node) -> List[int]:
    text = segmentation_node.GetAttribute(CORRECTED_SLICES_ATTRIBUTE) or ""
    if not text or segmentation_node.GetNodeReferenceID(CORRECTED_VOLUME_REFERENCE) != volume_node.GetID():
        return []
    try:
        return parse_slice_ranges(text, slices.slice_count(volume_node), option="corrected slices")
    except UserError:  # a scene edited by hand: nothing remembered rather than a wrong slice
        return []


# -- arrays and images ---------------------------------------------------------------------------------


def segment_array(segmentation_node, segment_id: str, volume_node, slab: Optional[Tuple[int, int, int]] = None):
    """The segment on ``volume_node``'s grid as a uint8 0/1 array [k, j, i] (only the slices ``slab`` =
    (numpy axis, first, last) when given): read from the segment's own labelmap where it lies on that grid
    (a result of this module, a segmentation made on this volume), else Slicer's export to the volume's
    grid through both transforms."""
    import numpy as np

    extent = list(volume_node.GetImageData().GetExtent())
    if slab is not None:
        extent[2 * (2 - slab[0])], extent[2 * (2 - slab[0]) + 1] = slab[1], slab[2]
    own = slicer.vtkOrientedImageData()
    if segmentation_node.GetParentTransformNode() is volume_node.GetParentTransformNode() and segmentation_node.GetBinaryLabelmapRepresentation(segment_id, own):
        grid, mine = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(grid)
        own.GetImageToWorldMatrix(mine)
        if all(abs(grid.GetElement(r, c) - mine.GetElement(r, c)) < 1e-6 for r in range(4) for c in range(4)):
            return _image_array(own, extent, binary=True)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    labelmap_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap_node, volume_node):
            raise RuntimeError("the segment could not be read from '%s'" % segmentation_node.GetName())
        exported = (slicer.util.arrayFromVolume(labelmap_node) > 0).astype(np.uint8)
        return exported if slab is None else exported[_slab_index(*slab)]
    finally:
        slicer.mrmlScene.RemoveNode(labelmap_node)


def proposal_from_file(path, slices: Sequence[int], axis: int) -> Proposal:
    """The engine's answer read from its ``.npy`` masks file (plain arrays only: no pickled objects)."""
    import numpy as np

    return Proposal(slices=[int(s) for s in slices], masks=np.load(str(path), allow_pickle=False), axis=int(axis))


def write_label_map(array, volume_node, path) -> None:
    """``array`` ([k, j, i]) written to ``path`` as a label map with ``volume_node``'s grid (no parent transform)."""
    labelmap_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        slicer.util.updateVolumeFromArray(labelmap_node, array.astype("uint8"))
        matrix = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(matrix)
        labelmap_node.SetIJKToRASMatrix(matrix)
        storage = labelmap_node.CreateDefaultStorageNode()
        storage.SetFileName(str(path))
        storage.UseCompressionOff()
        if not storage.WriteData(labelmap_node):
            raise RuntimeError("the segment could not be written to a temporary file (%s)" % path)
    finally:
        slicer.mrmlScene.RemoveNode(labelmap_node)


def _array_shape(volume_node) -> Tuple[int, int, int]:
    i, j, k = volume_node.GetImageData().GetDimensions()
    return (k, j, i)


def _changed_slices(before, after, axis: int) -> List[int]:
    import numpy as np

    other = tuple(a for a in range(3) if a != axis)
    return [int(i) for i in np.nonzero((np.asarray(before) != np.asarray(after)).any(axis=other))[0]]


def _runs(indices: Sequence[int]) -> List[Tuple[int, int]]:
    """Consecutive runs of sorted indices: [3, 4, 5, 9] → [(3, 5), (9, 9)]."""
    runs: List[Tuple[int, int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def _volume_grid_image(volume_node, segmentation_node):
    """An empty image with ``volume_node``'s grid, in ``segmentation_node``'s frame."""
    image = slicer.vtkOrientedImageData()
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    image.SetExtent(volume_node.GetImageData().GetExtent())
    _into_frame(image, volume_node, segmentation_node, geometry_only=True)
    return image


def _into_frame(image, volume_node, segmentation_node, geometry_only: bool = False) -> None:
    """Move ``image`` (in the volume's frame) into the segmentation's frame when their transforms differ."""
    if segmentation_node is None or volume_node.GetParentTransformNode() is segmentation_node.GetParentTransformNode():
        return
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(volume_node.GetParentTransformNode(), segmentation_node.GetParentTransformNode(), transform)
    slicer.vtkOrientedImageDataResample.TransformOrientedImage(image, transform, geometry_only)


def _oriented_image(array, volume_node, slab: Optional[Tuple[int, int, int]] = None, segmentation_node=None, shared: bool = False):
    """``array`` ([k, j, i] on the volume's grid; with ``slab`` (numpy axis, first, last) only those slices)
    as a 0/1 labelmap image, in ``segmentation_node``'s frame when given. ``shared``: the image's voxels are
    ``array``'s memory (a contiguous uint8 array that must live as long as the image)."""
    import numpy as np
    from vtk.util import numpy_support

    extent = list(volume_node.GetImageData().GetExtent())
    if slab is not None:
        axis, first, last = slab
        extent[2 * (2 - axis)], extent[2 * (2 - axis) + 1] = first, last  # image axis 2 - axis
    image = slicer.vtkOrientedImageData()
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    image.SetExtent(extent)
    if shared:
        scalars = numpy_support.numpy_to_vtk(array.reshape(-1), deep=0, array_type=vtk.VTK_UNSIGNED_CHAR)
    else:
        scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array, dtype=np.uint8).ravel(), deep=1, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    _into_frame(image, volume_node, segmentation_node)
    return image


def _slab_index(axis: int, first: int, last: int) -> Tuple[Any, ...]:
    """The index of slices ``first``..``last`` along numpy axis ``axis`` of an array [k, j, i]."""
    index: List[Any] = [slice(None)] * 3
    index[axis] = slice(first, last + 1)
    return tuple(index)


def _image_array(image, extent: Sequence[int], binary: bool = False):
    """An oriented image's scalars within ``extent`` (its voxels there, 0 where it has none) as an array
    [k, j, i]; ``binary``: 1 where non-zero, as uint8 (only the image's own box is compared)."""
    import numpy as np
    from vtk.util import numpy_support

    own = image.GetExtent()
    scalars = image.GetPointData().GetScalars()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    if scalars is None or any(own[2 * a] > own[2 * a + 1] for a in range(3)):
        return np.zeros(shape, dtype=np.uint8)
    data = numpy_support.vtk_to_numpy(scalars).reshape(own[5] - own[4] + 1, own[3] - own[2] + 1, own[1] - own[0] + 1)
    out = np.zeros(shape, dtype=np.uint8 if binary else data.dtype)
    low = [max(own[2 * a], extent[2 * a]) for a in range(3)]
    high = [min(own[2 * a + 1], extent[2 * a + 1]) for a in range(3)]
    if all(lo <= hi for lo, hi in zip(low, high)):
        target = tuple(slice(low[a] - extent[2 * a], high[a] - extent[2 * a] + 1) for a in (2, 1, 0))
        source = data[tuple(slice(low[a] - own[2 * a], high[a] - own[2 * a] + 1) for a in (2, 1, 0))]
        if binary:
            np.not_equal(source, 0, out=out[target].view(bool))  # in place: no volume-sized temporary
        else:
            out[target] = source
    return out


def _new_preview_node(segmentation_node, volume_node, segment_id: str, segment):
    """The preview: a transient segmentation node with one segment in the target's colour, over the volume."""
    scene = slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(segmentation_node.GetName() + " refine preview"))
    node.SetAttribute(PREVIEW_ATTRIBUTE, "1")
    node.SetSaveWithScene(False)
    node.SetHideFromEditors(True)
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    node.GetSegmentation().AddEmptySegment(segment_id, segment.GetName(), segment.GetColor())
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetOpacity2DFill(PREVIEW_OPACITY)
    return node

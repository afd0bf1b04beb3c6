"""The "UNet refine" Segment Editor effect's scene logic on a real MRML scene (slicer-core).

The slicerio chest CT with its segmentation (ribs, vertebrae, lungs, tissue); the selected segment is
the right lung. The engine's answer is faked by arrays (the right lung grown by three voxels and cut
on slices 14-16): the logic is tested without the network. It must show the proposal as a preview and
change nothing until Apply; Apply saves Segment Editor's undo state first (Undo restores every segment);
only the target segment's proposed slices change, the other segments stay as they were (or lose
exactly what the overwrite setting gives up to the target); the editable area (mask mode, source
intensity range) is respected; Cancel changes nothing; the corrected slices are remembered for
"Improve the model". Clicks become the engine's voxel index and LPS millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

import mrml_support

pytestmark = pytest.mark.mrml
mrml = mrml_support.mrml

TARGET = "Segment_5"  # right lung
SLICES = (14, 15, 16)


@dataclass
class Scene:
    mrml: Any
    logic_module: Any
    volume: Any
    segmentation: Any
    editor_node: Any
    editing: Any
    logic: Any

    def arrays(self) -> Dict[str, np.ndarray]:
        """Every segment on the CT's grid, by ID."""
        segmentation = self.segmentation.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        return {sid: self.logic_module.segment_array(self.segmentation, sid, self.volume) for sid in ids}


@pytest.fixture
def refine(mrml) -> Scene:
    """The CT, its segmentation placed on it, a Segment Editor parameter set node selecting the right lung."""
    volume, segmentation, editor_node = mrml_support.chest_segment_editor(mrml, TARGET)
    module = mrml.layer("refine_logic")
    editing = module.EditorLogicEditing(editor_node)
    logic = module.RefineLogic(editing)
    logic.start(segmentation, TARGET, volume)
    return Scene(mrml, module, volume, segmentation, editor_node, editing, logic)


def proposal(scene: Scene) -> Any:
    """The engine's fake answer: the right lung grown by 3 voxels in-plane and its front third cut, on SLICES."""
    from scipy import ndimage

    lung = scene.logic.target_array().astype(bool)
    masks = []
    for index in SLICES:
        grown = ndimage.binary_dilation(lung[index], iterations=3)
        rows = np.nonzero(grown.any(axis=1))[0]
        grown[: rows.min() + (rows.max() - rows.min()) // 3] = False
        masks.append(grown)
    return scene.logic_module.Proposal(slices=SLICES, masks=np.array(masks), axis=0)


def volume_mask(answer) -> np.ndarray:
    """The answer's masks in a volume [k, j, i] of the CT's shape (zero elsewhere)."""
    mask = np.zeros((34, 128, 128), dtype=bool)
    mask[list(answer.slices)] = answer.masks
    return mask


def outside(slices_: tuple, shape: tuple) -> np.ndarray:
    keep = np.ones(shape, dtype=bool)
    keep[list(slices_)] = False
    return keep


def test_the_preview_shows_the_proposal_and_changes_nothing(refine):
    before = refine.arrays()
    answer = proposal(refine)
    refine.logic.show(answer)

    preview = refine.logic.preview_node
    assert preview is not None and preview.GetAttribute(refine.logic_module.PREVIEW_ATTRIBUTE) == "1" and not preview.GetSaveWithScene()
    shown = refine.logic_module.segment_array(preview, TARGET, refine.volume)
    lung = before[TARGET]
    assert (shown[list(SLICES)] == volume_mask(answer)[list(SLICES)]).all(), "the proposed slices as the engine answered them"
    assert (shown[outside(SLICES, lung.shape)] == lung[outside(SLICES, lung.shape)]).all(), "the other slices as the segment is"
    assert preview.GetSegmentation().GetSegment(TARGET).GetColor() == refine.segmentation.GetSegmentation().GetSegment(TARGET).GetColor()
    assert not refine.segmentation.GetDisplayNode().GetSegmentVisibility(TARGET), "the target is hidden under its preview"
    after = refine.arrays()
    assert all((after[sid] == before[sid]).all() for sid in before), "a preview changes no segment"


def test_apply_saves_the_undo_state_first_and_undo_restores_every_segment(refine):
    before = refine.arrays()
    answer = proposal(refine)
    refine.logic.show(answer)
    assert not refine.editing.logic.CanUndo()
    applied = refine.logic.apply()

    assert refine.editing.logic.CanUndo(), "Segment Editor's undo state was saved"
    lung = refine.arrays()[TARGET]
    assert (lung[list(SLICES)] == volume_mask(answer)[list(SLICES)]).all()
    assert (lung[outside(SLICES, lung.shape)] == before[TARGET][outside(SLICES, lung.shape)]).all(), "only the proposed slices change"
    assert applied.slices == list(SLICES) and applied.added > 0 and applied.removed > 0
    assert refine.logic.preview_node is None and mrml_support_preview_nodes(refine) == 0
    assert refine.segmentation.GetDisplayNode().GetSegmentVisibility(TARGET), "the target is shown again"

    refine.editing.undo()
    restored = refine.arrays()
    assert all((restored[sid] == before[sid]).all() for sid in before), "undo gives back the segmentation as it was before Apply"


def mrml_support_preview_nodes(scene: Scene) -> int:
    nodes = scene.mrml.scene.GetNodesByClass("vtkMRMLSegmentationNode")
    return sum(1 for i in range(nodes.GetNumberOfItems()) if nodes.GetItemAsObject(i).GetAttribute(scene.logic_module.PREVIEW_ATTRIBUTE))


def test_the_target_is_refined_and_the_other_segments_keep_what_overwrite_protects(refine):
    """Overwrite none: every other segment stays exactly as it was, everywhere. Overwrite all: the other
    segments lose only the voxels the target gained, and nothing outside the proposed slices."""
    before = refine.arrays()
    refine.editor_node.SetOverwriteMode(refine.editor_node.OverwriteNone)
    refine.logic.show(proposal(refine))
    refine.logic.apply()
    after = refine.arrays()
    assert not (after[TARGET] == before[TARGET]).all()
    assert all((after[sid] == before[sid]).all() for sid in before if sid != TARGET)

    refine.editing.undo()
    refine.editor_node.SetOverwriteMode(refine.editor_node.OverwriteAllSegments)
    refine.logic.start(refine.segmentation, TARGET, refine.volume)
    refine.logic.show(proposal(refine))
    refine.logic.apply()
    after = refine.arrays()
    gained = after[TARGET].astype(bool) & ~before[TARGET].astype(bool)
    for sid in before:
        if sid == TARGET:
            continue
        lost = before[sid].astype(bool) & ~after[sid].astype(bool)
        assert not (after[sid].astype(bool) & ~before[sid].astype(bool)).any(), f"{sid} gained voxels"
        assert not (lost & ~gained).any(), f"{sid} lost voxels the target did not take"
        assert not lost[outside(SLICES, lost.shape)].any()
    assert (after["Segment_7"].astype(bool) & after[TARGET].astype(bool)).sum() == 0, "tissue gave up what the lung took"


def test_the_editable_area_is_respected(refine):
    """Mask "outside all segments": the lung grows only into unsegmented voxels (the chest's outside here:
    the tissue segment fills the body); intensity range: only air-like voxels (-1024..-600 HU) change."""
    segment_ids = list(refine.arrays())
    before = refine.arrays()
    others = np.any([before[sid].astype(bool) for sid in segment_ids if sid != TARGET], axis=0)
    refine.editor_node.SetMaskMode(refine.mrml.slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    answer = proposal(refine)
    refine.logic.show(answer)
    shown = refine.logic_module.segment_array(refine.logic.preview_node, TARGET, refine.volume)
    refine.logic.apply()
    after = refine.arrays()[TARGET].astype(bool)
    gained = after & ~before[TARGET].astype(bool)
    assert not (gained & others).any(), "nothing added inside another segment"
    assert (after == shown.astype(bool)).all(), "the preview showed what Apply did"
    assert (volume_mask(answer) & others & ~before[TARGET].astype(bool)).any(), "the proposal did reach into other segments"

    refine.editing.undo()
    refine.editor_node.SetMaskMode(refine.mrml.slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
    refine.editor_node.SetSourceVolumeIntensityMask(True)
    refine.editor_node.SetSourceVolumeIntensityMaskRange(-1024.0, -600.0)
    refine.logic.start(refine.segmentation, TARGET, refine.volume)
    answer = proposal(refine)
    refine.logic.show(answer)
    refine.logic.apply()
    values = refine.mrml.slicer.util.arrayFromVolume(refine.volume)
    in_range = (values >= -1024) & (values <= -600)
    changed = refine.arrays()[TARGET] != before[TARGET]
    assert changed.any() and in_range[changed].all(), "only voxels in the intensity range change"
    assert ((volume_mask(answer) != before[TARGET].astype(bool)) & ~in_range)[list(SLICES)].any(), "the proposal did reach outside the range"


def test_cancel_changes_nothing(refine):
    before = refine.arrays()
    visible = refine.segmentation.GetDisplayNode().GetSegmentVisibility(TARGET)
    refine.logic.show(proposal(refine))
    refine.logic.cancel()
    after = refine.arrays()
    assert all((after[sid] == before[sid]).all() for sid in before)
    assert refine.logic.preview_node is None and mrml_support_preview_nodes(refine) == 0
    assert refine.segmentation.GetDisplayNode().GetSegmentVisibility(TARGET) == visible
    assert not refine.editing.logic.CanUndo(), "nothing to undo: nothing was done"
    assert refine.logic_module.corrected_slices(refine.segmentation, refine.volume) == ""


def test_the_corrected_slices_are_remembered_for_improving_the_model(refine):
    module = refine.logic_module
    refine.logic.show(proposal(refine))
    refine.logic.apply()
    assert module.corrected_slices(refine.segmentation, refine.volume) == "14-16"

    refine.logic.start(refine.segmentation, TARGET, refine.volume)
    refine.logic.show(module.Proposal(slices=[25], masks=np.zeros((1, 128, 128), dtype=bool), axis=0))  # no lung on slice 25
    refine.logic.apply()
    assert module.corrected_slices(refine.segmentation, refine.volume) == "14-16,25"
    other = refine.mrml.volume_from_array(np.zeros((34, 8, 8), dtype=np.int16), np.eye(4), "other")
    assert module.corrected_slices(refine.segmentation, other) == "", "slices of another volume are not these"


def test_a_proposal_that_changes_nothing_applies_nothing(refine):
    before = refine.arrays()
    unchanged = refine.logic.target_array()[list(SLICES)].copy()
    refine.logic.show(refine.logic_module.Proposal(slices=SLICES, masks=unchanged, axis=0))
    applied = refine.logic.apply()
    assert applied.slices == [] and (applied.added, applied.removed) == (0, 0)
    assert all((refine.arrays()[sid] == before[sid]).all() for sid in before)
    assert refine.logic_module.corrected_slices(refine.segmentation, refine.volume) == ""


@pytest.mark.parametrize("transformed", [False, True], ids=["plain", "under a transform"])
def test_a_click_becomes_the_engines_voxel_index_and_lps_millimetres(mrml, transformed):
    module = mrml.layer("refine_logic")
    volume = mrml_support.chest_ct(mrml, transformed=transformed)
    matrix = mrml.slicer.util.arrayFromVTKMatrix(_ijk_to_ras(mrml, volume))
    ijk = np.array([40.0, 70.5, 12.0])
    local = matrix @ np.append(ijk, 1.0)
    world = mrml_support.PARENT_TRANSFORM @ local if transformed else local
    click = module.volume_click(volume, world[:3], positive=False)
    assert np.allclose(click.ijk, ijk, atol=1e-6) and click.positive is False
    assert np.allclose(click.lps, [-local[0], -local[1], local[2]], atol=1e-6), "LPS of the file the engine reads (no parent transform)"
    far = matrix @ np.array([40.0, 70.0, 40.0, 1.0])
    with pytest.raises(RuntimeError, match="outside the volume 'CTChest4'"):
        module.volume_click(volume, (mrml_support.PARENT_TRANSFORM @ far if transformed else far)[:3], positive=True)


def _ijk_to_ras(mrml, volume):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix


def test_which_clicks_add_and_which_remove(mrml):
    is_positive = mrml.layer("refine_logic").click_is_positive
    assert is_positive(left=True, right=False, shift=False) is True
    assert is_positive(left=True, right=False, shift=True) is False
    assert is_positive(left=False, right=True, shift=False) is False
    assert is_positive(left=False, right=False, shift=True) is None


def test_improve_the_model_counts_the_refined_class_as_corrected(refine, tmp_path):
    """The fine-tuning measures which classes the user corrected by the model result's fingerprint: the
    refined segment counts, the others do not."""
    from types import SimpleNamespace

    finetune = refine.mrml.layer("finetune")
    classes = [SimpleNamespace(name="right lung", value=1), SimpleNamespace(name="left lung", value=2)]
    finetune.remember_model_result(refine.segmentation, refine.volume, classes)
    refine.editor_node.SetOverwriteMode(refine.editor_node.OverwriteNone)  # (overwriting, the left lung gives up voxels: corrected too)
    refine.logic.show(proposal(refine))
    refine.logic.apply()
    exported = finetune.export_training_pair(refine.volume, refine.segmentation, classes, tmp_path / "image.nrrd", tmp_path / "label.nrrd")
    assert exported.corrected == ["right lung"]


def test_a_proposal_on_another_axis_and_a_wrong_answer(refine):
    """The engine's slice axis is its own (numpy axis 2 here: sagittal slices); masks that do not fit the
    volume's slices, or a slice outside it, are refused before anything is shown."""
    module, before = refine.logic_module, refine.arrays()
    masks = np.ones((2, 34, 128), dtype=bool)
    refine.logic.show(module.Proposal(slices=[60, 61], masks=masks, axis=2))
    shown = module.segment_array(refine.logic.preview_node, TARGET, refine.volume)
    assert shown[:, :, 60:62].all() and (shown[:, :, :60] == before[TARGET][:, :, :60]).all()
    with pytest.raises(RuntimeError, match="shape"):
        refine.logic.show(module.Proposal(slices=[3], masks=np.ones((1, 128, 34), dtype=bool), axis=2))
    with pytest.raises(RuntimeError, match="slice 40 of a volume of 34 slices"):
        refine.logic.show(module.Proposal(slices=[40], masks=np.ones((1, 128, 128), dtype=bool), axis=0))
    refine.logic.cancel()
    assert all((refine.arrays()[sid] == before[sid]).all() for sid in before)


def test_a_segmentation_in_another_frame_than_its_volume(mrml):
    """The CT under a rotation and shift, its segmentation left outside it (both read from files): the
    proposal, on the volume's grid, lands on the same anatomy in the segmentation's own frame."""
    import slicerio

    module = mrml.layer("refine_logic")
    volume = mrml_support.chest_ct(mrml, transformed=True)
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    mrml.layer("scene").read_segmentation(Path(slicerio.get_testdata_file("Segmentation.seg.nrrd")), segmentation)
    mrml.put_under_transform(segmentation, mrml_support.PARENT_TRANSFORM)  # the same placement, by another transform node
    editor_node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor_node.SetAndObserveSegmentationNode(segmentation)
    editor_node.SetAndObserveSourceVolumeNode(volume)
    editor_node.SetSelectedSegmentID(TARGET)
    logic = module.RefineLogic(module.EditorLogicEditing(editor_node))
    logic.start(segmentation, TARGET, volume)
    square = np.zeros((1, 128, 128), dtype=bool)
    square[0, 30:50, 20:40] = True
    logic.show(module.Proposal(slices=[20], masks=square, axis=0))
    logic.apply()
    lung = module.segment_array(segmentation, TARGET, volume).astype(bool)
    assert (lung[20] == square[0]).mean() > 0.99


slicer_module = mrml_support.slicer_module


def test_improve_the_model_trains_on_the_refined_slices_when_its_box_is_empty(slicer_module):
    """The panel's Fine-tune, its slice box empty, trains on the slices refined in Segment Editor; a
    box the user filled wins."""
    import slicerio

    mrml = slicer_module.mrml
    volume = mrml_support.chest_ct(mrml)
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "corrected")
    mrml.layer("scene").read_segmentation(Path(slicerio.get_testdata_file("Segmentation.seg.nrrd")), segmentation)
    mrml.layer("scene").place_on_volume(segmentation, volume)
    mrml.layer("refine_logic").remember_corrected_slices(segmentation, volume, [14, 15, 16, 25])
    widget = slicer_module.module.UNetSegmentationWidget()
    widget.setup()
    parameters = widget._parameterNode
    parameters.checkpoint = mrml_support.chest_model_copy()
    parameters.trainingVolume, parameters.trainingSegmentation = volume, segmentation
    for box, expected in (("", "14-16,25"), ("3-5", "3-5")):
        parameters.trainSlices = box
        widget.ui.fineTuneButton.click()
        assert widget.fineTuning.run is not None and widget.fineTuning.run.parameters.train_slices == expected
        widget.ui.fineTuneButton.click()  # Cancel: nothing is trained
        assert not widget.fineTuning.running
    widget.cleanup()

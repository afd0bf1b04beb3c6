"""Where the result goes in a real MRML scene (slicer-core), and what it replaces.

A new segmentation per run, named after the volume; a chosen output segmentation is refilled and keeps
its node (ID, name, display, whoever references it); the result sits beside the input in its study
of the subject hierarchy, with the input as Segment Editor's source volume; the confidence map is
shown over the input where the model is unsure (confident voxels transparent), refilled by a later run
into the same segmentation, and taken off the views by a later run without one; each segment remembers
the model's own result, so that a fine-tuning can tell which classes the user corrected.
"""

from __future__ import annotations

import numpy as np
import pytest

import mrml_support
from mrml_support import segment

pytestmark = pytest.mark.mrml
mrml = mrml_support.mrml


def segment_names(node) -> list:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(index).GetName() for index in range(segmentation.GetNumberOfSegments())]


def test_each_run_adds_a_new_segmentation_named_after_the_volume(mrml):
    volume = mrml_support.oblique_volume(mrml)
    first, second = segment(mrml, volume).node, segment(mrml, volume).node
    assert (first.GetName(), second.GetName()) == ("oblique segmentation", "oblique segmentation_1")
    assert first.GetID() != second.GetID() and mrml.scene.IsNodePresent(first)
    assert first.GetStorageNode() is None, "the temporary file is not the node's file: 'Save' writes the node anew"


def test_replacing_a_segmentation_keeps_its_node_and_puts_the_result_in_it(mrml):
    volume = mrml_support.oblique_volume(mrml)
    mine = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my lungs")
    mine.CreateDefaultDisplayNodes()
    mine.GetSegmentation().AddEmptySegment("hand-drawn", "hand-drawn")
    keeper = mrml.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "parameters")
    keeper.SetNodeReferenceID("outputSegmentation", mine.GetID())
    identity = (mine.GetID(), mine.GetDisplayNodeID())
    nodes_before = mrml.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")

    question = mrml.layer("scene").replacement_question(mine)
    assert question.startswith("The segmentation 'my lungs' already has 1 segment(s). Replace them")
    result = segment(mrml, volume, output_node=mine)

    assert result.node is mine and (mine.GetID(), mine.GetDisplayNodeID()) == identity
    assert mine.GetName() == "my lungs" and keeper.GetNodeReference("outputSegmentation") is mine
    assert "hand-drawn" not in segment_names(mine) and segment_names(mine)[0] == "ribs"
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == nodes_before
    assert mrml.layer("scene").replacement_question(None) is None


def test_the_result_sits_beside_the_input_in_its_study_with_the_input_as_source_volume(mrml):
    volume = mrml_support.chest_ct(mrml)
    hierarchy, study = mrml.put_in_study(volume)
    result = segment(mrml, volume, confidence_map=True)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(result.node)) == study
    confidence = mrml.scene.GetFirstNodeByName(f"{result.node.GetName()} confidence")
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(confidence)) == study
    assert result.node.GetNodeReference(result.node.GetReferenceImageGeometryReferenceRole()) is volume


def test_a_volume_outside_any_study_leaves_the_result_at_the_top_of_the_hierarchy(mrml):
    volume = mrml_support.oblique_volume(mrml)
    hierarchy = mrml.slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    hierarchy.CreateItem(hierarchy.GetSceneItemID(), volume)
    node = segment(mrml, volume).node
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == hierarchy.GetSceneItemID()


def test_the_confidence_map_is_shown_over_the_input_and_a_run_without_one_takes_it_off_the_views(mrml):
    mrml.add_slice_views()
    volume = mrml_support.oblique_volume(mrml)
    user_foreground = mrml_support.oblique_volume(mrml)
    composite_nodes = [mrml.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(3)]

    with_map = segment(mrml, volume, confidence_map=True)
    confidence = mrml.scene.GetFirstNodeByName(f"{with_map.node.GetName()} confidence")
    assert mrml.foreground_ids() == [confidence.GetID()] * 3
    assert {c.GetBackgroundVolumeID() for c in composite_nodes} == {volume.GetID()}
    assert {round(c.GetForegroundOpacity(), 3) for c in composite_nodes} == {mrml.layer("scene").CONFIDENCE_OPACITY}

    composite_nodes[2].SetForegroundVolumeID(user_foreground.GetID())  # the user shows another volume in one view
    segment(mrml, volume)  # no confidence map this time
    assert mrml.foreground_ids() == [None, None, user_foreground.GetID()], "the old map goes; the user's own foreground stays"
    assert {c.GetBackgroundVolumeID() for c in composite_nodes} == {volume.GetID()}


def confidence_maps(mrml) -> list:
    scene, attribute = mrml.scene, mrml.layer("scene").CONFIDENCE_ATTRIBUTE
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    return [node for node in nodes if node.GetAttribute(attribute)]


def test_a_second_run_into_the_same_segmentation_refills_its_confidence_map(mrml):
    mrml.add_slice_views()
    volume = mrml_support.chest_ct(mrml)
    first = segment(mrml, volume, confidence_map=True)
    (confidence,) = confidence_maps(mrml)
    identity = confidence.GetID()
    second = segment(mrml, volume, output_node=first.node, confidence_map=True, spacing="native")  # another result: another map
    assert [node.GetID() for node in confidence_maps(mrml)] == [identity], "one map per segmentation (one file in a saved scene)"
    assert confidence.GetName() == f"{first.node.GetName()} confidence"
    np.testing.assert_array_equal(mrml.slicer.util.arrayFromVolume(confidence), second.confidence)
    assert mrml.foreground_ids() == [identity] * 3
    segment(mrml, volume, confidence_map=True)  # a new segmentation gets a map of its own
    assert len(confidence_maps(mrml)) == 2


def overlay_rgba(mrml, confidence_node) -> np.ndarray:
    """The colours and opacities the slice views blend over the input: the map's display pipeline (what a
    slice layer runs on its resliced image), here on the whole volume; [k, j, i, rgba]."""
    from vtk.util.numpy_support import vtk_to_numpy

    display = confidence_node.GetDisplayNode()
    display.SetInputImageDataConnection(confidence_node.GetImageDataConnection())
    connection = display.GetOutputImageDataConnection()
    producer = connection.GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(connection.GetIndex())
    columns, rows, slices = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(slices, rows, columns, -1)


def test_the_confidence_overlay_shows_where_the_model_is_unsure_and_leaves_confident_voxels_untinted(mrml):
    scene_layer = mrml.layer("scene")
    volume = mrml_support.chest_ct(mrml)
    result = segment(mrml, volume, confidence_map=True)
    (confidence_node,) = confidence_maps(mrml)
    values = mrml.slicer.util.arrayFromVolume(confidence_node)
    rgba = overlay_rgba(mrml, confidence_node)
    confident, unsure = values >= scene_layer.CONFIDENT, values < scene_layer.CONFIDENT
    assert confident.mean() > 0.8 and unsure.any(), "the bundled model is sure of most of the chest CT"
    assert (rgba[confident][:, 3] == 0).all(), "confident voxels are transparent: the input shows through"
    assert (rgba[unsure][:, 3] == 255).all() and (rgba[unsure][:, 0] == 255).all(), "unsure voxels are painted (red to yellow)"
    least_sure = values <= scene_layer.UNSURE_FLOOR
    if least_sure.any():
        assert (rgba[least_sure][:, 1] == 0).all(), "the least sure are pure red"
    assert result.node.GetNodeReference(scene_layer.CONFIDENCE_REFERENCE) is confidence_node


def test_each_segment_remembers_the_models_result_and_an_edit_marks_only_its_class_as_corrected(mrml, tmp_path):
    from vtk.util.numpy_support import vtk_to_numpy

    from UNetSegmentationLib.model.header import read_metadata

    finetune = mrml.layer("finetune")
    volume = mrml_support.chest_ct(mrml)
    node = segment(mrml, volume).node
    classes = read_metadata(mrml_support.CHEST_MODEL).classes
    finetune.remember_model_result(node, volume, classes)
    exported = finetune.export_training_pair(volume, node, classes, tmp_path / "i.nrrd", tmp_path / "l.nrrd")
    assert exported.corrected == [], "nothing edited: no class is a correction"

    segmentation = node.GetSegmentation()
    ribs = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("ribs"))
    labelmap = ribs.GetRepresentation(mrml.slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
    voxels = vtk_to_numpy(labelmap.GetPointData().GetScalars())
    voxels[np.flatnonzero(voxels == ribs.GetLabelValue())[:200]] = 0  # the user erases part of the ribs
    labelmap.Modified()
    exported = finetune.export_training_pair(volume, node, classes, tmp_path / "i.nrrd", tmp_path / "l.nrrd")
    assert exported.corrected == ["ribs"]
    node.GetSegmentation().AddEmptySegment("", "left lung copy")  # not a class: left out, never a correction
    added = node.GetSegmentation().GetSegment(node.GetSegmentation().GetSegmentIdBySegmentName("tissue"))
    added.RemoveTag(finetune.MODEL_RESULT_TAG)  # a segment the model did not make is all the user's
    assert finetune.export_training_pair(volume, node, classes, tmp_path / "i.nrrd", tmp_path / "l.nrrd").corrected == ["ribs", "tissue"]

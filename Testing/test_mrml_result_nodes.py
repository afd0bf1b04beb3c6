"""Where the result goes in a real MRML scene (slicer-core), and what it replaces.

A new segmentation per run, named after the volume; a chosen output segmentation is refilled and keeps
its node (ID, name, display, whoever references it); the result sits beside the input in its study
of the subject hierarchy, with the input as Segment Editor's source volume; the confidence map is
shown over the input, and taken off the views by a later run without one.
"""

from __future__ import annotations

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

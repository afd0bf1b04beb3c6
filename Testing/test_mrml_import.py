"""The engine's result in a real MRML scene (slicer-core): what the user gets in Slicer's segment list.

For the slicerio chest CT and an oblique, anisotropic volume, each also under a parent linear
transform, the bundled model runs through the module's steps (``scene.export_volume`` → ``unetseg
predict`` in a child process → ``scene.import_result``) and the segmentation node holds the
checkpoint's segment names, colours, label values and terminology, and exactly the engine's labels.
"""

from __future__ import annotations

import numpy as np
import pytest

import mrml_support
from mrml_support import CHEST_MODEL, VOLUMES, segment

pytestmark = pytest.mark.mrml
mrml = mrml_support.mrml

CASES = [pytest.param(name, transformed, id=f"{name}{' under a transform' if transformed else ''}") for name in VOLUMES for transformed in (False, True)]


@pytest.fixture(scope="module")
def classes():
    from UNetSegmentationLib.model.header import read_metadata

    return read_metadata(CHEST_MODEL).classes


def segments_of(node) -> list:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(index) for index in range(segmentation.GetNumberOfSegments())]


@pytest.mark.parametrize("name, transformed", CASES)
def test_segments_carry_the_checkpoints_names_colours_and_label_values(mrml, classes, name, transformed):
    volume = VOLUMES[name](mrml, transformed)
    result = segment(mrml, volume)
    segments = segments_of(result.node)
    assert [s.GetName() for s in segments] == [c.name for c in classes]
    assert [s.GetLabelValue() for s in segments] == [c.value for c in classes]
    for segment_, info in zip(segments, classes):
        np.testing.assert_allclose(segment_.GetColor(), info.color, atol=1e-5)
    assert result.node.GetName() == f"{volume.GetName()} segmentation"


@pytest.mark.parametrize("name, transformed", CASES)
def test_segments_exported_back_onto_the_volume_are_the_engines_labels_voxel_for_voxel(mrml, name, transformed):
    volume = VOLUMES[name](mrml, transformed)
    # the synthetic 32 x 28 oblique volume would be 9 x 10 pixels at the model's 3 mm, too few for several
    # structures; on its own grid the network finds them, and the geometry is what is checked here
    result = segment(mrml, volume, spacing="native" if name == "oblique" else "model")
    labels = mrml.layer("inspection").labels_on_volume(result.node, volume)
    assert labels.shape == result.engine_labels.shape == mrml.slicer.util.arrayFromVolume(volume).shape
    assert len(np.unique(result.engine_labels)) >= 4, "a result with several structures, so that a mix-up would show"
    np.testing.assert_array_equal(labels, result.engine_labels)


def terminology_of(segment_) -> str:
    import vtk  # slicer-core's VTK: imported once the test knows slicer-core is there

    value = vtk.reference("")
    assert segment_.GetTag(segment_.GetTerminologyEntryTagName(), value)
    return str(value)


def test_every_terminology_entry_deserialises_with_slicers_terminologies_logic_to_the_checkpoints_codes(mrml, classes):
    """The tags the engine writes are read by vtkSlicerTerminologiesModuleLogic as the checkpoint's
    category, type and modifier codes, in its contexts (the context files themselves are not in slicer-core)."""
    result = segment(mrml, mrml_support.chest_ct(mrml))
    logic = mrml.terminologies_logic
    for segment_, info in zip(segments_of(result.node), classes):
        entry = mrml.slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(terminology_of(segment_), entry), info.name
        expected = info.terminology
        assert entry.GetTerminologyContextName() == expected["contextName"]
        for part, code in (("category", entry.GetCategoryObject()), ("type", entry.GetTypeObject()), ("typeModifier", entry.GetTypeModifierObject())):
            wanted = expected.get(part) or ["", "", ""]
            assert (code.GetCodingSchemeDesignator() or "", code.GetCodeValue() or "", code.GetCodeMeaning() or "") == tuple(wanted), (info.name, part)
    assert not logic.DeserializeTerminologyEntry("not a terminology entry", mrml.slicer.vtkSlicerTerminologyEntry()), "the check can fail"


def test_the_exported_volume_is_the_nodes_voxels_and_geometry_without_its_transform(mrml, tmp_path):
    """What the engine reads: ``scene.export_volume`` writes the node's own IJK-to-RAS grid (the
    segmentation follows the transform instead), and leaves the node's storage alone."""
    import SimpleITK as sitk

    from UNetSegmentationLib.panel.selftest_support import lps_from_ras

    volume = mrml_support.oblique_volume(mrml, transformed=True)
    storage_before = volume.GetStorageNodeID()
    path = mrml.layer("scene").export_volume(volume, tmp_path / "input.nrrd")
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), mrml.slicer.util.arrayFromVolume(volume))
    ijk_to_lps = lps_from_ras(mrml.layer("inspection").ijk_to_ras(volume))
    spacing = np.array(image.GetSpacing())
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3) * spacing, ijk_to_lps[:3, :3], atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), ijk_to_lps[:3, 3], atol=1e-6)
    assert volume.GetStorageNodeID() == storage_before


def test_an_unreadable_result_raises_the_modules_message_and_adds_no_node(mrml, tmp_path):
    """Slicer's reader fails on a broken file: the user gets the module's own message, and no empty node is left."""
    volume = mrml_support.oblique_volume(mrml)
    broken = tmp_path / "segmentation.seg.nrrd"
    broken.write_text("not a segmentation file\n")  # (a file with a broken NRRD header aborts slicer-core's reader)
    before = mrml.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    with pytest.raises(RuntimeError, match=r"Slicer could not read the segmentation file the engine wrote \(segmentation\.seg\.nrrd\)"):
        mrml.layer("scene").import_segmentation(broken, volume)
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before

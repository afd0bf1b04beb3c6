"""The bodies of the module's self-test, run inside Slicer by ``UNetSegmentationTest`` (``Slicer --testing``)
and, on the MRML of the ``slicer-core`` package, by the test suite (``Testing/test_mrml_selftest.py``).

Each check takes the test case (for its assertions and ``delayDisplay``) and the module's logic, and
reaches the scene only through MRML and ``slicer.util`` calls that need no Qt; of ``slicer.app`` it
uses ``temporaryPath`` only. numpy and slicerio are imported inside the checks: this file is imported
only when the test runs.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import tempfile
from typing import Sequence

import slicer

from UNetSegmentationLib.panel.checkpoints import bundled_model_path
from UNetSegmentationLib.protocol.child_environment import child_environment
from UNetSegmentationSlicer import inspection, scene

#: the parent transform the oblique volume is put under (a rotation and a 25 mm shift), to check that
#: the result follows the volume's transform without its geometry being shifted by it
PARENT_TRANSFORM_ANGLES_RAD = (0.0, 0.0, 0.3)
PARENT_TRANSFORM_SHIFT_MM = (25.0, -12.0, 7.5)
#: how far geometry may differ from the volume's (mm, and unitless for the direction x spacing part)
GEOMETRY_TOLERANCE = 1e-4


def run_engine(test, python: str, arguments: Sequence) -> None:
    """``python -m UNetSegmentationLib ARGUMENTS`` with the engine on the path; the test fails on a non-zero exit."""
    result = subprocess.run([python, "-m", "UNetSegmentationLib"] + [str(a) for a in arguments], capture_output=True, text=True, encoding="utf-8",
                            errors="replace", env=child_environment())
    test.assertEqual(result.returncode, 0, result.stderr)


def temporary_folder() -> pathlib.Path:
    """A new folder in Slicer's temporary folder (removed by the check that asked for it)."""
    return pathlib.Path(tempfile.mkdtemp(prefix="UNetSegmentationTest-", dir=slicer.app.temporaryPath))


def add_parent_transform(volume_node):
    """Put ``volume_node`` under a new linear transform (PARENT_TRANSFORM_*); returns the transform node."""
    import numpy as np

    from UNetSegmentationLib.panel.selftest_support import rotation

    matrix = np.eye(4)
    matrix[:3, :3] = rotation(PARENT_TRANSFORM_ANGLES_RAD)
    matrix[:3, 3] = PARENT_TRANSFORM_SHIFT_MM
    transform_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "UNetSegmentationTest transform")
    transform_node.SetMatrixTransformToParent(inspection.matrix_from_array(matrix))
    volume_node.SetAndObserveTransformNodeID(transform_node.GetID())
    return transform_node


def check_oblique_volume(test, logic) -> None:
    """A small checkpoint made by the engine that labels every voxel "a", on an oblique volume with
    anisotropic spacing under a parent transform: named, coloured segments under the volume's transform,
    on its geometry, covering it voxel for voxel."""
    from UNetSegmentationLib.model.header import read_metadata
    from UNetSegmentationLib.panel.selftest_support import constant_checkpoint, oblique_ijk_to_ras, sample_volume_array

    test.delayDisplay("Oblique, anisotropic volume under a transform, with a small checkpoint")
    logic.ensureDependencies()  # the engine below needs torch; installs without asking
    folder = temporary_folder()
    try:
        untrained = folder / "untrained.safetensors"
        checkpoint = folder / "every-voxel-is-a.safetensors"
        run_engine(test, logic.enginePython(), ["create", "--arch", "unetplusplus", "--classes", "a,b", "--features", "4,8,16,32,64", "--overwrite", untrained])
        constant_checkpoint(untrained, checkpoint, label_value=1)  # every voxel becomes segment "a"
        metadata = read_metadata(checkpoint)

        array = sample_volume_array((10, 28, 32))
        volume_node = slicer.util.addVolumeFromArray(array, ijkToRAS=oblique_ijk_to_ras(), name="oblique")
        add_parent_transform(volume_node)
        segmentation_node = logic.process(volume_node, checkpoint=checkpoint, timeoutSec=600)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    test.assertEqual(segmentation_node.GetName(), "oblique segmentation")
    test.assertEqual(segmentation_node.GetTransformNodeID(), volume_node.GetTransformNodeID())
    segmentation = segmentation_node.GetSegmentation()
    test.assertEqual(segmentation.GetNumberOfSegments(), 2)
    for info in metadata.classes:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(info.name))
        test.assertIsNotNone(segment, "segment %s missing" % info.name)
        test.assertEqual(segment.GetLabelValue(), info.value)
        for got, expected in zip(segment.GetColor(), info.color):
            test.assertAlmostEqual(got, expected, places=3)
    check_geometry(test, segmentation_node, volume_node)
    labels = inspection.labels_on_volume(segmentation_node, volume_node)
    test.assertEqual(labels.shape, array.shape)
    test.assertTrue((labels == 1).all(), "every voxel of the volume must be in segment a")
    test.delayDisplay("Oblique volume test passed")


def check_geometry(test, segmentation_node, volume_node) -> None:
    """The segmentation's reference geometry and every segment's labelmap lie on the volume's IJK-to-RAS
    grid (the reference geometry's extent being the volume's)."""
    import numpy as np

    expected = inspection.ijk_to_ras(volume_node)
    reference, extent = inspection.reference_geometry(segmentation_node)
    test.assertTrue(np.allclose(reference, expected, atol=GEOMETRY_TOLERANCE), "reference geometry %s differs from the volume's %s" % (reference.tolist(), expected.tolist()))
    dimensions = volume_node.GetImageData().GetDimensions()
    test.assertEqual(extent, (0, dimensions[0] - 1, 0, dimensions[1] - 1, 0, dimensions[2] - 1))
    for identifier, geometry in inspection.labelmap_geometries(segmentation_node).items():
        test.assertTrue(np.allclose(geometry, expected, atol=GEOMETRY_TOLERANCE), "segment %s: labelmap geometry differs from the volume's" % identifier)


def chest_ct_path() -> pathlib.Path:
    """The chest CT shipped inside slicerio (128x128x34; installed with the extension's packages)."""
    import slicerio

    return pathlib.Path(slicerio.get_testdata_file("CTChest4.nrrd"))


def check_bundled_model_on_chest_ct(test, logic, checkpoint=None) -> None:
    """The bundled model (or ``checkpoint``, a copy of it) on the chest CT shipped in slicerio: the model's
    segments, on the CT's geometry, beside the CT in its study, with the body-wide segment ("body"; the
    chest model of rounds 1-2 called it "tissue") translucent in 3D (skipped when the bundled model is missing)."""
    checkpoint = pathlib.Path(checkpoint) if checkpoint else bundled_model_path()
    if not checkpoint.is_file():
        test.delayDisplay("Bundled model not present: test skipped")
        return
    from UNetSegmentationLib.model.header import read_metadata

    test.delayDisplay("Bundled model on the chest CT")
    logic.ensureDependencies()  # slicerio comes with the extension's packages
    volume_node = scene.load_volume(chest_ct_path(), "CTChest")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "UNetSegmentationTest patient"), "UNetSegmentationTest study")
    volume_item = hierarchy.GetItemByDataNode(volume_node)
    if volume_item:
        hierarchy.SetItemParent(volume_item, study)
    else:
        hierarchy.CreateItem(study, volume_node)
    segmentation_node = logic.process(volume_node, checkpoint=checkpoint, largestComponent=True, show3D=True, timeoutSec=1800)

    classes = read_metadata(checkpoint).classes
    segmentation = segmentation_node.GetSegmentation()
    names = [segmentation.GetNthSegment(index).GetName() for index in range(segmentation.GetNumberOfSegments())]
    test.assertEqual(names, [info.name for info in classes], "segment names must come from the model")
    check_geometry(test, segmentation_node, volume_node)
    labels = inspection.labels_on_volume(segmentation_node, volume_node)
    test.assertGreaterEqual(len(set(labels.ravel().tolist()) - {0}), 4, "the model finds most of its structures in the chest CT")
    test.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(segmentation_node)), study, "the result belongs to the CT's study")
    opacities = inspection.opacities_3d(segmentation_node)
    body = "body" if "body" in opacities else "tissue"
    test.assertLess(opacities[body], 1.0, "the body-wide segment must not hide the others in 3D")
    test.assertEqual(max(opacities.values()), 1.0, "the innermost segments stay opaque in 3D")
    test.delayDisplay("Bundled model test passed")


def chest_segmentation_path() -> pathlib.Path:
    """The Slicer segmentation of that CT shipped inside slicerio (ribs, vertebral columns, lungs, tissue)."""
    import slicerio

    return pathlib.Path(slicerio.get_testdata_file("Segmentation.seg.nrrd"))


def check_fine_tuning(test, logic, checkpoint=None) -> None:
    """"Improve the model" for a few steps: the bundled model (or ``checkpoint``, a copy of it) fine-tuned
    on the chest CT and its segmentation, exported from the scene; the new model lands in the models
    folder, names its base in its model card, and the base is left as it was (skipped when the bundled
    model is missing)."""
    checkpoint = pathlib.Path(checkpoint) if checkpoint else bundled_model_path()
    if not checkpoint.is_file():
        test.delayDisplay("Bundled model not present: test skipped")
        return
    from UNetSegmentationLib.model.header import read_metadata
    from UNetSegmentationLib.panel.checkpoints import describe_checkpoint

    test.delayDisplay("Fine-tuning the bundled model for a few steps")
    logic.ensureDependencies()
    before = checkpoint.read_bytes()
    volume_node = scene.load_volume(chest_ct_path(), "CTChest")
    segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CTChest corrected")
    scene.read_segmentation(chest_segmentation_path(), segmentation_node)
    folder = temporary_folder()
    try:
        models = folder / "Models"
        path = logic.fineTune(volume_node, segmentation_node, checkpoint=checkpoint, modelsFolder=models, epochs=1, stepsPerEpoch=2, timeoutSec=1800)
        test.assertEqual(path.parent, models)
        test.assertEqual(read_metadata(path).training["fine_tuning"]["base"]["name"], checkpoint.name)
        test.assertIn("Fine-tuned from %s" % checkpoint.name, describe_checkpoint(path).summary())
        test.assertEqual(checkpoint.read_bytes(), before, "the base model is never written")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    test.delayDisplay("Fine-tuning test passed")

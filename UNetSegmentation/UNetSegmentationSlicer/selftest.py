"""The bodies of the module's self-test, run inside Slicer by ``UNetSegmentationTest`` (``Slicer --testing``).

Each check takes the test case (for its assertions and ``delayDisplay``) and the module's logic.
numpy and slicerio are imported inside the checks: this file is imported only when the test runs.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from typing import Sequence

import slicer
import vtk

from UNetSegmentationLib.panel.checkpoints import bundled_model_path
from UNetSegmentationLib.protocol.runner import package_parent


def run_engine(test, python: str, arguments: Sequence) -> None:
    """``python -m UNetSegmentationLib ARGUMENTS`` with the engine on the path; the test fails on a non-zero exit."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(package_parent())] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else []))
    result = subprocess.run([python, "-m", "UNetSegmentationLib"] + [str(a) for a in arguments], capture_output=True, text=True, env=environment)
    test.assertEqual(result.returncode, 0, result.stderr)


def volume_from_array(array, ijk_to_ras, name: str):
    """A scalar volume node holding ``array`` ([k, j, i]) with the 4x4 ``ijk_to_ras`` geometry."""
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, ijk_to_ras[row, column])
    return slicer.util.addVolumeFromArray(array, ijkToRAS=matrix, name=name)


def check_oblique_volume(test, logic) -> None:
    """A small checkpoint made by the engine that labels every voxel "a", on an oblique volume with
    anisotropic spacing: named, coloured segments that cover the volume voxel for voxel."""
    from UNetSegmentationLib.model.header import read_metadata
    from UNetSegmentationLib.panel.selftest_support import constant_checkpoint, oblique_ijk_to_ras, sample_volume_array

    test.delayDisplay("Oblique, anisotropic volume with a small checkpoint")
    logic.ensureDependencies()  # the engine below needs torch; installs without asking

    folder = pathlib.Path(slicer.util.tempDirectory("UNetSegmentationTest"))
    untrained = folder / "untrained.safetensors"
    checkpoint = folder / "every-voxel-is-a.safetensors"
    run_engine(test, logic.enginePython(), ["create", "--arch", "unetplusplus", "--classes", "a,b", "--features", "4,8,16,32,64", "--overwrite", untrained])
    constant_checkpoint(untrained, checkpoint, label_value=1)  # every voxel becomes segment "a"
    metadata = read_metadata(checkpoint)

    ijk_to_ras = oblique_ijk_to_ras()
    array = sample_volume_array((10, 28, 32))
    volume_node = volume_from_array(array, ijk_to_ras, "oblique")

    segmentation_node = logic.process(volume_node, checkpoint=checkpoint, timeoutSec=600)

    test.assertIsNotNone(segmentation_node)
    test.assertEqual(segmentation_node.GetName(), "oblique segmentation")
    segmentation = segmentation_node.GetSegmentation()
    test.assertEqual(segmentation.GetNumberOfSegments(), 2)
    for info in metadata.classes:
        segment_id = segmentation.GetSegmentIdBySegmentName(info.name)
        test.assertTrue(segment_id, "segment %s missing" % info.name)
        color = segmentation.GetSegment(segment_id).GetColor()
        for got, expected in zip(color, info.color):
            test.assertAlmostEqual(got, expected, places=3)
    check_geometry(test, segmentation_node, ijk_to_ras, array.shape, folder / "exported.seg.nrrd")
    test.delayDisplay("Oblique volume test passed")


def check_geometry(test, segmentation_node, ijk_to_ras, shape_kji, exported: pathlib.Path) -> None:
    """Write the segmentation back to a file and compare it with the volume: segment "a" covers every
    voxel, along the same axes and spacing, starting where the volume's first voxel is."""
    import numpy as np  # only when the self-test runs
    import slicerio

    from UNetSegmentationLib.panel.selftest_support import lps_from_ras

    slicer.util.exportNode(segmentation_node, str(exported))
    test.assertTrue(exported.is_file(), "the segmentation could not be exported")
    written = slicerio.read_segmentation(str(exported))
    segments = {s["name"]: s for s in written["segments"]}
    test.assertEqual(set(segments), {"a", "b"})
    voxels = np.asarray(written["voxels"])  # [i, j, k]
    labelled = np.argwhere(voxels == segments["a"]["labelValue"])
    test.assertEqual(len(labelled), int(np.prod(shape_kji)), "every voxel of the volume must be in segment a")
    test.assertEqual(tuple(labelled.max(axis=0) - labelled.min(axis=0) + 1), tuple(shape_kji)[::-1])
    volume_ijk_to_lps = lps_from_ras(ijk_to_ras)
    segmentation_ijk_to_lps = np.asarray(written["ijkToLPS"], dtype=float)
    corner = segmentation_ijk_to_lps[:3, :3] @ labelled.min(axis=0) + segmentation_ijk_to_lps[:3, 3]
    np.testing.assert_allclose(segmentation_ijk_to_lps[:3, :3], volume_ijk_to_lps[:3, :3], atol=1e-4)
    np.testing.assert_allclose(corner, volume_ijk_to_lps[:3, 3], atol=1e-3)


def check_bundled_model_on_sample_ct(test, logic) -> None:
    """The bundled model on the CTChest sample: segments named by the model (skipped when the model or SampleData is missing)."""
    if not bundled_model_path().is_file():
        test.delayDisplay("Bundled model not present: test skipped")
        return
    try:
        import SampleData  # a Slicer module; absent in some custom builds
    except ImportError:
        test.delayDisplay("SampleData module not available: test skipped")
        return
    test.delayDisplay("Bundled model on the CTChest sample")
    volume_node = SampleData.SampleDataLogic().downloadSample("CTChest")
    test.assertIsNotNone(volume_node)
    segmentation_node = logic.process(volume_node, largestComponent=True, timeoutSec=1800)
    segmentation = segmentation_node.GetSegmentation()
    test.assertGreater(segmentation.GetNumberOfSegments(), 0)
    for index in range(segmentation.GetNumberOfSegments()):
        name = segmentation.GetSegment(segmentation.GetNthSegmentID(index)).GetName()
        test.assertFalse(name.startswith("Segment_"), "segment names must come from the model, got %s" % name)
    test.delayDisplay("Bundled model test passed")

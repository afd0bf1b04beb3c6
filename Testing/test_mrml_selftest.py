"""The module's own self-test (``UNetSegmentationTest`` in UNetSegmentation.py, bodies in
``UNetSegmentationSlicer.selftest``) on real MRML (slicer-core), as ``Slicer --testing`` runs it.

The same code path as inside Slicer: the module's logic exports the volume, runs the engine in a child
process (``PythonSlicer`` stands for Slicer's interpreter) and imports the result. Stand-ins only for
what slicer-core lacks (``slicer.app``, Qt, ScriptedLoadableModule's base classes, the PyTorch
extension's check that torch is installed): see ``mrml_support.slicer_module``.
"""

from __future__ import annotations

import pytest

import mrml_support

pytestmark = pytest.mark.mrml
mrml = mrml_support.mrml
slicer_module = mrml_support.slicer_module


def test_the_modules_oblique_volume_self_test_passes_on_real_mrml(slicer_module):
    case = slicer_module.module.UNetSegmentationTest("test_ObliqueVolume")
    case.setUp()
    case.test_ObliqueVolume()
    assert_ran_to_its_end(slicer_module)


def test_the_modules_bundled_model_self_test_passes_on_real_mrml(slicer_module):
    """The check ``test_BundledModelOnSampleCT`` runs, on a copy of the bundled model (its export cache stays out of the repository)."""
    from UNetSegmentationSlicer import selftest

    case = slicer_module.module.UNetSegmentationTest("test_BundledModelOnSampleCT")
    case.setUp()
    selftest.check_bundled_model_on_chest_ct(case, slicer_module.module.UNetSegmentationLogic(), checkpoint=mrml_support.bundled_model_copy())
    assert_ran_to_its_end(slicer_module)


def test_the_modules_fine_tuning_self_test_passes_on_real_mrml(slicer_module):
    """The check ``test_FineTuning`` runs (a few steps), on a copy of the bundled model."""
    from UNetSegmentationSlicer import selftest

    case = slicer_module.module.UNetSegmentationTest("test_FineTuning")
    case.setUp()
    selftest.check_fine_tuning(case, slicer_module.module.UNetSegmentationLogic(), checkpoint=mrml_support.bundled_model_copy())
    assert list(slicer_module.temp.iterdir()) == [], "the run's temporary files are removed"
    assert slicer_module.pip_calls == [] and slicer_module.errors == []


def assert_ran_to_its_end(slicer_module) -> None:
    scene = slicer_module.mrml.scene
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1, "the check ran to its end"
    assert list(slicer_module.temp.iterdir()) == [], "the run's temporary files are removed"
    assert slicer_module.pip_calls == [] and slicer_module.errors == []

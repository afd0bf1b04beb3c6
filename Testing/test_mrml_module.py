"""UNetSegmentation.py (the widget and the logic) driven end to end on real MRML (slicer-core).

The module's own Python — the widget's setup and button/timer handlers, the logic's blocking
``process`` — runs against Slicer's real scene, nodes and ``slicer.util``, with the real engine as a
child process. Stand-ins only for what slicer-core lacks: Qt (timers, settings, the panel's widgets),
``slicer.app``, ScriptedLoadableModule's base classes, ``parameterNodeWrapper`` and the PyTorch
extension (``mrml_support.slicer_module``). What Qt itself does with the widgets is not covered.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

import mrml_support

pytestmark = pytest.mark.mrml
mrml = mrml_support.mrml
slicer_module = mrml_support.slicer_module


@pytest.fixture(scope="module")
def every_voxel_a(tmp_path_factory):
    from conftest import create_checkpoint

    from UNetSegmentationLib.panel.selftest_support import constant_checkpoint

    folder = tmp_path_factory.mktemp("module-ckpt")
    untrained = create_checkpoint(folder / "untrained.safetensors", classes="a,b")
    return constant_checkpoint(untrained, folder / "every-voxel-a.safetensors", label_value=1)


def segment_names(node) -> list:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def nan_volume(mrml):
    """A float volume with one NaN voxel: the engine refuses it with its own message."""
    array = np.zeros((4, 8, 8), dtype=np.float32)
    array[1, 2, 3] = np.nan
    return mrml.volume_from_array(array, np.eye(4), "nan")


# --- the logic, blocking --------------------------------------------------------------------------------


def test_process_imports_a_named_coloured_segmentation_on_the_input_geometry(slicer_module, every_voxel_a):
    from UNetSegmentationLib.model.header import read_metadata

    mrml = slicer_module.mrml
    inspection = mrml.layer("inspection")
    mrml.add_slice_views()
    volume = mrml_support.oblique_volume(mrml, transformed=True)
    logic = slicer_module.module.UNetSegmentationLogic()
    node = logic.process(volume, checkpoint=every_voxel_a, batchSize=2, largestComponent=True, confidenceMap=True, show3D=True, timeoutSec=180)

    assert node.GetName() == "oblique segmentation"
    assert segment_names(node) == ["a", "b"]
    segmentation = node.GetSegmentation()
    for info in read_metadata(every_voxel_a).classes:
        np.testing.assert_allclose(segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(info.name)).GetColor(), info.color, atol=1e-5)
    assert (inspection.labels_on_volume(node, volume) == 1).all()
    assert node.GetTransformNodeID() == volume.GetTransformNodeID() is not None
    np.testing.assert_allclose(inspection.reference_geometry(node)[0], inspection.ijk_to_ras(volume), atol=1e-4)
    assert segmentation.ContainsRepresentation(mrml.slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName())
    assert node.GetStorageNode() is None, "no storage node pointing at the deleted temporary file"
    confidence = mrml.scene.GetFirstNodeByName("oblique segmentation confidence")
    assert mrml.slicer.util.arrayFromVolume(confidence).shape == (10, 28, 32)
    display = confidence.GetDisplayNode()  # shows where the model is unsure: confident voxels transparent
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.5, 0.99) and display.GetApplyThreshold()
    assert display.GetUpperThreshold() == pytest.approx(0.99)
    composite = mrml.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (volume.GetID(), confidence.GetID())
    assert list(slicer_module.temp.iterdir()) == [], "temporary files must be removed"
    assert slicer_module.pip_calls == []


def test_process_refills_a_chosen_output_node(slicer_module, every_voxel_a):
    mrml = slicer_module.mrml
    volume = mrml_support.oblique_volume(mrml)
    mine = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my lungs")
    mine.GetSegmentation().AddEmptySegment("old", "old")
    node = slicer_module.module.UNetSegmentationLogic().process(volume, outputSegmentation=mine, checkpoint=every_voxel_a, timeoutSec=180)
    assert node is mine and node.GetName() == "my lungs" and segment_names(node) == ["a", "b"]
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_process_raises_with_the_engines_own_message(slicer_module, every_voxel_a):
    mrml = slicer_module.mrml
    volume = nan_volume(mrml)
    with pytest.raises(RuntimeError, match=r"Segmentation failed: .*contains NaN or infinite voxels"):
        slicer_module.module.UNetSegmentationLogic().process(volume, checkpoint=every_voxel_a, timeoutSec=180)
    assert list(slicer_module.temp.iterdir()) == []
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_missing_packages_are_installed_with_no_deps_after_asking(slicer_module):
    from UNetSegmentationLib.panel.requirements import REQUIREMENTS
    from UNetSegmentationSlicer import dependencies

    installed = {r.module for r in REQUIREMENTS} - {"monai", "onnxruntime"}
    pip_calls, asked = [], []

    def pip_install(arguments):
        pip_calls.append(arguments)
        installed.update({"monai", "onnxruntime"})

    def find_spec(name):
        return object() if name in installed else None

    torch_utils = dependencies.pytorch_utils_logic()  # the PyTorch extension's stand-in: torch present
    assert dependencies.ensure_dependencies(confirm=lambda text: asked.append(text) or True, torch_utils=torch_utils, pip_install=pip_install, find_spec=find_spec)
    assert "monai>=1.3" in asked[0] and "onnxruntime>=1.17" in asked[0]
    assert pip_calls == ["--no-deps monai>=1.3 onnxruntime>=1.17"]
    installed.discard("monai")
    with pytest.raises(RuntimeError, match="declined"):
        dependencies.ensure_dependencies(confirm=lambda text: False, torch_utils=torch_utils, pip_install=pip_install, find_spec=find_spec)
    assert pip_calls == ["--no-deps monai>=1.3 onnxruntime>=1.17"]
    assert dependencies.ensure_dependencies(torch_utils=torch_utils, find_spec=lambda name: object()) is False  # nothing missing: nothing asked


def test_without_the_pytorch_extension_the_user_is_told_to_install_it(slicer_module, monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails
    with pytest.raises(RuntimeError, match="needs the 'PyTorch' extension"):
        slicer_module.module.UNetSegmentationLogic().ensureDependencies()


# --- the widget -------------------------------------------------------------------------------------------


def drive(widget, timeout_s=180):
    deadline = time.monotonic() + timeout_s
    while widget.segmentation.timer.active and time.monotonic() < deadline:
        widget.onTimer(widget.segmentation)
        time.sleep(0.05)


def test_widget_setup_fills_the_panel_and_a_click_segments(slicer_module, every_voxel_a, small_unetpp):
    from UNetSegmentationLib.inference.options import DEFAULTS

    module, mrml = slicer_module.module, slicer_module.mrml
    volume = mrml_support.oblique_volume(mrml)
    volume.SetName("CT")
    slicer_module.settings[module.LAST_CHECKPOINT_SETTING] = str(every_voxel_a)
    widget = module.UNetSegmentationWidget()
    widget.setup()
    ui = widget.ui
    parameters = widget._parameterNode

    # defaults: the first volume, the last checkpoint used, the engine's own settings; architecture and depths from its metadata
    assert parameters.inputVolume is volume and parameters.checkpoint == every_voxel_a
    assert (parameters.batchSize, parameters.device, parameters.sliceAxis, parameters.largestComponent) == (DEFAULTS.batch_size, DEFAULTS.device, "auto", DEFAULTS.largest_component)
    assert ui.modelInfoLabel.text.startswith("UNet++, 2 segments: a, b")
    assert ui.architectureComboBox.itemData(ui.architectureComboBox.currentIndex) == "unetplusplus" and not ui.architectureComboBox.enabled
    assert [d for _, d in ui.depthComboBox.items] == ["1", "2", "3", "4", "accurate"] and ui.depthComboBox.visible
    assert ui.depthComboBox.itemData(ui.depthComboBox.currentIndex) == "4"
    assert [d for _, d in ui.deviceComboBox.items] == ["auto", "cpu", "cuda"]
    assert not ui.classNamesLineEdit.visible
    assert (ui.applyButton.text, ui.applyButton.enabled) == ("Segment this volume", True)

    # a missing volume disables the button and says why
    parameters.inputVolume = None
    assert not ui.applyButton.enabled and ui.applyButton.toolTip == "Select an input volume."
    parameters.inputVolume = volume

    # the user picks depth 2, then segments
    ui.depthComboBox.currentIndex = 1
    widget.onDepthChanged(1)
    assert parameters.depth == "2"
    widget.onApplyButton()
    assert widget.segmentation.run.state == "segmenting" and ui.applyButton.text == "Cancel" and ui.applyButton.enabled
    assert not ui.inputsCollapsibleButton.enabled
    assert widget.segmentation.run.arguments()[widget.segmentation.run.arguments().index("--depth") + 1] == "2"
    drive(widget)
    assert widget.segmentation.run.state == "done", widget.segmentation.run.message
    assert ui.applyButton.text == "Segment this volume" and ui.progressBar.value == 100
    assert ui.statusLabel.text.startswith("Done in ") and "2 segment(s) in 'CT segmentation'" in ui.statusLabel.text
    assert any(line.startswith("Segmenting 10 slices") and " backend, " in line and " precision)" in line for line in ui.logTextEdit.lines)
    assert slicer_module.settings[module.LAST_CHECKPOINT_SETTING] == str(every_voxel_a)
    assert parameters.outputSegmentation is None, "the next run must create a new node again"

    # a second run, cancelled while segmenting: no node added, no files left
    nodes_before = mrml.scene.GetNumberOfNodes()
    parameters.checkpoint = small_unetpp
    widget.onApplyButton()
    # pressed again at once: the warm engine may finish ten small slices between two timer ticks, so
    # waiting for a progress event first could find the run already done and start a third one
    assert widget.segmentation.run.state == "segmenting" and ui.applyButton.text == "Cancel"
    widget.onApplyButton()  # the button says Cancel
    assert widget.segmentation.run.state == "cancelled" and ui.statusLabel.text == "Cancelled" and ui.progressBar.value == 0
    assert not widget.segmentation.timer.active and mrml.scene.GetNumberOfNodes() == nodes_before
    assert list(slicer_module.temp.iterdir()) == []
    widget.cleanup()


def test_widget_shows_the_reason_of_a_failure(slicer_module, every_voxel_a):
    volume = nan_volume(slicer_module.mrml)
    widget = slicer_module.module.UNetSegmentationWidget()
    widget.setup()
    widget._parameterNode.inputVolume = volume
    widget._parameterNode.checkpoint = every_voxel_a
    widget.onApplyButton()
    drive(widget)
    assert widget.segmentation.run.state == "failed"
    assert widget.ui.statusLabel.text.startswith("Failed: ") and "contains NaN or infinite voxels" in widget.ui.statusLabel.text
    assert widget.ui.applyButton.text == "Segment this volume" and widget.ui.applyButton.enabled
    widget.cleanup()


def test_plain_pytorch_checkpoints_ask_for_architecture_and_names(slicer_module, tmp_path):
    plain = tmp_path / "weights.pt"
    plain.write_bytes(b"PK\x03\x04zip")
    volume = mrml_support.oblique_volume(slicer_module.mrml)
    widget = slicer_module.module.UNetSegmentationWidget()
    widget.setup()
    parameters = widget._parameterNode
    parameters.inputVolume = volume
    parameters.checkpoint = plain
    ui = widget.ui
    assert ui.architectureComboBox.enabled and ui.classNamesLineEdit.visible and not ui.depthComboBox.visible
    assert parameters.architecture == "unet"
    assert not ui.applyButton.enabled and ui.applyButton.toolTip.startswith("Type the segment names")
    parameters.classNames = "liver"
    assert ui.applyButton.enabled
    widget.cleanup()


def test_a_scene_naming_a_model_that_no_longer_exists_falls_back_to_the_bundled_model_and_says_so(slicer_module, tmp_path):
    from UNetSegmentationLib.model.bundled import bundled_model_path

    module, mrml = slicer_module.module, slicer_module.mrml
    mrml_support.oblique_volume(mrml)
    gone = tmp_path / "my-tuned-model.safetensors"
    module.UNetSegmentationLogic().getParameterNode().checkpoint = gone  # saved with the scene; the file was deleted since
    widget = module.UNetSegmentationWidget()
    widget.setup()
    notice = f"The model this scene names, my-tuned-model.safetensors, no longer exists: using {bundled_model_path().name} instead."
    assert widget._parameterNode.checkpoint == bundled_model_path()
    assert widget.ui.modelInfoLabel.text.startswith(notice + "\nUNet++, 14 segments")
    assert notice in widget.ui.logTextEdit.lines
    assert widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip

    # a scene file loaded into this one names a missing model again: checked when the import ends
    widget._parameterNode.checkpoint = gone
    assert not widget.ui.applyButton.enabled
    mrml.scene.InvokeEvent(mrml.scene.EndImportEvent)
    assert widget._parameterNode.checkpoint == bundled_model_path() and widget.ui.applyButton.enabled
    widget._parameterNode.checkpoint = mrml_support.chest_model_copy()  # another model chosen: the notice goes
    assert not widget.ui.modelInfoLabel.text.startswith("The model this scene names")
    widget.cleanup()


def test_closing_the_scene_clears_the_panel_of_its_last_run(slicer_module, every_voxel_a):
    module, mrml = slicer_module.module, slicer_module.mrml
    volume = mrml_support.oblique_volume(mrml)
    widget = module.UNetSegmentationWidget()
    widget.setup()
    widget._parameterNode.inputVolume, widget._parameterNode.checkpoint = volume, every_voxel_a
    widget.onApplyButton()
    drive(widget)
    ui = widget.ui
    assert ui.statusLabel.text.startswith("Done in ") and ui.progressBar.value == 100 and ui.logTextEdit.lines

    mrml.scene.Clear(0)  # File > Close Scene
    assert widget.segmentation.run is None and widget.fineTuning.run is None
    assert (ui.statusLabel.text, ui.progressBar.value, ui.logTextEdit.lines, ui.reviewListWidget.items) == ("Select an input volume.", 0, [], [])
    assert ui.applyButton.text == "Segment this volume" and not ui.applyButton.enabled
    widget.cleanup()


def test_a_second_click_in_the_session_reuses_the_warm_engine_and_cleanup_ends_it(slicer_module, every_voxel_a):
    """Issue 25: the panel's runs go to the session's one warm engine; the second pays no start-up
    (its model comes from the engine's cache), and the module's cleanup ends the engine."""
    from support import process_group_alive

    from UNetSegmentationLib.panel.warm_engine import SESSION_ENGINE

    module, mrml = slicer_module.module, slicer_module.mrml
    volume = mrml_support.oblique_volume(mrml)
    widget = module.UNetSegmentationWidget()
    widget.setup()
    widget._parameterNode.inputVolume, widget._parameterNode.checkpoint = volume, every_voxel_a
    runs = []
    for _ in range(2):
        widget.onApplyButton()
        assert widget.segmentation.run.uses_warm_engine and widget.ui.applyButton.text == "Cancel"
        drive(widget)
        runs.append(widget.segmentation.run)
        assert runs[-1].state == "done", runs[-1].message
    assert [run.done_event["model"] for run in runs] == ["loaded", "cached"] and runs[1].done_event["timings"]["load_model_s"] == 0
    assert "starting the warm engine" in runs[0].log and "starting the warm engine" not in runs[1].log
    assert SESSION_ENGINE.client.starts == 1 and mrml.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2
    assert list(slicer_module.temp.iterdir()) == []
    pid = SESSION_ENGINE.client.pid
    widget.cleanup()
    assert SESSION_ENGINE.client is None and not process_group_alive(pid), "the engine ends with the module"

"""UNet Segmentation: one-click segmentation of a CT or MR volume with a U-Net-family network.

This file is the Slicer wiring only (module, parameter node, widget signals and timers, the logic's
entry points). What they call lives beside it: ``UNetSegmentationSlicer`` (the Slicer side, no Qt:
parameter mapping, dependencies, scene import/export, self-test bodies) and ``UNetSegmentationLib.panel``
(no Slicer, tested with pytest: the run's state machine, the checkpoint, depth and device choices).
Nothing heavy (torch, MONAI, numpy, SimpleITK) is imported at module level or in ``setup()``: the
network runs in the engine's child process, so Slicer stays responsive and Cancel stops it at once.
This file must stay parseable by Python 3.9 so that Slicer 5.8 can show a clear message.
"""

import logging
import pathlib
import sys
from typing import Annotated

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from UNetSegmentationLib.model.user_models import user_models_folder
from UNetSegmentationLib.panel import finetune_run as fineTuneStates
from UNetSegmentationLib.panel import run as runStates
from UNetSegmentationLib.panel.checkpoints import architecture_choices, bundled_model_path, checkpoint_for_scene, describe_checkpoint, readiness
from UNetSegmentationLib.panel.finetune_run import finetune_readiness, finetune_view
from UNetSegmentationLib.panel.review_list import review_items
from UNetSegmentationLib.panel.devices import DeviceProbe, device_choices
from UNetSegmentationLib.panel.run import SegmentationRun, panel_view, slicer_python
from UNetSegmentationLib.panel.run_controller import RunController
from UNetSegmentationLib.panel.warm_engine import SESSION_ENGINE
from UNetSegmentationSlicer import dependencies, finetune, model_card, parameters, refine_logic, scene, selftest, slices, texts, widgets

#: Slicer 5.8 (Python 3.9) cannot run the engine; 5.10 and later ship Python 3.12
MINIMUM_PYTHON = (3, 10)
LAST_CHECKPOINT_SETTING = "UNetSegmentation/LastCheckpoint"
TIMER_INTERVAL_MS = 200
PROBE_INTERVAL_MS = 500


#
# UNetSegmentation
#


class UNetSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "UNet Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["UNetSegmentation developers"]
        self.parent.helpText = texts.HELP_TEXT
        self.parent.acknowledgementText = texts.ACKNOWLEDGEMENT_TEXT
        if sys.version_info >= MINIMUM_PYTHON:  # the "UNet refine" Segment Editor effect, registered as Slicer registers scripted effects
            slicer.app.connect("startupCompleted()", lambda: __import__("UNetSegmentationSlicer.refine_effect", fromlist=["register_effect"]).register_effect())


#
# UNetSegmentationParameterNode
#


@parameterNodeWrapper
class UNetSegmentationParameterNode:
    """Settings of the panel, saved with the scene; ``parameters.run_options_from_parameters`` maps them
    onto the engine's options, whose defaults they take.

    inputVolume - the volume to segment.
    outputSegmentation - None: a new segmentation node each run; a node: replaced (after asking).
    checkpoint - the model file.
    architecture, classNames - only for a plain PyTorch checkpoint, which has no metadata.
    depth - UNet++ prune depth "1".."4" or "accurate"; "" is the checkpoint's recommended depth.
    device - "auto", "cpu" or "cuda".
    spacing, cropToBody - segment at the model's spacing ("model") or the volume's ("native"); only inside the body.
    trainingVolume, trainingSegmentation, trainSlices - the training pair of "Improve the model".
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    checkpoint: pathlib.Path
    architecture: str = ""
    classNames: str = ""
    depth: str = parameters.RECOMMENDED_DEPTH
    device: Annotated[str, Choice(parameters.DEVICE_CHOICES)] = parameters.DEFAULT_DEVICE
    batchSize: Annotated[int, WithinRange(1, parameters.MAX_BATCH_SIZE)] = parameters.DEFAULT_BATCH_SIZE
    sliceAxis: Annotated[str, Choice(parameters.SLICE_AXIS_CHOICES)] = parameters.DEFAULT_SLICE_AXIS
    largestComponent: bool = parameters.DEFAULT_LARGEST_COMPONENT
    confidenceMap: bool = False
    show3D: bool = True
    spacing: Annotated[str, Choice(parameters.SPACING_CHOICES)] = parameters.DEFAULT_SPACING
    cropToBody: bool = parameters.DEFAULT_CROP_TO_BODY
    trainingVolume: vtkMRMLScalarVolumeNode
    trainingSegmentation: vtkMRMLSegmentationNode
    trainSlices: str = ""


#
# UNetSegmentationWidget
#


class UNetSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Its two run buttons are each driven by a ``RunController`` (``segmentation``,
    ``fineTuning``); what the model section shows is ``model_card.ModelCard``."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self.card = model_card.ModelCard()
        self.segmentation = None
        self.fineTuning = None
        self._runContext = None
        self._deviceProbe = None
        self._deviceInfo = None
        self._probeTimer = None
        self._reviewItems = []
        self._reviewVolume = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if sys.version_info < MINIMUM_PYTHON:
            label = qt.QLabel(
                "UNet Segmentation needs 3D Slicer 5.10 or later (this Slicer runs Python %d.%d). "
                "Please install a newer Slicer from download.slicer.org." % sys.version_info[:2]
            )
            label.wordWrap = True
            self.layout.addWidget(label)
            return

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/UNetSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = UNetSegmentationLogic()
        for name, title in architecture_choices():
            self.ui.architectureComboBox.addItem(title, name)
        self._fillDeviceComboBox()

        self.segmentation = RunController(qt.QTimer(), panel_view, after_child=self._importResult, on_finished=self._showFailure)
        self.fineTuning = RunController(qt.QTimer(), finetune_view, on_finished=self._fineTuneFinished)
        for controller in (self.segmentation, self.fineTuning):
            controller.timer.setInterval(TIMER_INTERVAL_MS)
            controller.timer.timeout.connect(lambda controller=controller: self.onTimer(controller))
        self._probeTimer = qt.QTimer()
        self._probeTimer.setInterval(PROBE_INTERVAL_MS)
        self._probeTimer.timeout.connect(self.onProbeTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneChanged)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.useBundledModelButton.connect("clicked(bool)", self.onUseBundledModel)
        self.ui.architectureComboBox.connect("currentIndexChanged(int)", self.onArchitectureChanged)
        self.ui.depthComboBox.connect("currentIndexChanged(int)", self.onDepthChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.modelChoiceComboBox.connect("activated(int)", self.onModelChosen)
        self.ui.reviewListWidget.connect("currentRowChanged(int)", self.onReviewEntryChosen)
        self.ui.fineTuneButton.connect("clicked(bool)", self.onFineTuneButton)

        self.initializeParameterNode()
        self._showView()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        for controller in (self.segmentation, self.fineTuning):
            if controller is not None:
                controller.forget()
        SESSION_ENGINE.close()  # the session's warm engine ends with the module
        if self._probeTimer is not None:
            self._probeTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        if self.ui is None:
            return
        self.initializeParameterNode()
        self._startDeviceProbe()

    def exit(self) -> None:
        # a running segmentation goes on in the background; only the GUI binding is released
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """The scene closes: its runs stop, and nothing of them stays on the panel (state, log, review list)."""
        for controller in (self.segmentation, self.fineTuning):
            controller.forget()
        self._showReview(None, None)
        self.ui.logTextEdit.clear()
        self.setParameterNode(None)
        self._showView()

    def onSceneChanged(self, caller, event) -> None:
        """A new scene (after a close) or a scene file loaded into this one: its parameter node is checked."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ----------------------------------------------------------------------------

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        parameterNode = self._parameterNode
        if not parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                parameterNode.inputVolume = firstVolumeNode
        named = model_card.checkpoint_path(parameterNode)
        lastUsed = qt.QSettings().value(LAST_CHECKPOINT_SETTING, "")
        checkpoint, notice = checkpoint_for_scene(named, str(lastUsed) if lastUsed else None)
        if notice:
            self.card.notice = (checkpoint, notice)
            self._appendLog(notice)
        if checkpoint is not None and checkpoint != named:
            parameterNode.checkpoint = checkpoint

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Refresh what depends on the checkpoint and on the inputs (combo boxes, info, button)."""
        if self._parameterNode is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            self.card.refresh(self.ui, self._parameterNode, self._userModelsFolder())
            self._showView()
        finally:
            self._updatingGui = False

    def onArchitectureChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.architecture = self.ui.architectureComboBox.itemData(index) or ""

    def onDepthChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updatingGui and index >= 0:
            self._parameterNode.depth = self.ui.depthComboBox.itemData(index) or parameters.RECOMMENDED_DEPTH

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updatingGui and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or parameters.DEFAULT_DEVICE

    def onModelChosen(self, index) -> None:
        path = self.ui.modelChoiceComboBox.itemData(index)
        if self._parameterNode is not None and path:
            self._parameterNode.checkpoint = pathlib.Path(path)

    @staticmethod
    def _userModelsFolder() -> pathlib.Path:
        return user_models_folder(slicer.app.slicerUserSettingsFilePath)

    def onUseBundledModel(self) -> None:
        bundled = bundled_model_path()
        if not bundled.is_file():
            slicer.util.errorDisplay("The bundled model is missing from this installation: %s" % bundled)
            return
        self._parameterNode.checkpoint = bundled

    # -- devices (found by a short child process: torch is never imported here) --------------------

    def _fillDeviceComboBox(self) -> None:
        current = self._parameterNode.device if self._parameterNode else parameters.DEFAULT_DEVICE
        entries = [(choice.label, choice.value, choice.enabled) for choice in device_choices(self._deviceInfo)]
        widgets.fill_combo_box(self.ui.deviceComboBox, entries, current)

    def _startDeviceProbe(self) -> None:
        python = slicer_python()
        if self._deviceProbe is not None or python is None:
            return
        self._deviceProbe = DeviceProbe(python).start()
        self._probeTimer.start()

    def onProbeTimer(self) -> None:
        result = self._deviceProbe.poll() if self._deviceProbe else None
        if result is None:
            return
        self._probeTimer.stop()
        self._deviceInfo = result
        self._fillDeviceComboBox()
        if result.torch_version:
            self._appendLog("PyTorch %s; %s" % (result.torch_version, ("GPU: " + ", ".join(result.gpu_names)) if result.cuda else "no CUDA GPU"))

    def _restartDeviceProbe(self) -> None:
        self._deviceProbe = None
        self._deviceInfo = None
        self._fillDeviceComboBox()
        self._startDeviceProbe()

    # -- running -------------------------------------------------------------------------------------

    def _showView(self) -> None:
        """Buttons, progress bars and state texts of both runs, from their controllers."""
        if self.ui is None:
            return
        parameterNode, info = self._parameterNode, self.card.info
        if parameterNode is not None and info is not None:
            ready, reason = readiness(parameterNode.inputVolume is not None, info, parameterNode.classNames, parameterNode.architecture)
        else:
            ready, reason = False, "Loading\u2026"
        widgets.show_view(self.ui, self.segmentation.view(ready, reason))
        ready, reason = finetune_readiness(bool(parameterNode and parameterNode.trainingVolume), bool(parameterNode and parameterNode.trainingSegmentation),
                                           bool(info and info.metadata), self.segmentation.running)
        widgets.show_finetune_view(self.ui, self.fineTuning.view(ready, reason))

    def _appendLog(self, line) -> None:
        if self.ui is not None:
            self.ui.logTextEdit.appendPlainText(line)
        logging.info("UNetSegmentation: %s" % line)

    def _confirm(self, text) -> bool:
        if slicer.app.testingEnabled():
            return True
        return slicer.util.confirmOkCancelDisplay(text)

    def onTimer(self, controller) -> None:
        controller.tick()
        self._showView()

    def onApplyButton(self) -> None:
        if self.segmentation.press_cancels():
            self._showView()
            return
        parameterNode = self._parameterNode
        outputNode = parameterNode.outputSegmentation
        question = scene.replacement_question(outputNode)
        if question and not self._confirm(question):
            return
        info = self.card.info
        self.ui.logTextEdit.clear()
        try:
            run = self.logic.newRun(parameters.run_options_from_parameters(parameterNode, info), onLog=self._appendLog)
        except Exception as error:
            slicer.util.errorDisplay("Cannot start the segmentation: %s" % error)
            return
        qt.QSettings().setValue(LAST_CHECKPOINT_SETTING, str(info.path))
        self._runContext = {"volumeNode": parameterNode.inputVolume, "outputNode": outputNode, "metadata": info.metadata, "show3D": parameterNode.show3D}
        self.segmentation.start(run, self._beginSegmentation)
        self._showView()

    def _beginSegmentation(self, run) -> None:
        if self.logic.ensureDependencies(run, confirm=self._confirm, onStateChange=self._showViewAndProcessEvents):
            self._restartDeviceProbe()
        if run.running or run.state == runStates.IDLE:
            self.logic.startRun(run, self._runContext["volumeNode"], onStateChange=self._showViewAndProcessEvents)

    def _showViewAndProcessEvents(self) -> None:
        self._showView()
        slicer.app.processEvents()

    def _importResult(self, run) -> None:
        """The child succeeded: its result into the scene, the review list, and the next fine-tuning's pair."""
        self._showViewAndProcessEvents()
        context = self._runContext
        try:
            node = self.logic.importResult(run, context["volumeNode"], context["outputNode"], context["metadata"], show3D=context["show3D"])
        except Exception as error:
            logging.exception("UNetSegmentation: import failed")
            raise RuntimeError("the result could not be loaded into Slicer: %s" % error) from error
        if context["outputNode"] is not None and self._parameterNode is not None:
            self._parameterNode.outputSegmentation = node  # the same node, refilled (a new one if it was deleted meanwhile)
        self._showReview(run.done_event, context["volumeNode"])
        if self._parameterNode is not None:  # by default the next fine-tuning learns from this result, once corrected
            self._parameterNode.trainingVolume, self._parameterNode.trainingSegmentation = context["volumeNode"], node

    def _showFailure(self, run) -> None:
        if run.state == runStates.FAILED and not slicer.app.testingEnabled():
            slicer.util.errorDisplay("Segmentation failed:\n\n%s" % run.message, detailedText="\n".join(run.log))

    # -- review these slices first -------------------------------------------------------------------

    def _showReview(self, doneEvent, volumeNode) -> None:
        self._reviewItems, self._reviewVolume = review_items(doneEvent), volumeNode
        widgets.fill_list(self.ui.reviewListWidget, [item.label for item in self._reviewItems])

    def onReviewEntryChosen(self, row) -> None:
        """Move the slice views to the centre of the chosen slice."""
        if not 0 <= row < len(self._reviewItems) or not slicer.mrmlScene.IsNodePresent(self._reviewVolume):
            return
        item = self._reviewItems[row]
        r, a, s = slices.slice_centre_ras(self._reviewVolume, item.axis, item.index)
        slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)

    # -- improve the model ---------------------------------------------------------------------------

    def onFineTuneButton(self) -> None:
        if self.fineTuning.press_cancels():
            self._showView()
            return
        parameterNode = self._parameterNode
        volume, segmentation = parameterNode.trainingVolume, parameterNode.trainingSegmentation
        try:
            self.logic.ensureDependencies(confirm=self._confirm)
            trainSlices = parameterNode.trainSlices or refine_logic.corrected_slices(segmentation, volume)  # empty box: the slices refined in Segment Editor
            run = self.logic.newFineTune(parameterNode.checkpoint, volume, trainSlices=trainSlices, onLog=self._appendLog)
        except Exception as error:
            slicer.util.errorDisplay("Cannot start the fine-tuning: %s" % error)
            return
        self.fineTuning.start(run, lambda run: finetune.start_fine_tune(run, volume, segmentation))
        self._showView()

    def _fineTuneFinished(self, run) -> None:
        """The better of the new model and its base is selected for the next run (the run's message says which and why)."""
        if run.state == fineTuneStates.DONE and self._parameterNode is not None:
            self._parameterNode.checkpoint = run.pick.path


#
# UNetSegmentationLogic
#


class UNetSegmentationLogic(ScriptedLoadableModuleLogic):
    """The steps of a run that need Slicer (dependencies, export, import), in ``UNetSegmentationSlicer``;
    the run itself is ``UNetSegmentationLib.panel.run.SegmentationRun``.

    For scripts and tests, :meth:`process` does everything and blocks until the result is in the scene.
    """

    def getParameterNode(self):
        return UNetSegmentationParameterNode(super().getParameterNode())

    @staticmethod
    def enginePython() -> str:
        python = slicer_python()
        if python is None:
            raise RuntimeError("PythonSlicer was not found next to Slicer; the segmentation cannot run in the background")
        return python

    def newRun(self, options, onLog=None):
        """A :class:`SegmentationRun` of ``options`` (from ``parameters.run_options...``) in Slicer's temporary folder,
        on the session's warm engine (a second segmentation pays no start-up) where it serves the checkpoint."""
        python = self.enginePython()
        return SegmentationRun(options, python=python, temp_root=slicer.app.temporaryPath, on_log=onLog, warm_engine=SESSION_ENGINE.requests(python))

    def ensureDependencies(self, run=None, confirm=None, onStateChange=None) -> bool:
        """Install what is missing (after ``confirm(text)`` when given); True if something was installed."""
        return dependencies.ensure_dependencies(run, confirm, onStateChange)

    def startRun(self, run, volumeNode, onStateChange=None) -> None:
        """Export the volume to the run's temporary folder and start the engine child."""
        scene.export_and_start(run, volumeNode, onStateChange)

    def importResult(self, run, volumeNode, outputNode=None, metadata=None, show3D=False):
        """Load the result into the scene (replacing ``outputNode`` if given) and finish the run; returns the segmentation node."""
        segmentationNode = scene.import_result(run, volumeNode, outputNode, metadata, show_3d=show3D)
        if metadata is not None:  # what the model made, so that a fine-tuning can tell which classes the user corrected
            finetune.remember_model_result(segmentationNode, volumeNode, metadata.classes)
        run.finish_imported(segmentationNode.GetSegmentation().GetNumberOfSegments(), segmentationNode.GetName())
        return segmentationNode

    #: the panel's fine-tuning length (None: the engine's fine-tuning defaults); scripts and tests may shorten it
    fineTuneEpochs = None
    fineTuneStepsPerEpoch = None

    def newFineTune(self, checkpoint, volumeNode, modelsFolder=None, trainSlices="", epochs=None, stepsPerEpoch=None, onLog=None):
        """A :class:`FineTuneRun` of ``checkpoint`` on ``volumeNode`` whose model lands in ``modelsFolder`` (default: the user models folder)."""
        folder = modelsFolder or user_models_folder(slicer.app.slicerUserSettingsFilePath)
        return finetune.new_fine_tune(checkpoint, volumeNode, folder, self.enginePython(), slicer.app.temporaryPath, trainSlices,
                                      epochs or self.fineTuneEpochs, stepsPerEpoch or self.fineTuneStepsPerEpoch, onLog)

    def fineTune(self, volumeNode, segmentationNode, checkpoint=None, modelsFolder=None, trainSlices="", epochs=None, stepsPerEpoch=None, timeoutSec=None):
        """Fine-tune ``checkpoint`` (default: the bundled model) on the volume and its segmentation and block until
        the new model is saved; returns its path. Raises RuntimeError with the engine's own message on failure."""
        run = self.newFineTune(checkpoint or bundled_model_path(), volumeNode, modelsFolder, trainSlices, epochs, stepsPerEpoch,
                               onLog=lambda line: logging.info("UNetSegmentation: %s" % line))
        return finetune.fine_tune_and_wait(run, volumeNode, segmentationNode, timeoutSec, slicer.app.processEvents)

    def process(self, inputVolume, outputSegmentation=None, checkpoint=None, show3D=False, installDependencies=True, timeoutSec=None, **settings):
        """Segment ``inputVolume`` and block until the result is in the scene (for scripts and tests).

        ``checkpoint`` defaults to the bundled model; ``settings`` are the parameter node's names (``depth``,
        ``device``, ``batchSize``, ``sliceAxis``, ``largestComponent``, ``confidenceMap``, ``spacing``, ``cropToBody``,
        ``architecture``, ``classNames``) with the engine's defaults. Returns the segmentation node; raises RuntimeError with
        the engine's own message when the segmentation fails.
        """
        checkpoint = pathlib.Path(checkpoint) if checkpoint else bundled_model_path()
        metadata = describe_checkpoint(checkpoint).metadata  # None for a plain PyTorch file (or a bad one: the engine says why)
        run = self.newRun(parameters.run_options(checkpoint, **settings), onLog=lambda line: logging.info("UNetSegmentation: %s" % line))
        try:
            if installDependencies:
                self.ensureDependencies(run)
            self.startRun(run, inputVolume)
            run.wait(timeout_s=timeoutSec, on_poll=slicer.app.processEvents)
            if run.state == runStates.IMPORTING:
                return self.importResult(run, inputVolume, outputSegmentation, metadata, show3D=show3D)
        except Exception as error:
            run.fail(str(error))
            raise
        finally:
            if run.state != runStates.DONE:
                run.fail(run.message or "stopped")
        raise RuntimeError("Segmentation failed: %s" % run.message)


#
# UNetSegmentationTest
#


class UNetSegmentationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (``Slicer --testing``): installs missing packages without asking.
    The checks are in ``UNetSegmentationSlicer.selftest``."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ObliqueVolume()
        self.setUp()
        self.test_BundledModelOnSampleCT()
        self.setUp()
        self.test_FineTuning()

    def test_ObliqueVolume(self):
        """A small checkpoint made by the engine, on an oblique, anisotropic volume under a transform."""
        selftest.check_oblique_volume(self, UNetSegmentationLogic())

    def test_BundledModelOnSampleCT(self):
        """The bundled model on the chest CT shipped in slicerio (skipped when the model is not installed)."""
        selftest.check_bundled_model_on_chest_ct(self, UNetSegmentationLogic())

    def test_FineTuning(self):
        """Fine-tuning the bundled model for a few steps on the chest CT (skipped when the model is not installed)."""
        selftest.check_fine_tuning(self, UNetSegmentationLogic())

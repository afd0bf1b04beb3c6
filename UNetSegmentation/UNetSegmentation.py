"""UNet Segmentation: one-click segmentation of a CT or MR volume with a U-Net-family network.

This file is the thin Slicer layer. Every decision that does not need Slicer lives in
``UNetSegmentationLib`` (tested with pytest outside Slicer):

- ``slicer_run``: the run's state machine (idle, installing, exporting, segmenting, importing,
  done / failed / cancelled), what the button and progress bar show, the temporary files, and the
  engine child process (``PythonSlicer -m UNetSegmentationLib predict ... --progress json``);
- ``slicer_panel``: what the combo boxes list, the dependency list, the default checkpoint;
- ``checkpoint_header``: a checkpoint's classes and metrics, read without torch.

Nothing heavy (torch, MONAI, numpy, SimpleITK) is imported at module level or in ``setup()``; the
network only ever runs in the child process, so Slicer stays responsive and Cancel stops it at once.
This file must stay parseable by Python 3.9 so that Slicer 5.8 can show a clear message.
"""

import logging
import os
import pathlib
import sys
from typing import Annotated, Optional

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

#: Slicer 5.8 (Python 3.9) cannot run the engine; 5.10 and later ship Python 3.12
MINIMUM_PYTHON = (3, 10)
LAST_CHECKPOINT_SETTING = "UNetSegmentation/LastCheckpoint"
TIMER_INTERVAL_MS = 200


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
        self.parent.helpText = """
<p>Segments a CT or MR volume with a U-Net family network (U-Net, UNet++) in one click.</p>
<ol>
<li><b>Input volume</b>: choose the CT or MR volume to segment.</li>
<li><b>Model</b>: the bundled chest CT model is selected by default; choose another
<code>.safetensors</code> model with the file button. The panel shows which structures the model
segments and for which kind of image it was made.</li>
<li><b>Speed / accuracy</b> (UNet++ models): the recommended depth is preselected; shallower depths
are faster, and the measured Dice and time per slice are shown for each.</li>
<li>Press <b>Segment this volume</b>. The first time, the extension offers to install PyTorch and a
few Python packages (once, several minutes). The progress bar shows the slices done and the time
left; press <b>Cancel</b> to stop, nothing is added to the scene then.</li>
<li>The result appears as a new segmentation with named, coloured segments, aligned with the input.
Review and correct it in <b>Segment Editor</b> before any clinical use.</li>
</ol>
<p><b>Advanced</b>: batch size (lower it after an out-of-memory error), slice axis, keeping only the
largest connected piece of each segment, and a confidence map of the network.</p>
<p>This is a research tool, not a medical device.</p>
"""
        self.parent.acknowledgementText = """
UNet Segmentation uses PyTorch (through the PyTorch extension of Andras Lasso), MONAI, safetensors and
slicerio. U-Net: Ronneberger et al., MICCAI 2015. UNet++: Zhou et al., DLMIA 2018 and IEEE TMI 2020.
The background-process design follows the TotalSegmentator, MONAIAuto3DSeg and NNUNet extensions.
"""


#
# UNetSegmentationParameterNode
#


@parameterNodeWrapper
class UNetSegmentationParameterNode:
    """Settings of the panel, saved with the scene.

    inputVolume - the volume to segment.
    outputSegmentation - None: a new segmentation node each run; a node: replaced (after asking).
    checkpoint - the model file.
    architecture, classNames - only for a plain PyTorch checkpoint, which has no metadata.
    depth - UNet++ prune depth "1".."4" or "accurate"; "" is the checkpoint's recommended depth.
    device - "auto", "cpu" or "cuda".
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    checkpoint: pathlib.Path
    architecture: str = ""
    classNames: str = ""
    depth: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    batchSize: Annotated[int, WithinRange(1, 256)] = 4
    sliceAxis: Annotated[str, Choice(["auto", "i", "j", "k"])] = "auto"
    largestComponent: bool = False
    confidenceMap: bool = False
    show3D: bool = True


#
# UNetSegmentationWidget
#


class UNetSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._checkpointInfo = None
        self._checkpointKey = None
        self._run = None
        self._runContext = None
        self._runTimer = None
        self._deviceProbe = None
        self._deviceInfo = None
        self._probeTimer = None

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

        from UNetSegmentationLib.panel.choices import architecture_choices

        for name, title in architecture_choices():
            self.ui.architectureComboBox.addItem(title, name)
        self._fillDeviceComboBox()

        self._runTimer = qt.QTimer()
        self._runTimer.setInterval(TIMER_INTERVAL_MS)
        self._runTimer.timeout.connect(self.onRunTimer)
        self._probeTimer = qt.QTimer()
        self._probeTimer.setInterval(500)
        self._probeTimer.timeout.connect(self.onProbeTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.useBundledModelButton.connect("clicked(bool)", self.onUseBundledModel)
        self.ui.architectureComboBox.connect("currentIndexChanged(int)", self.onArchitectureChanged)
        self.ui.depthComboBox.connect("currentIndexChanged(int)", self.onDepthChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)

        self.initializeParameterNode()
        self._showView()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._run is not None and self._run.running:
            self._run.cancel()
        for timer in (self._runTimer, self._probeTimer):
            if timer is not None:
                timer.stop()
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
        if self._run is not None and self._run.running:
            self._run.cancel()
            self._runTimer.stop()
            self._showView()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
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
        if not self._checkpointPath(parameterNode):
            from UNetSegmentationLib.panel.choices import default_checkpoint

            lastUsed = qt.QSettings().value(LAST_CHECKPOINT_SETTING, "")
            checkpoint = default_checkpoint(str(lastUsed) if lastUsed else None)
            if checkpoint is not None:
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

    @staticmethod
    def _checkpointPath(parameterNode) -> Optional[pathlib.Path]:
        path = parameterNode.checkpoint if parameterNode else None
        if path is None or str(path) in ("", "."):
            return None
        return pathlib.Path(path)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Refresh what depends on the checkpoint and on the inputs (combo boxes, info, button)."""
        if self._parameterNode is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            self._refreshCheckpointInfo()
            self._showView()
        finally:
            self._updatingGui = False

    def _refreshCheckpointInfo(self) -> None:
        from UNetSegmentationLib.panel.choices import default_depth, describe_checkpoint

        path = self._checkpointPath(self._parameterNode)
        try:
            key = (str(path), os.path.getmtime(str(path))) if path else None
        except OSError:
            key = (str(path), None)
        if key == self._checkpointKey and self._checkpointInfo is not None:
            info = self._checkpointInfo
        else:
            info = describe_checkpoint(path)
            self._checkpointInfo, self._checkpointKey = info, key
        parameterNode = self._parameterNode
        ui = self.ui
        ui.modelInfoLabel.text = info.summary()

        # architecture: from the checkpoint; a choice only for plain PyTorch files
        plain = info.needs_model_options
        architecture = info.architecture or parameterNode.architecture
        index = ui.architectureComboBox.findData(architecture) if architecture else -1
        ui.architectureComboBox.blockSignals(True)
        ui.architectureComboBox.currentIndex = index if index >= 0 else (0 if plain else -1)
        ui.architectureComboBox.blockSignals(False)
        if plain and not parameterNode.architecture:
            parameterNode.architecture = ui.architectureComboBox.itemData(ui.architectureComboBox.currentIndex) or ""
        ui.architectureComboBox.enabled = plain
        ui.architectureComboBox.toolTip = (
            "A plain PyTorch file does not say which network it holds: choose it."
            if plain
            else "Read from the checkpoint."
        )
        ui.classNamesLabel.visible = plain
        ui.classNamesLineEdit.visible = plain

        # prune depth: each depth with its validation Dice and speed; hidden when the network cannot prune
        choices = info.depth_choices()
        ui.depthComboBox.blockSignals(True)
        ui.depthComboBox.clear()
        for choice in choices:
            ui.depthComboBox.addItem(choice.label, choice.value)
        values = [choice.value for choice in choices]
        selected = parameterNode.depth if parameterNode.depth in values else default_depth(choices)
        if selected is not None:
            ui.depthComboBox.currentIndex = values.index(selected)
        ui.depthComboBox.blockSignals(False)
        ui.depthLabel.visible = bool(choices)
        ui.depthComboBox.visible = bool(choices)
        ui.depthComboBox.enabled = bool(choices)

        deviceIndex = ui.deviceComboBox.findData(parameterNode.device)
        if deviceIndex >= 0 and deviceIndex != ui.deviceComboBox.currentIndex:
            ui.deviceComboBox.blockSignals(True)
            ui.deviceComboBox.currentIndex = deviceIndex
            ui.deviceComboBox.blockSignals(False)

    def onArchitectureChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.architecture = self.ui.architectureComboBox.itemData(index) or ""

    def onDepthChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updatingGui and index >= 0:
            self._parameterNode.depth = self.ui.depthComboBox.itemData(index) or ""

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updatingGui and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    def onUseBundledModel(self) -> None:
        from UNetSegmentationLib.panel.choices import bundled_model_path

        bundled = bundled_model_path()
        if not bundled.is_file():
            slicer.util.errorDisplay("The bundled model is missing from this installation: %s" % bundled)
            return
        self._parameterNode.checkpoint = bundled

    # -- devices (found by a short child process: torch is never imported here) --------------------

    def _fillDeviceComboBox(self) -> None:
        from UNetSegmentationLib.panel.choices import device_choices

        comboBox = self.ui.deviceComboBox
        current = self._parameterNode.device if self._parameterNode else "auto"
        comboBox.blockSignals(True)
        comboBox.clear()
        for index, choice in enumerate(device_choices(self._deviceInfo)):
            comboBox.addItem(choice.label, choice.value)
            if not choice.enabled:
                try:
                    comboBox.model().item(index).setEnabled(False)
                except AttributeError:  # not a QStandardItemModel: leave it selectable, the engine refuses it
                    pass
        index = comboBox.findData(current)
        comboBox.currentIndex = index if index >= 0 else 0
        comboBox.blockSignals(False)

    def _startDeviceProbe(self) -> None:
        if self._deviceProbe is not None:
            return
        from UNetSegmentationLib.panel.choices import DeviceProbe
        from UNetSegmentationLib.panel.run import slicer_python

        python = slicer_python()
        if python is None:
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
        """Button, progress bar and state text from the run's state machine."""
        from UNetSegmentationLib.panel.choices import readiness
        from UNetSegmentationLib.panel.run import panel_view

        if self.ui is None:
            return
        parameterNode = self._parameterNode
        if parameterNode is not None and self._checkpointInfo is not None:
            ready, reason = readiness(
                parameterNode.inputVolume is not None,
                self._checkpointInfo,
                parameterNode.classNames,
                parameterNode.architecture,
            )
        else:
            ready, reason = False, "Loading\u2026"
        view = self._run.view(ready, reason) if self._run is not None else panel_view("idle", ready=ready, reason=reason)
        self.ui.applyButton.text = view.button_text
        self.ui.applyButton.enabled = view.button_enabled
        self.ui.applyButton.toolTip = view.button_tooltip
        self.ui.progressBar.maximum = view.progress_maximum
        self.ui.progressBar.value = view.progress_value
        self.ui.statusLabel.text = view.progress_text
        for widget in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton, self.ui.advancedCollapsibleButton):
            widget.enabled = view.settings_enabled

    def _appendLog(self, line) -> None:
        if self.ui is not None:
            self.ui.logTextEdit.appendPlainText(line)
        logging.info("UNetSegmentation: %s" % line)

    def _confirm(self, text) -> bool:
        if slicer.app.testingEnabled():
            return True
        return slicer.util.confirmOkCancelDisplay(text)

    def onApplyButton(self) -> None:
        from UNetSegmentationLib.panel.run import FAILED, IDLE, SEGMENTING

        if self._run is not None and self._run.running:
            if self._run.state == SEGMENTING:
                self._run.cancel()
                self._runTimer.stop()
            self._showView()
            return

        parameterNode = self._parameterNode
        volumeNode = parameterNode.inputVolume
        outputNode = parameterNode.outputSegmentation
        if outputNode is not None and outputNode.GetSegmentation().GetNumberOfSegments() > 0:
            if not self._confirm(
                "The segmentation '%s' already has %d segment(s). Replace it with the new result?\n\n"
                "(Choose 'Create new segmentation' as output to keep it.)"
                % (outputNode.GetName(), outputNode.GetSegmentation().GetNumberOfSegments())
            ):
                return

        info = self._checkpointInfo
        options = self.logic.runOptions(
            checkpoint=info.path,
            depth=parameterNode.depth if self.ui.depthComboBox.visible else None,
            device=parameterNode.device,
            batchSize=parameterNode.batchSize,
            sliceAxis=parameterNode.sliceAxis,
            largestComponent=parameterNode.largestComponent,
            confidenceMap=parameterNode.confidenceMap,
            architecture=parameterNode.architecture if info.needs_model_options else None,
            classNames=parameterNode.classNames if info.needs_model_options else None,
        )
        qt.QSettings().setValue(LAST_CHECKPOINT_SETTING, str(info.path))

        self.ui.logTextEdit.clear()
        try:
            run = self.logic.newRun(options, onLog=self._appendLog)
        except Exception as error:
            slicer.util.errorDisplay("Cannot start the segmentation: %s" % error)
            return
        self._run = run
        self._runContext = {
            "volumeNode": volumeNode,
            "outputNode": outputNode,
            "metadata": info.metadata,
            "show3D": parameterNode.show3D,
        }
        try:
            installed = self.logic.ensureDependencies(run, confirm=self._confirm, onStateChange=self._showViewAndProcessEvents)
            if installed:
                self._restartDeviceProbe()
            if run.running or run.state == IDLE:
                self.logic.startRun(run, volumeNode, onStateChange=self._showViewAndProcessEvents)
        except Exception as error:  # show the reason, never just "failed"
            logging.exception("UNetSegmentation: could not start")
            run.fail(str(error))
        self._showView()
        if run.state == SEGMENTING:
            self._runTimer.start()
        elif run.state == FAILED:
            self._showFailure(run)

    def _showViewAndProcessEvents(self) -> None:
        self._showView()
        slicer.app.processEvents()

    def onRunTimer(self) -> None:
        from UNetSegmentationLib.panel.run import FAILED, FINISHED_STATES, IMPORTING

        run = self._run
        if run is None:
            self._runTimer.stop()
            return
        run.poll()
        if run.state == IMPORTING:
            self._runTimer.stop()
            self._showViewAndProcessEvents()
            context = self._runContext
            try:
                node = self.logic.importResult(
                    run, context["volumeNode"], context["outputNode"], context["metadata"], show3D=context["show3D"]
                )
                if context["outputNode"] is not None and self._parameterNode is not None:
                    self._parameterNode.outputSegmentation = node  # the replaced node's successor
            except Exception as error:
                logging.exception("UNetSegmentation: import failed")
                run.fail("the result could not be loaded into Slicer: %s" % error)
        if run.state in FINISHED_STATES:
            self._runTimer.stop()
            if run.state == FAILED:
                self._showFailure(run)
        self._showView()

    def _showFailure(self, run) -> None:
        if not slicer.app.testingEnabled():
            slicer.util.errorDisplay("Segmentation failed:\n\n%s" % run.message, detailedText="\n".join(run.log))


#
# UNetSegmentationLogic
#


class UNetSegmentationLogic(ScriptedLoadableModuleLogic):
    """Slicer-side steps of a run (dependencies, export, import); the rest is in UNetSegmentationLib.

    For scripts and tests, :meth:`process` does everything and blocks until the result is in the scene.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return UNetSegmentationParameterNode(super().getParameterNode())

    # -- the engine's interpreter and options ---------------------------------------------------------

    @staticmethod
    def enginePython() -> str:
        from UNetSegmentationLib.panel.run import slicer_python

        python = slicer_python()
        if python is None:
            raise RuntimeError("PythonSlicer was not found next to Slicer; the segmentation cannot run in the background")
        return python

    @staticmethod
    def runOptions(checkpoint, depth=None, device="auto", batchSize=4, sliceAxis="auto", largestComponent=False,
                   confidenceMap=False, architecture=None, classNames=None):
        from UNetSegmentationLib.panel.run import RunOptions

        return RunOptions(
            checkpoint=pathlib.Path(checkpoint),
            depth=str(depth) if depth not in (None, "") else None,
            device=device or "auto",
            batch_size=int(batchSize),
            axis=sliceAxis if sliceAxis not in (None, "", "auto") else None,
            largest_component=bool(largestComponent),
            confidence_map=bool(confidenceMap),
            architecture=architecture or None,
            classes=classNames or None,
        )

    def newRun(self, options, onLog=None):
        from UNetSegmentationLib.panel.run import SegmentationRun

        return SegmentationRun(options, python=self.enginePython(), temp_root=slicer.app.temporaryPath, on_log=onLog)

    # -- dependencies ---------------------------------------------------------------------------------

    @staticmethod
    def _pyTorchUtilsLogic():
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(
                "UNet Segmentation needs the 'PyTorch' extension. Install it from the Extensions Manager "
                "(search for PyTorch), restart Slicer, and try again."
            )
        return PyTorchUtils.PyTorchUtilsLogic()

    def missingDependencies(self):
        """(torchMissing, [Requirement, ...]) — checked without importing torch or the packages."""
        from UNetSegmentationLib.panel.choices import missing_requirements

        torchMissing = not self._pyTorchUtilsLogic().torchInstalled()
        return torchMissing, missing_requirements()

    def installDependencies(self, torchMissing, requirements) -> None:
        from UNetSegmentationLib.panel.choices import TORCH_VERSION_REQUIREMENT, missing_requirements, pip_install_arguments

        if torchMissing:
            torch = self._pyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
            if torch is None:
                raise RuntimeError("PyTorch could not be installed. Install it with the 'PyTorch Utils' module, then try again.")
        if requirements:
            # --no-deps: pip must never replace Slicer's own numpy, SimpleITK or VTK
            slicer.util.pip_install(pip_install_arguments(requirements))
        stillMissing = missing_requirements()
        if stillMissing:
            raise RuntimeError(
                "these Python packages could not be installed: %s. Check the internet connection and the Python console."
                % ", ".join(r.pip for r in stillMissing)
            )

    def ensureDependencies(self, run=None, confirm=None, onStateChange=None) -> bool:
        """Install what is missing (after ``confirm(text)`` when given). Returns True if something was installed.

        Declining fails ``run`` (or raises without a run) with a message that says so.
        """
        from UNetSegmentationLib.panel.choices import install_confirmation_text

        torchMissing, requirements = self.missingDependencies()
        if not torchMissing and not requirements:
            return False
        if confirm is not None and not confirm(install_confirmation_text(requirements, torchMissing)):
            message = "the required Python packages are not installed (installation was declined)"
            if run is None:
                raise RuntimeError(message)
            run.fail(message)
            return False
        if run is not None:
            run.begin_installing()
        if onStateChange is not None:
            onStateChange()
        self.installDependencies(torchMissing, requirements)
        return True

    # -- export, run, import ------------------------------------------------------------------------

    def startRun(self, run, volumeNode, onStateChange=None) -> None:
        """Export the volume to the run's temporary folder and start the engine child."""
        if volumeNode is None:
            raise ValueError("no input volume")
        inputPath = run.begin_exporting()
        if onStateChange is not None:
            onStateChange()
        slicer.util.exportNode(volumeNode, str(inputPath))
        if not inputPath.is_file():
            raise RuntimeError("the volume '%s' could not be written to a temporary file (%s)" % (volumeNode.GetName(), inputPath))
        run.start_segmenting()
        if onStateChange is not None:
            onStateChange()

    def importResult(self, run, volumeNode, outputNode=None, metadata=None, show3D=False):
        """Load the engine's .seg.nrrd as a segmentation node on the input's geometry; finishes the run.

        ``outputNode`` None: a new node named after the volume; else that node is replaced by the result
        (same name). Returns the segmentation node.
        """
        from UNetSegmentationLib.panel.choices import output_segmentation_name, segment_id

        if volumeNode is None or not slicer.mrmlScene.IsNodePresent(volumeNode):
            raise RuntimeError("the input volume was removed from the scene during the segmentation")
        segmentationNode = slicer.util.loadSegmentation(str(run.output_path))
        if segmentationNode is None:
            raise RuntimeError("Slicer could not read the segmentation file the engine wrote (%s)" % run.output_path.name)
        self._forgetTemporaryFile(segmentationNode)

        if outputNode is not None and slicer.mrmlScene.IsNodePresent(outputNode):
            name = outputNode.GetName()
            slicer.mrmlScene.RemoveNode(outputNode)
        else:
            name = slicer.mrmlScene.GenerateUniqueName(output_segmentation_name(volumeNode.GetName()))
        segmentationNode.SetName(name)

        # names, colours and terminology come with the file; set names and colours again from the
        # checkpoint so they are right whatever the reader did with the header
        segmentation = segmentationNode.GetSegmentation()
        if metadata is not None:
            for info in metadata.classes:
                segment = segmentation.GetSegment(segment_id(info.value))
                if segment is None:
                    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(info.name))
                if segment is None:
                    continue
                segment.SetName(info.name)
                segment.SetColor(*info.color)

        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        if show3D:
            segmentationNode.CreateClosedSurfaceRepresentation()

        confidenceNode = None
        if run.confidence_path is not None and run.confidence_path.is_file():
            confidenceNode = slicer.util.loadVolume(str(run.confidence_path), {"name": name + " confidence", "show": False})
            self._forgetTemporaryFile(confidenceNode)
            confidenceNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
            displayNode = confidenceNode.GetDisplayNode()
            if displayNode is not None:
                colorNodeId = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
                if slicer.mrmlScene.GetNodeByID(colorNodeId) is not None:
                    displayNode.SetAndObserveColorNodeID(colorNodeId)
                displayNode.AutoWindowLevelOff()
                displayNode.SetWindowLevelMinMax(0.0, 1.0)
        if confidenceNode is not None:
            slicer.util.setSliceViewerLayers(background=volumeNode, foreground=confidenceNode, foregroundOpacity=0.4)
        else:
            slicer.util.setSliceViewerLayers(background=volumeNode)

        segmentCount = segmentation.GetNumberOfSegments()
        run.finish("Done in %s: %d segment(s) in '%s'%s" % (
            _formatDuration(run.elapsed_s), segmentCount, name,
            " (with warnings, see the log)" if run.warnings else "",
        ))
        return segmentationNode

    @staticmethod
    def _forgetTemporaryFile(node) -> None:
        """The file it was read from is deleted: drop the storage node so 'Save' writes the node anew."""
        storageNode = node.GetStorageNode() if node is not None else None
        if storageNode is not None:
            slicer.mrmlScene.RemoveNode(storageNode)

    def process(self, inputVolume, outputSegmentation=None, checkpoint=None, depth=None, device="auto", batchSize=4,
                sliceAxis="auto", largestComponent=False, confidenceMap=False, show3D=False, architecture=None,
                classNames=None, installDependencies=True, timeoutSec=None):
        """Segment ``inputVolume`` and block until the result is in the scene (for scripts and tests).

        ``checkpoint`` defaults to the bundled model. Returns the segmentation node; raises RuntimeError
        with the engine's own message when the segmentation fails.
        """
        from UNetSegmentationLib.model.header import checkpoint_kind, read_metadata
        from UNetSegmentationLib.panel.choices import bundled_model_path
        from UNetSegmentationLib.panel.run import DONE, IMPORTING

        checkpoint = pathlib.Path(checkpoint) if checkpoint else bundled_model_path()
        metadata = read_metadata(checkpoint) if checkpoint_kind(checkpoint) == "safetensors" else None
        options = self.runOptions(checkpoint, depth, device, batchSize, sliceAxis, largestComponent, confidenceMap,
                                  architecture, classNames)
        run = self.newRun(options, onLog=lambda line: logging.info("UNetSegmentation: %s" % line))
        try:
            if installDependencies:
                self.ensureDependencies(run)
            self.startRun(run, inputVolume)
            run.wait(timeout_s=timeoutSec, on_poll=slicer.app.processEvents)
            if run.state == IMPORTING:
                return self.importResult(run, inputVolume, outputSegmentation, metadata, show3D=show3D)
        except Exception as error:
            run.fail(str(error))
            raise
        finally:
            if run.state != DONE:
                run.fail(run.message or "stopped")
        raise RuntimeError("Segmentation failed: %s" % run.message)


def _formatDuration(seconds) -> str:
    from UNetSegmentationLib.panel.run import format_duration

    return format_duration(seconds)


#
# UNetSegmentationTest
#


class UNetSegmentationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (``Slicer --testing``): installs missing packages without asking."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ObliqueVolume()
        self.setUp()
        self.test_BundledModelOnSampleCT()

    def _engine(self, *arguments):
        import subprocess

        from UNetSegmentationLib.protocol.runner import package_parent

        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join([str(package_parent())] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else []))
        result = subprocess.run(
            [UNetSegmentationLogic.enginePython(), "-m", "UNetSegmentationLib"] + [str(a) for a in arguments],
            capture_output=True, text=True, env=environment,
        )
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_ObliqueVolume(self):
        """A small checkpoint made by the engine, on an oblique volume with anisotropic spacing."""
        self.delayDisplay("Oblique, anisotropic volume with a small checkpoint")
        import numpy as np

        from UNetSegmentationLib.model.header import read_metadata
        from UNetSegmentationLib.panel.selftest_support import constant_checkpoint, lps_from_ras, oblique_ijk_to_ras, sample_volume_array

        logic = UNetSegmentationLogic()
        logic.ensureDependencies()  # the engine below needs torch; installs without asking

        folder = pathlib.Path(slicer.util.tempDirectory("UNetSegmentationTest"))
        untrained = folder / "untrained.safetensors"
        checkpoint = folder / "every-voxel-is-a.safetensors"
        self._engine("create", "--arch", "unetplusplus", "--classes", "a,b", "--features", "4,8,16,32,64", "--overwrite", untrained)
        constant_checkpoint(untrained, checkpoint, label_value=1)  # every voxel becomes segment "a"
        metadata = read_metadata(checkpoint)

        ijkToRAS = oblique_ijk_to_ras()
        array = sample_volume_array((10, 28, 32))
        vtkIjkToRAS = vtk.vtkMatrix4x4()
        for row in range(4):
            for column in range(4):
                vtkIjkToRAS.SetElement(row, column, ijkToRAS[row, column])
        volumeNode = slicer.util.addVolumeFromArray(array, ijkToRAS=vtkIjkToRAS, name="oblique")

        segmentationNode = logic.process(volumeNode, checkpoint=checkpoint, batchSize=4, timeoutSec=600)

        self.assertIsNotNone(segmentationNode)
        self.assertEqual(segmentationNode.GetName(), "oblique segmentation")
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 2)
        for info in metadata.classes:
            segmentId = segmentation.GetSegmentIdBySegmentName(info.name)
            self.assertTrue(segmentId, "segment %s missing" % info.name)
            color = segmentation.GetSegment(segmentId).GetColor()
            for got, expected in zip(color, info.color):
                self.assertAlmostEqual(got, expected, places=3)

        # geometry: write the segmentation back to a file and compare it with the volume, voxel for voxel
        import slicerio

        exported = folder / "exported.seg.nrrd"
        slicer.util.exportNode(segmentationNode, str(exported))
        self.assertTrue(exported.is_file(), "the segmentation could not be exported")
        written = slicerio.read_segmentation(str(exported))
        segments = {s["name"]: s for s in written["segments"]}
        self.assertEqual(set(segments), {"a", "b"})
        voxels = np.asarray(written["voxels"])  # [i, j, k]
        labelled = np.argwhere(voxels == segments["a"]["labelValue"])
        self.assertEqual(len(labelled), array.size, "every voxel of the volume must be in segment a")
        self.assertEqual(tuple(labelled.max(axis=0) - labelled.min(axis=0) + 1), array.shape[::-1])
        # same axes and spacing, and the first labelled voxel sits where the volume's first voxel is
        volumeIjkToLps = lps_from_ras(ijkToRAS)
        segmentationIjkToLps = np.asarray(written["ijkToLPS"], dtype=float)
        corner = segmentationIjkToLps[:3, :3] @ labelled.min(axis=0) + segmentationIjkToLps[:3, 3]
        np.testing.assert_allclose(segmentationIjkToLps[:3, :3], volumeIjkToLps[:3, :3], atol=1e-4)
        np.testing.assert_allclose(corner, volumeIjkToLps[:3, 3], atol=1e-3)
        self.delayDisplay("Oblique volume test passed")

    def test_BundledModelOnSampleCT(self):
        """The bundled model on a CT from SampleData (skipped when either is not available)."""
        from UNetSegmentationLib.panel.choices import bundled_model_path

        if not bundled_model_path().is_file():
            self.delayDisplay("Bundled model not present: test skipped")
            return
        try:
            import SampleData
        except ImportError:
            self.delayDisplay("SampleData module not available: test skipped")
            return
        self.delayDisplay("Bundled model on the CTChest sample")
        volumeNode = SampleData.SampleDataLogic().downloadSample("CTChest")
        self.assertIsNotNone(volumeNode)
        logic = UNetSegmentationLogic()
        segmentationNode = logic.process(volumeNode, largestComponent=True, timeoutSec=1800)
        segmentation = segmentationNode.GetSegmentation()
        self.assertGreater(segmentation.GetNumberOfSegments(), 0)
        for index in range(segmentation.GetNumberOfSegments()):
            name = segmentation.GetSegment(segmentation.GetNthSegmentID(index)).GetName()
            self.assertFalse(name.startswith("Segment_"), "segment names must come from the model, got %s" % name)
        self.delayDisplay("Bundled model test passed")

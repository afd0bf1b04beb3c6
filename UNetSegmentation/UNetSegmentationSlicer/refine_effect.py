"""The "UNet refine" Segment Editor effect: click on a segment's mistakes, see the network's correction
at once, Apply or Cancel (a scripted effect, registered by ``UNetSegmentation.py`` at start-up).

The one file of the Slicer layer that uses Qt, and only to turn Qt into calls: mouse presses in the
slice views into clicks, the timer into :meth:`~.refine_controller.RefineController.tick`, the buttons
into Apply, Cancel, Undo and Propagate, and the controller's state into the widgets. What decides is
in :mod:`.refine_controller` (the session's flow) and :mod:`.refine_logic` (the scene), both tested on
real MRML; this file is checked statically (``Testing/test_refine_effect_static.py``).

Inside Slicer, undo and modification go through the effect (``saveStateForUndo``,
``modifySegmentByLabelmap``), so Segment Editor's Undo button takes back an Apply and its masking and
overwrite settings are its own; the preview's editable area is asked of Segment Editor's logic on the
same parameter set node.
"""

import os

import qt
import vtk

import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from UNetSegmentationLib.panel.run import slicer_python
from UNetSegmentationLib.panel.warm_engine import SESSION_ENGINE
from UNetSegmentationSlicer import refine_logic
from UNetSegmentationSlicer.refine_controller import RefineController

EFFECT_NAME = "UNet refine"
ICON_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources", "Icons", "UNetRefine.png")
TIMER_INTERVAL_MS = 50
PROPAGATE_PARAMETER = "UNetRefine.PropagateAfterClick"
HELP_TEXT = (
    "<html>Correct the selected segment with clicks: the network re-segments the clicked slice at once and "
    "carries the correction to the neighbouring slices.<p>"
    "<ul><li><b>Left click</b>: this belongs to the segment.</li>"
    "<li><b>Right click</b> or <b>Shift + left click</b>: this does not.</li>"
    "<li><b>Apply</b> keeps the preview (Segment Editor's Undo takes it back); <b>Cancel</b> drops it.</li></ul>"
    "The editable area, the intensity range and the overwrite setting below are respected. The slices you "
    "correct are remembered: <i>Improve the model</i> in the UNet Segmentation module trains on them. "
    "Runs on the CPU in the module's background engine.</html>"
)


def register_effect():
    """Add this effect to Segment Editor (called once Slicer has started, by ``UNetSegmentation.py``)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(os.path.abspath(__file__).replace("\\", "/"))
    instance.self().register()


def _engine_client():
    """The session's warm engine client (the one the module's segmentations use), started when needed."""
    SESSION_ENGINE.requests(slicer_python())
    return SESSION_ENGINE.client


class _EffectEditing(refine_logic.EditorLogicEditing):
    """Undo and modification through the effect (the Segment Editor widget's own); the preview's editable
    area from Segment Editor's logic on the same parameter set node."""

    def __init__(self, scriptedEffect):
        refine_logic.EditorLogicEditing.__init__(self, scriptedEffect.parameterSetNode())
        self.scriptedEffect = scriptedEffect

    def save_state_for_undo(self):
        self.scriptedEffect.saveStateForUndo()

    def modify(self, segmentation_node, segment_id, modifier, add):
        mode = slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd if add else slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeRemove
        self.scriptedEffect.modifySegmentByLabelmap(segmentation_node, segment_id, modifier, mode)


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Clicks to the network, its answer as a preview; Apply or Cancel."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = EFFECT_NAME
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.controller = None
        self.timer = None
        self.widgets = {}

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        return qt.QIcon(ICON_PATH) if os.path.exists(ICON_PATH) else qt.QIcon()

    def helpText(self):
        return HELP_TEXT

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault(PROPAGATE_PARAMETER, 1)

    def setupOptionsFrame(self):
        frame = qt.QFrame()
        layout = qt.QVBoxLayout(frame)
        self.widgets["status"] = qt.QLabel()
        self.widgets["status"].wordWrap = True
        self.widgets["busy"] = qt.QProgressBar()
        self.widgets["busy"].setRange(0, 0)  # an endless bar: the engine is working
        self.widgets["busy"].visible = False
        self.widgets["propagate"] = qt.QCheckBox("Carry each click to the neighbouring slices")
        layout.addWidget(self.widgets["status"])
        layout.addWidget(self.widgets["busy"])
        layout.addWidget(self.widgets["propagate"])
        buttons = qt.QHBoxLayout()
        for name, text, slot in (("undo", "Undo click", self.onUndo), ("propagateNow", "Propagate", self.onPropagate),
                                 ("cancel", "Cancel", self.onCancel), ("apply", "Apply", self.onApply)):
            button = qt.QPushButton(text)
            button.connect("clicked()", slot)
            buttons.addWidget(button)
            self.widgets[name] = button
        layout.addLayout(buttons)
        self.widgets["propagate"].connect("toggled(bool)", self.onPropagateToggled)
        self.scriptedEffect.addOptionsWidget(frame)
        self.timer = qt.QTimer()
        self.timer.setInterval(TIMER_INTERVAL_MS)
        self.timer.connect("timeout()", self.onTimer)

    # -- activation ------------------------------------------------------------------------------------

    def activate(self):
        if self.controller is None:
            self.controller = RefineController(_EffectEditing(self.scriptedEffect), _engine_client, temp_root=slicer.app.temporaryPath)
        self._beginOnSelection()
        self.timer.start()

    def deactivate(self):
        """Leaving the effect drops the preview: nothing is applied that the user did not accept."""
        if self.timer is not None:
            self.timer.stop()
        if self.controller is not None:
            self.controller.close()
            self.controller = None

    def updateGUIFromMRML(self):
        if self.controller is not None:
            self._beginOnSelection()
        self._showState()

    def _beginOnSelection(self):
        node = self.scriptedEffect.parameterSetNode()
        if node is None or self.controller is None:
            return
        self.controller.propagate_after_click = bool(self.scriptedEffect.integerParameter(PROPAGATE_PARAMETER))
        self.controller.begin(node.GetSegmentationNode(), node.GetSelectedSegmentID(), node.GetSourceVolumeNode())

    # -- clicks ----------------------------------------------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        """A left press adds, a right or shift + left press removes, in the slice views only."""
        if self.controller is None or viewWidget.className() != "qMRMLSliceWidget":
            return False
        positive = refine_logic.click_is_positive(eventId == vtk.vtkCommand.LeftButtonPressEvent,
                                                  eventId == vtk.vtkCommand.RightButtonPressEvent, bool(callerInteractor.GetShiftKey()))
        if positive is None:
            return False
        x, y = callerInteractor.GetEventPosition()
        xyToRas = viewWidget.sliceLogic().GetSliceNode().GetXYToRAS()
        ras = xyToRas.MultiplyPoint([x, y, 0.0, 1.0])[:3]
        self.controller.click(ras, positive)
        self._showState()
        return True

    # -- buttons and timer -----------------------------------------------------------------------------

    def _forward(self, action):
        """Call the controller's ACTION (when the effect is active), then show its state."""
        if self.controller is not None:
            getattr(self.controller, action)()
        self._showState()

    def onTimer(self):
        self._forward("tick")

    def onApply(self):
        self._forward("apply")

    def onCancel(self):
        self._forward("cancel")

    def onUndo(self):
        self._forward("undo")

    def onPropagate(self):
        self._forward("propagate")

    def onPropagateToggled(self, checked):
        self.scriptedEffect.setParameter(PROPAGATE_PARAMETER, 1 if checked else 0)

    def _showState(self):
        if not self.widgets:
            return
        controller = self.controller
        busy = controller is not None and controller.busy
        self.widgets["status"].text = controller.message if controller is not None else ""
        self.widgets["busy"].visible = busy
        self.widgets["apply"].enabled = controller is not None and controller.can_apply  # the preview as shown; what is pending is dropped
        self.widgets["cancel"].enabled = controller is not None and (controller.can_apply or busy)
        self.widgets["undo"].enabled = controller is not None and controller.client.opened and not busy
        self.widgets["propagateNow"].enabled = controller is not None and controller.client.opened and not busy
        self.widgets["propagate"].blockSignals(True)
        self.widgets["propagate"].checked = bool(self.scriptedEffect.integerParameter(PROPAGATE_PARAMETER))
        self.widgets["propagate"].blockSignals(False)

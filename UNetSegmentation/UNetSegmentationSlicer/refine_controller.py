"""What the "UNet refine" effect does between the user and the engine, without Qt: each click sent to the
warm engine's refinement session, each answer shown as the preview, Apply and Cancel.

The effect class (:mod:`.refine_effect`) only turns Qt events into these calls and this state into its
widgets; everything that decides is here or in :mod:`.refine_logic`, tested on real MRML.

- The first click opens a session: the source volume and the selected segment (the automatic result the
  user refines) go to files in the session's folder, the engine reads them once.
- A click is sent at once; with :attr:`RefineController.propagate_after_click` (on by default) a
  propagation follows it, so the neighbouring slices follow the corrected one. The GUI never waits:
  :meth:`tick` (the effect's timer) reads what has come and puts each answer into the preview.
- When the engine died, the session is gone with it: the next click finds it so (its request fails),
  and is sent again, once, to a new session on a new engine, which starts from what the preview shows
  by then (the user's clicks so far are in it). A second failure is said, and the next click tries again.
- Apply applies the preview as it is (what is still with the engine is dropped: nothing the user did
  not see is applied); Cancel leaves the segmentation as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from UNetSegmentationLib.panel.refine_client import CLICK, RefineAnswer, RefineClient, RefineFailure
from UNetSegmentationSlicer import refine_logic, scene

#: what the effect says while nothing is happening
READY_TEXT = "Click on the segment's mistakes: left click adds, right or shift + left click removes."
WORKING_TEXT = "Refining\u2026"


class RefineController:
    """One refinement at a time of the selected segment.

    Args:
        editing: how segments are edited (:class:`.refine_logic.EditorLogicEditing`, or the effect's own).
        engine: gives the warm engine's client (started by it when needed).
        temp_root: where a session's files go (Slicer's temporary folder).
        checkpoint: the interactive model (None: the engine's bundled one).
    """

    def __init__(self, editing: refine_logic.SegmentEditing, engine: Callable[[], Any], temp_root: Union[str, Path, None] = None,
                 checkpoint: Union[str, Path, None] = None) -> None:
        self.logic = refine_logic.RefineLogic(editing)
        self.client = RefineClient(engine, checkpoint=checkpoint, temp_root=temp_root)
        self.propagate_after_click = True
        self.message = READY_TEXT
        self.failed = False
        self.latencies_ms: list = []
        self._volume_file: Optional[Path] = None
        self._retry: Optional[refine_logic.VolumeClick] = None  # the last click, sent again once if its session was gone

    # -- state the effect shows --------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.client.busy

    @property
    def can_apply(self) -> bool:
        return self.logic.previewing

    def target(self):
        """(segmentation node, segment ID, volume node) being refined (Nones before :meth:`begin`)."""
        return self.logic.segmentation_node, self.logic.segment_id, self.logic.volume_node

    # -- what the user does ------------------------------------------------------------------------

    def begin(self, segmentation_node, segment_id: Optional[str], volume_node) -> bool:
        """Refine ``segment_id`` (a change of segment or volume ends the refinement before, unapplied).
        False, with the reason in :attr:`message`, when there is nothing to refine."""
        if (segmentation_node, segment_id, volume_node) == self.target() and self.logic.segmentation_node is not None:
            return True
        self.cancel()
        self._volume_file = None
        try:
            self.logic.start(segmentation_node, segment_id, volume_node)
        except RuntimeError as error:
            self._say(_sentence(error), failed=True)
            return False
        self._say(READY_TEXT)
        return True

    def click(self, ras: Sequence[float], positive: bool) -> bool:
        """A click at world ``ras``: sent to the engine (opening a session first); False when refused."""
        if self.logic.volume_node is None:
            self._say("Select a segment and a source volume first.", failed=True)
            return False
        try:
            click = refine_logic.volume_click(self.logic.volume_node, ras, positive)
            self._send(click)
        except RuntimeError as error:
            self._say(_sentence(error), failed=True)
            return False
        self._retry = click
        return True

    def undo(self) -> None:
        """Take back the last click (and its propagation) in the engine; its answer restores the preview."""
        if self.client.opened:
            self.client.undo()
            self._say(WORKING_TEXT)

    def propagate(self) -> None:
        if self.client.opened:
            self.client.propagate()
            self._say(WORKING_TEXT)

    def tick(self) -> None:
        """Read what the engine has answered (the effect's timer); each answer goes into the preview."""
        for outcome in self.client.poll():
            if isinstance(outcome, RefineFailure) and outcome.kind == CLICK and self._retry is not None:
                click, self._retry = self._retry, None
                try:
                    self._send(click)  # a new session (on a new engine, if it had died), from the preview
                    continue
                except RuntimeError as error:
                    outcome = RefineFailure(CLICK, str(error))
            if isinstance(outcome, RefineFailure):
                self._say("The refinement failed: %s. The next click starts again from the preview." % outcome.message, failed=True)
            else:
                self._show(outcome)
        if not self.client.busy and not self.failed and self.message == WORKING_TEXT:
            self._say(READY_TEXT)

    def apply(self) -> refine_logic.Applied:
        """Apply the preview as it is now (Segment Editor's undo state saved first); the session ends."""
        self.client.finish(accepted=True)
        applied = self.logic.apply()
        self._restart_target()
        self._say("Applied: %d slice(s) of the segment changed." % len(applied.slices) if applied.slices else "Nothing to apply.")
        return applied

    def cancel(self) -> None:
        """Drop the preview and the session; the segmentation stays as it was."""
        self.client.finish(accepted=False)
        self.logic.cancel()
        self._restart_target()
        self._say(READY_TEXT)

    def close(self) -> None:
        """The effect is deactivated or the scene closes: nothing applied, the session and its files gone."""
        self.logic.cancel()
        self.client.close()
        self._volume_file = None

    # -- steps -------------------------------------------------------------------------------------

    def _send(self, click: refine_logic.VolumeClick) -> None:
        """Send a click (and its propagation), opening a session first when none is open."""
        if not self.client.opened:
            self._open_session()
        self.client.click(click.ijk, click.positive)
        if self.propagate_after_click:
            self.client.propagate()
        self._say(WORKING_TEXT)

    def _open_session(self) -> None:
        folder = self.client.folder
        if self._volume_file is None:
            self._volume_file = scene.export_volume(self.logic.volume_node, folder / "volume.nrrd")
        initial = self.logic.export_target(folder / ("initial-%d.nrrd" % self.client.opened_count))
        self.client.open(self._volume_file, None if initial is None else Path(initial))

    def _show(self, answer: RefineAnswer) -> None:
        if answer.latency_ms is not None and answer.kind == CLICK:
            self.latencies_ms.append(answer.latency_ms)
        if not answer.slices or answer.masks is None:
            return
        try:
            self.logic.show(refine_logic.proposal_from_file(answer.masks, answer.slices, answer.axis))
        except (OSError, ValueError, RuntimeError) as error:
            self._say("The engine's answer could not be shown: %s." % error, failed=True)

    def _restart_target(self) -> None:
        """After Apply or Cancel the same segment can be refined again at once, from what it now is."""
        segmentation_node, segment_id, volume_node = self.target()
        if segmentation_node is not None and segmentation_node.GetScene() is not None:
            try:
                self.logic.start(segmentation_node, segment_id, volume_node)
            except RuntimeError:
                self.logic.segmentation_node = None

    def _say(self, text: str, failed: bool = False) -> None:
        self.message, self.failed = text, failed


def _sentence(error: Exception) -> str:
    """An error's message as a sentence (its first letter raised, the rest as it is: names keep their case)."""
    text = str(error)
    return (text[:1].upper() + text[1:]).rstrip(".") + "."

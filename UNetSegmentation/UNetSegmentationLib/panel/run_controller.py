"""One controller behind both of the panel's run buttons ("Segment this volume" and "Fine-tune").

Why: the panel drove its two runs with two copies of the same steps (the button cancels while a run is
active, a timer polls the child, the step after the child's success, the end: timer stopped, failure
shown; a closed scene forgets the run). Those steps are made here, once, for any
:class:`~UNetSegmentationLib.panel.child_run.ChildRun`; the Slicer module gives each controller its
timer, the view of a run that does not exist yet, and what to do after the child (import the result,
choose the model). Qt-free: the timer is anything with ``start()`` and ``stop()``.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from UNetSegmentationLib.panel.child_run import CANCELLED, FAILED, FINISHED_STATES, IDLE, ChildRun, PanelView


class Timer(Protocol):
    """What the controller needs of a ``qt.QTimer``."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


#: ``(state, value, text, ready, reason)`` → the view of a run in ``state`` (before any run: ``idle``)
IdleView = Callable[..., PanelView]


class RunController:
    """The run of one button: started, polled, cancelled, finished, forgotten.

    Args:
        timer: polls :meth:`tick` while the child runs.
        idle_view: the view when there is no run (``run.finetune_view`` or ``run.panel_view``).
        after_child: called once with the run when its child has succeeded and the run waits in its
            ``after_child_state`` (the segmentation's import); a raised error fails the run with its text.
        on_finished: called once with the run when it has finished (done, failed or cancelled).
    """

    def __init__(self, timer: Timer, idle_view: IdleView, after_child: Optional[Callable[[ChildRun], None]] = None,
                 on_finished: Optional[Callable[[ChildRun], None]] = None) -> None:
        self.timer = timer
        self.idle_view = idle_view
        self.after_child = after_child
        self.on_finished = on_finished
        self.run: Optional[ChildRun] = None
        self._finished_seen = False

    @property
    def running(self) -> bool:
        return self.run is not None and self.run.running

    def press_cancels(self) -> bool:
        """The button was pressed: while a run is active it is the Cancel button (True: handled, a
        step that cannot be interrupted is left alone); else False, and the caller starts a run."""
        if not self.running:
            return False
        self.run.cancel()
        self._settle()
        return True

    def start(self, run: ChildRun, begin: Callable[[ChildRun], None]) -> None:
        """Make ``run`` this button's run and call ``begin(run)`` (export, start the child); an error
        fails the run with its own words. The timer runs while the child does."""
        self.run, self._finished_seen = run, False
        try:
            begin(run)
        except Exception as error:  # the reason is shown, never just "failed"
            run.fail(str(error) or type(error).__name__)
        if run.state == run.child_state:
            self.timer.start()
        self._settle()

    def tick(self) -> None:
        """The timer's slot: poll the child; after its success, the step that follows; at the end, stop."""
        run = self.run
        if run is None:
            self.timer.stop()
            return
        run.poll()
        if run.state == run.after_child_state and run.state not in FINISHED_STATES:
            self.timer.stop()
            if self.after_child is not None:
                try:
                    self.after_child(run)
                except Exception as error:
                    run.fail(str(error) or type(error).__name__)
        self._settle()

    def _settle(self) -> None:
        run = self.run
        if run is None or run.state not in FINISHED_STATES:
            return
        self.timer.stop()
        if not self._finished_seen:
            self._finished_seen = True
            if self.on_finished is not None:
                self.on_finished(run)

    def forget(self) -> None:
        """The scene closed: an active run is cancelled and the panel shows no run (nor its result)."""
        if self.running:
            self.run.cancel()
        self.timer.stop()
        self.run, self._finished_seen = None, False

    def view(self, ready: bool, reason: str) -> PanelView:
        """The button and progress bar: the run's, or the idle view when there is none."""
        if self.run is None:
            return self.idle_view(IDLE, ready=ready, reason=reason)
        return self.run.view(ready, reason)

    @property
    def failed(self) -> bool:
        return self.run is not None and self.run.state == FAILED

    @property
    def cancelled(self) -> bool:
        return self.run is not None and self.run.state == CANCELLED

"""Cancelling one request of the warm engine while the engine stays up.

``unetseg predict`` is cancelled by SIGTERM: the signal handler raises ``Cancelled`` (a
``BaseException``) in the running code, and the ``finally``/``except BaseException`` blocks of the
atomic writes (:func:`~UNetSegmentationLib.io.outputs.atomic_output`) and of the output locks
(:func:`~UNetSegmentationLib.io.outputs.claiming_outputs`) remove the temporary files and release the
locks on the way out. A request runs on a worker thread, where no signal arrives; so a ``cancel``
request sets the request's :class:`CancelToken`, and the request's reporter raises
:class:`RequestCancelled` (a ``BaseException`` too, so no ``except Exception`` of the run swallows it)
at the run's next event: the start, every batch's progress, a log line or a warning. The exception then
takes the same way out as SIGTERM's. Once every output is renamed into place the run reports ``done``
and can no longer be cancelled: a cancel that arrives later is too late, and the outputs stay.
"""

from __future__ import annotations

import threading


class RequestCancelled(BaseException):
    """Raised in a request's run when it was cancelled (a ``BaseException``, as SIGTERM's ``Cancelled``)."""


class CancelToken:
    """Whether a request was asked to stop; set by the reading thread, checked by the running one."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._finished = False

    def cancel(self) -> bool:
        """Ask the request to stop; False when it had already finished (too late: its outputs stay)."""
        with self._lock:
            if self._finished:
                return False
            self._event.set()
            return True

    def finish(self) -> bool:
        """Mark the run finished (its outputs are in place); False when a cancel came first."""
        with self._lock:
            if self._event.is_set():
                return False
            self._finished = True
            return True

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`RequestCancelled` if the request was asked to stop."""
        if self._event.is_set():
            raise RequestCancelled("cancelled")

"""The Slicer session's one warm engine (``unetseg serve``), so that a second segmentation pays no start-up.

Why: a fresh ``unetseg predict`` child imports the engine and loads the model on every click; the warm
engine (:mod:`~UNetSegmentationLib.engine`) keeps both between requests. A
:class:`~UNetSegmentationLib.panel.run.SegmentationRun` asks for its engine through a
:class:`WarmEngineFactory` (a real one from :func:`warm_requests`, or a test's fake) and drives what it
gets exactly as it drives a child process (:class:`~UNetSegmentationLib.engine.client.WarmRequest`).

:data:`SESSION_ENGINE` owns the one :class:`~UNetSegmentationLib.engine.client.EngineClient` of this
interpreter: created on the first click, closed by the module's ``cleanup`` and, as a last resort, when
the interpreter exits (the engine also ends by itself when its input closes). The client starts the
engine on its first request and a new one after a crash, saying the crash once. Torch-, numpy- and
Slicer-free.
"""

from __future__ import annotations

import atexit
import functools
from pathlib import Path
from typing import Optional, Protocol

from UNetSegmentationLib.engine.client import EngineClient, WarmRequest
from UNetSegmentationLib.inference.options import SegmentationOptions
from UNetSegmentationLib.panel.child_run import Engine


class WarmEngineFactory(Protocol):
    """Builds (does not start) one segmentation request on a warm engine, as the Engine a run drives."""

    def __call__(self, input_path: Path, output_path: Path, options: SegmentationOptions, checkpoint: Path) -> Engine: ...


def warm_requests(client: EngineClient) -> WarmEngineFactory:
    """The factory of requests to ``client``'s engine (each a :class:`WarmRequest`)."""
    return functools.partial(WarmRequest, client)


class SessionEngine:
    """The one warm engine client of this interpreter, for the engine interpreter the panel uses.

    A different interpreter (``PythonSlicer`` moved, a test's own launcher) closes the old engine and
    starts the next request on a new one: one engine at a time, never two left running.
    """

    def __init__(self) -> None:
        self.client: Optional[EngineClient] = None

    def requests(self, python: Optional[str]) -> WarmEngineFactory:
        """The factory a run uses: requests to this session's engine, started on ``python`` when needed."""
        if self.client is not None and self.client.python != python:
            self.close()
        if self.client is None:
            self.client = EngineClient(python=python)
        return warm_requests(self.client)

    def close(self) -> None:
        """Shut the engine down (a request still running is cancelled); the next run starts a new one."""
        client, self.client = self.client, None
        if client is not None:
            client.close()


#: this interpreter's warm engine (in Slicer: the session's)
SESSION_ENGINE = SessionEngine()
atexit.register(SESSION_ENGINE.close)

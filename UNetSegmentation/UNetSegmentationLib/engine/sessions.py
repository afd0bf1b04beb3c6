"""The warm engine's refinement sessions (issue 26): ``refine_open`` … ``refine_accept`` / ``refine_cancel``.

A session holds the volume on the model grid and the interactive model (:class:`~..interactive.session.RefineSession`),
so a click costs one slice's network call, not a read or a resampling. Requests run on the engine's one
worker thread, in order with the segmentations (one network at a time on the CPU's cores).

Answers (:class:`~..protocol.events.RefineAnswer`): the changed slices' masks on the input's grid pass
**by file**, as volumes do: an ``.npy`` file (uint8, ``(len(slices), ...)``, each the input's
``[k, j, i]`` array's slice along numpy ``axis``: ``np.moveaxis(labels, axis, 0)[slices] = masks``) in the
session's own temporary folder, written whole before the ``done`` event names it (a reader never sees
half a file). The last :data:`ANSWERS_KEPT` answers' files stay; all go with the session.

Nothing reaches the user's files unless the user accepts: ``refine_accept`` with ``output`` writes the
object through the output gate and :func:`~..io.outputs.atomic_output` (INITIAL's other segments unchanged,
:mod:`~..interactive.refined_output`); without ``output`` it only answers with every changed slice (the
Slicer side applies them itself). ``refine_cancel``, an engine that stops, or a session given up for a
newer one (more than :data:`MAX_SESSIONS` open) leaves nothing; the folders of an engine that was killed
are removed by the next engine that starts. A session lives in its engine: after a
restart, a request naming it is told to open it again (the client replays its clicks).
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from UNetSegmentationLib.engine.request_reporter import RequestReporter
from UNetSegmentationLib.engine.requests import (
    REFINE_ACCEPT, REFINE_CANCEL, REFINE_CLICK, REFINE_OPEN, REFINE_PROPAGATE, REFINE_SCRIBBLE, REFINE_UNDO, Request,
)
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.interactive.click_points import parse_click
from UNetSegmentationLib.interactive.refine_file import check_interactive_checkpoint, load_interactive_model
from UNetSegmentationLib.interactive.refined_output import InitialObject, read_initial, write_refined
from UNetSegmentationLib.interactive.session import GuidedModel, RefineSession, SliceMasks, read_session_input
from UNetSegmentationLib.io.file_digest import file_sha256
from UNetSegmentationLib.io.outputs import check_output_path, claiming_outputs
from UNetSegmentationLib.io.segmentations import grid_reference
from UNetSegmentationLib.model.bundled import interactive_checkpoint_path

#: sessions open at once (each holds a volume on the model grid); opening one more gives up the least recently used
MAX_SESSIONS = 4
#: interactive models kept loaded
MAX_MODELS = 2
#: answers' mask files kept per session (older ones are removed)
ANSWERS_KEPT = 8
#: a session's temporary folder: ``unetseg-refine-<engine pid>-<random>`` in the system's temporary folder
FOLDER_PREFIX = "unetseg-refine-"


@dataclass
class _Open:
    """One open session and what its accept needs."""

    session: RefineSession
    geometry: sitk.Image  # the input's grid without its voxels (io.segmentations.grid_reference): what the written object's grid is copied from
    input: Path
    checkpoint: Path
    initial: Optional[InitialObject]
    folder: Path
    answers: Deque[Path] = field(default_factory=collections.deque)
    count: int = 0


class Sessions:
    """The open sessions of one engine, by id, and the interactive models they use."""

    def __init__(self, loader: Callable[[Path], GuidedModel] = load_interactive_model) -> None:
        self._open: "collections.OrderedDict[str, _Open]" = collections.OrderedDict()
        self._models: "collections.OrderedDict[Tuple[str, str], GuidedModel]" = collections.OrderedDict()
        self._loader = loader
        remove_abandoned_folders()  # an engine killed with sessions open (SIGKILL, a crash) could not remove its own

    def run(self, request: Request, reporter: RequestReporter) -> dict:
        """Answer one refinement request with its ``done`` event (a problem is a :class:`UserError`)."""
        fields = dict(request.refine or {})
        if request.type == REFINE_OPEN:
            summary = self._open_session(str(request.id), fields)
        else:
            name = self._name(fields.get("session"))
            summary = {"session": name, **self._edit(request.type, name, fields)}
        reporter.done(**summary)
        return summary

    def close_all(self) -> None:
        """Give up every session (the engine stops): nothing is written, their folders go."""
        for name in list(self._open):
            self._close(name)

    @property
    def names(self) -> List[str]:
        return list(self._open)

    # -- requests ----------------------------------------------------------------------------------

    def _open_session(self, name: str, fields: Dict[str, Any]) -> dict:
        texts = {key: _text(fields, key) for key in ("input", "checkpoint", "initial", "segment")}
        checkpoint = interactive_checkpoint_path(texts["checkpoint"] or "bundled")
        if texts["segment"] and not texts["initial"]:
            raise UserError("'segment' names a segment of 'initial'; give 'initial' too")
        image = read_session_input(texts["input"])
        initial = read_initial(texts["initial"], image, texts["segment"]) if texts["initial"] else None
        session = RefineSession.open(image, self._model(checkpoint), None if initial is None else initial.mask, source=texts["input"])
        while len(self._open) >= MAX_SESSIONS:
            self._close(next(iter(self._open)))
        folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
        self._open[name] = _Open(session, grid_reference(image), Path(texts["input"]), checkpoint, initial, folder)  # the voxels are not kept
        grid = session.grid
        return {"session": name, "axis": grid.slice_axis_of_array(), "slices": [], "masks": None, "clicks": 0, "undo": 0,
                "slice_count": grid.slice_count, "model_grid": list(grid.model_size), "target": None if initial is None else initial.name}

    def _edit(self, kind: str, name: str, fields: Dict[str, Any]) -> dict:
        opened = self._open[name]
        self._open.move_to_end(name)
        session = opened.session
        if kind == REFINE_CANCEL:
            self._close(name)
            return {"cancelled": True, "slices": [], "masks": None}
        if kind == REFINE_ACCEPT:
            return self._accept(name, fields)
        if kind in (REFINE_CLICK, REFINE_SCRIBBLE):
            key = "click" if kind == REFINE_CLICK else "scribble"
            answer = session.add(parse_click(fields.get(key), key, scribble=kind == REFINE_SCRIBBLE))
        elif kind == REFINE_UNDO:
            answer = session.undo()
        elif kind == REFINE_PROPAGATE:
            slices = fields.get("slices")
            if slices is not None and not isinstance(slices, list):
                raise UserError("'slices' must be a list of slice indices along the slice axis, e.g. [12, 40]")
            answer = session.propagate(slices)
        else:  # pragma: no cover - requests.py lists the types
            raise UserError(f"unknown refinement request {kind!r}")
        return self._answered(opened, answer)

    def _accept(self, name: str, fields: Dict[str, Any]) -> dict:
        """Write the object when ``output`` is given (checked by the output gate first; a refusal leaves the
        session open), then close the session; the answer lists every slice the session changed (their masks
        came with the edits' answers)."""
        opened = self._open[name]
        output = _text(fields, "output")
        overwrite = fields.get("overwrite", False)
        if not isinstance(overwrite, bool):
            raise UserError("'overwrite' must be true or false")
        if output:
            protected = [p for p in (opened.input, opened.checkpoint, None if opened.initial is None else opened.initial.labels.path) if p is not None]
            with claiming_outputs():
                path = check_output_path(output, overwrite, protected=protected)
                write_refined(path, opened.geometry, opened.session.mask, opened.initial, overwrite)
        session = opened.session
        self._close(name)
        return {"axis": session.grid.slice_axis_of_array(), "slices": [], "masks": None, "clicks": len(session.clicks), "undo": 0,
                "output": str(Path(output)) if output else None, "changed_slices": sorted(session.changed)}

    # -- state -------------------------------------------------------------------------------------

    def _answered(self, opened: _Open, answer: SliceMasks) -> dict:
        """The answer's fields, its masks written whole into the session's folder first."""
        path = None
        if answer.slices:
            opened.count += 1
            path = opened.folder / f"answer-{opened.count}.npy"
            partial = opened.folder / f".answer-{opened.count}.partial.npy"
            np.save(partial, answer.masks.astype(np.uint8))
            os.replace(partial, path)
            opened.answers.append(path)
            while len(opened.answers) > ANSWERS_KEPT:
                opened.answers.popleft().unlink(missing_ok=True)
        session = opened.session
        return {"axis": answer.axis, "slices": list(answer.slices), "masks": None if path is None else str(path),
                "ms": round(answer.seconds * 1000.0, 2), "clicks": len(session.clicks), "undo": session.can_undo}

    def _name(self, value: Any) -> str:
        name = str(value)
        if name not in self._open:
            raise UserError(f"no refinement session {name[:60]!r} is open in this engine (accepted, cancelled, given up for a newer "
                            f"one, or the engine was restarted): open it again and replay its clicks")
        return name

    def _close(self, name: str) -> None:
        opened = self._open.pop(name, None)
        if opened is not None:
            shutil.rmtree(opened.folder, ignore_errors=True)

    def _model(self, checkpoint: Path) -> GuidedModel:
        """The interactive model of ``checkpoint``, loaded once per file content."""
        check_interactive_checkpoint(checkpoint)
        key = (str(checkpoint.resolve()), file_sha256(checkpoint))
        if key not in self._models:
            self._models[key] = self._loader(checkpoint)
            while len(self._models) > MAX_MODELS:
                self._models.popitem(last=False)
        self._models.move_to_end(key)
        return self._models[key]


def remove_abandoned_folders(root: Optional[Path] = None) -> List[Path]:
    """Remove the session folders (answers only, never the user's files) of engines that are no longer running."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        pid = folder.name[len(FOLDER_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and folder.is_dir() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it is running
        return True
    return True


def _text(fields: Dict[str, Any], key: str) -> Optional[str]:
    value = fields.get(key)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{key!r} must be a string, got {type(value).__name__}")
    return value or None

"""``unetseg refine``: a clicks file applied to a volume as a session applies them, the object written.

Everything that can be refused is refused before the network runs, in ``predict``'s order: the clicks
file, the output (through the output gate: never the input, INITIAL or the checkpoint, not replaced
without ``--overwrite``, claimed by a lock), the input (read and checked as ``predict`` reads it), the
target segment of INITIAL, the model, and every click's position (a click outside the volume is one
message, before the first click runs). Then each click is one session edit (:meth:`~.session.RefineSession.add`)
followed, unless ``propagate`` is off, by one propagation (:meth:`~.session.RefineSession.propagate`),
the order the Segment Editor effect follows; the object is written once, at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.interactive.click_points import read_clicks_file
from UNetSegmentationLib.interactive.refined_output import read_initial, write_refined
from UNetSegmentationLib.interactive.session import GuidedModel, RefineSession, read_session_input
from UNetSegmentationLib.io.outputs import check_output_path, claiming_outputs
from UNetSegmentationLib.model.bundled import interactive_model_path
from UNetSegmentationLib.protocol.events import REFINE
from UNetSegmentationLib.protocol.reporters import Reporter


def check_interactive_checkpoint(checkpoint) -> Path:
    """``checkpoint`` if it is a file; the missing bundled interactive model named as such."""
    path = Path(checkpoint)
    if not path.is_file():
        if path == interactive_model_path():
            raise UserError(f"the bundled interactive model is not installed ({path} is missing); give an interactive checkpoint with --checkpoint")
        raise UserError(f"interactive checkpoint not found: {path}")
    return path


def load_interactive_model(checkpoint, threads: Optional[int] = None) -> GuidedModel:
    """The interactive network of ``checkpoint`` (a missing file or an automatic model is refused in one
    message), on ``threads`` CPU threads when given (PyTorch's default otherwise)."""
    checkpoint = check_interactive_checkpoint(checkpoint)
    from UNetSegmentationLib.interactive.predictor import InteractiveModel  # torch only now

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return InteractiveModel.load(checkpoint)


def refine_file(input_path, initial_path, output_path, checkpoint, clicks_path, segment: Optional[str] = None, overwrite: bool = False,
                propagate: bool = True, reporter: Optional[Reporter] = None, threads: Optional[int] = None, model: Optional[GuidedModel] = None) -> dict:
    """Apply the clicks of ``clicks_path`` to ``input_path`` (starting from ``segment`` of ``initial_path``
    when given) and write the refined object to ``output_path``; returns the ``done`` summary.
    ``model``: an already opened model (tests, benchmarks), else ``checkpoint`` is loaded."""
    started = time.perf_counter()
    reporter = reporter or Reporter()
    clicks = read_clicks_file(clicks_path)
    protected = [Path(p) for p in (input_path, initial_path, checkpoint) if p is not None]
    with claiming_outputs():
        output = check_output_path(output_path, overwrite, protected=protected)  # checked and claimed before any work
        image = read_session_input(input_path)
        initial = read_initial(initial_path, image, segment) if initial_path is not None else None
        model = model or load_interactive_model(checkpoint, threads)
        session = RefineSession.open(image, model, None if initial is None else initial.mask, source=str(input_path))
        for click in clicks:  # every click's position checked before the first one runs
            for point in click.points:
                session.grid.position(click, point)
        reporter.start(REFINE, len(clicks), "click", slices=session.grid.slice_count, resolution=session.grid.grid.describe(),
                       model_grid=list(session.grid.model_size), target=None if initial is None else initial.name)
        propagate_ms = []
        for done, click in enumerate(clicks, 1):
            session.add(click)
            if propagate:
                propagate_ms.append(round(session.propagate().seconds * 1000.0, 2))
            reporter.progress(done)
        write_refined(output, image, session.mask, initial, overwrite)
    summary = {
        "output": str(output),
        "clicks": len(clicks),
        "click_latency_ms": list(session.click_latency_ms),
        "propagate_ms": propagate_ms,
        "changed_slices": sorted(session.changed),
        "object_voxels": int(session.mask.sum()),
        "seconds": round(time.perf_counter() - started, 4),
    }
    reporter.done(**summary)
    return summary

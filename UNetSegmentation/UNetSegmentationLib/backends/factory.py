"""The predictor a run uses, built from its resolved :class:`~UNetSegmentationLib.backends.plan.ExecutionPlan`.

Decides only what the plan cannot know beforehand: whether the network can be exported to ONNX
(an export that fails or disagrees with PyTorch falls back to PyTorch under ``--backend auto``).
Every other value (device, precision, threads, slices per call) is the plan's, used as it is.
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING, Any, Callable, List, Optional, Protocol, Tuple

from UNetSegmentationLib.backends.micro_batch import MicroBatched
from UNetSegmentationLib.backends.onnx_export import ExportError, onnx_predictor_for
from UNetSegmentationLib.backends.plan import ExecutionPlan, configure_threads
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.model.depth import Depth

if TYPE_CHECKING:  # annotations only: loading a checkpoint is the caller's business
    from UNetSegmentationLib.model.checkpoint import Checkpoint


class PredictorFactory(Protocol):
    """Builds the predictor of a run: ``(predictor, notes)``, ``notes`` being what could not be done as
    planned (reported as warnings, e.g. an ONNX export that fell back to PyTorch).

    The predictor is what :func:`~UNetSegmentationLib.inference.pipeline.predict_volume` runs: it has
    ``metadata`` and ``required_multiple`` and maps a ``(B, 2c+1, H, W)`` float32 batch to probabilities
    :func:`~UNetSegmentationLib.backends.factory.create_predictor`
    is the engine's; tests pass stand-ins.
    """

    def __call__(self, checkpoint: Checkpoint, plan: ExecutionPlan, depth: Depth, classification_guidance: bool) -> Tuple[Any, List[str]]: ...


def create_predictor(
    checkpoint, plan: ExecutionPlan, depth, classification_guidance: bool = True, log: Optional[Callable[[str], None]] = None,
) -> Tuple[object, List[str]]:
    """``(predictor, notes)``: the predictor ``predict_file`` runs, and what it could not do as planned.

    ``checkpoint``: a loaded :class:`~UNetSegmentationLib.model.checkpoint.Checkpoint`. For the ONNX backend
    a cached export of exactly this checkpoint, depth and classification guidance is used when there
    is one (the PyTorch network is then never built: no MONAI import), else it is exported, checked
    against PyTorch and cached. An export that fails or disagrees with PyTorch falls back to PyTorch
    when the backend was ``auto`` (the reason goes into ``notes``, which ``predict`` reports as a
    warning), and is an error when ``onnx`` or ``int8`` was asked for. With ``--precision int8`` the
    float32 export is returned: it is quantised once the volume is read (``plan.quantizes_per_volume``,
    :func:`~UNetSegmentationLib.backends.int8.quantize_for_volume`).

    ``log`` (e.g. a reporter's ``log``) hears of a step that takes long before it starts: the first
    run with a checkpoint and depth exports the network (seconds to a minute), and a cached export
    that does not verify is made again. ``notes`` start with the plan's own (e.g. ``--threads`` lowered).
    """
    checkpoint.metadata.check_automatic(Path(checkpoint.path).name)
    notes: List[str] = list(plan.notes)
    if plan.backend == "onnx":
        try:
            session = onnx_predictor_for(checkpoint, depth, classification_guidance, plan.threads_per_worker, log=log)
            return MicroBatched(session, plan.slices_per_call or 1, plan.workers, plan.threads_per_worker), notes
        except ExportError as error:
            if plan.quantizes_per_volume or plan.backend_requested == "onnx":
                asked = "--precision int8" if plan.quantizes_per_volume else "--backend onnx"
                raise UserError(f"{asked}: {error}") from None
            notes.append(f"ONNX Runtime cannot run this network ({error}); using PyTorch")
    import torch  # the PyTorch backend only: a cached ONNX export runs without it

    from UNetSegmentationLib.backends.torch_predictor import SlicePredictor
    from UNetSegmentationLib.model.checkpoint import build_model

    configure_threads(plan.threads)  # PyTorch's process-wide setting
    device = torch.device(str(plan.device))  # the plan's device is torch-free
    # positional: tests stand in for SlicePredictor with simpler callables
    predictor = SlicePredictor(build_model(checkpoint), checkpoint.metadata, device, depth, classification_guidance, plan.precision, True)
    if plan.slices_per_call is not None:
        return MicroBatched(predictor, plan.slices_per_call, plan.workers, plan.threads_per_worker, sets_torch_threads=True), notes
    return predictor, notes

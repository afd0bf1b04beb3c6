"""The predictor a run uses, built from its resolved :class:`~UNetSegmentationLib.backends.plan.ExecutionPlan`."""

from __future__ import annotations

from typing import List, Tuple

from UNetSegmentationLib.backends.micro_batch import CPU_MICRO_BATCH, MicroBatched
from UNetSegmentationLib.backends.onnx_export import ExportError, onnx_predictor_for
from UNetSegmentationLib.backends.plan import ExecutionPlan, configure_threads
from UNetSegmentationLib.errors import UserError


def create_predictor(checkpoint, plan: ExecutionPlan, depth, classification_guidance: bool = True) -> Tuple[object, List[str]]:
    """``(predictor, notes)``: the predictor ``predict_file`` runs, and what it could not do as planned.

    ``checkpoint``: a loaded :class:`~UNetSegmentationLib.model.checkpoint.Checkpoint`. For the ONNX backend
    a cached export of exactly this checkpoint, depth and classification guidance is used when there
    is one (the PyTorch network is then never built: no MONAI import), else it is exported, checked
    against PyTorch and cached. An export that fails or disagrees with PyTorch falls back to PyTorch
    when the backend was ``auto`` (the reason goes into ``notes``, which ``predict`` reports as a
    warning), and is an error when ``onnx`` or ``int8`` was asked for.
    """
    notes: List[str] = []
    if plan.backend == "onnx":
        try:
            session = onnx_predictor_for(checkpoint, depth, classification_guidance, plan.threads_per_worker)
            predictor = MicroBatched(session, CPU_MICRO_BATCH, plan.workers, plan.threads_per_worker)
            # int8: quantised once the volume is read, calibrated on its slices (int8.py)
            predictor.calibrate_int8 = plan.precision == "int8"
            return predictor, notes
        except ExportError as error:
            if plan.precision == "int8" or plan.backend_requested == "onnx":
                asked = "--precision int8" if plan.precision == "int8" else "--backend onnx"
                raise UserError(f"{asked}: {error}") from None
            notes.append(f"ONNX Runtime cannot run this network ({error}); using PyTorch")
    import torch

    from UNetSegmentationLib.backends.torch_predictor import SlicePredictor
    from UNetSegmentationLib.model.checkpoint import build_model

    configure_threads(plan.threads)  # PyTorch's process-wide setting
    device = torch.device(str(plan.device))  # the plan's device may be the torch-free CPU stand-in
    # positional: tests stand in for SlicePredictor with simpler callables
    predictor = SlicePredictor(build_model(checkpoint), checkpoint.metadata, device, depth, classification_guidance, plan.precision, True)
    if plan.on_cpu:
        return MicroBatched(predictor, CPU_MICRO_BATCH, plan.workers, plan.threads_per_worker, sets_torch_threads=True), notes
    return predictor, notes

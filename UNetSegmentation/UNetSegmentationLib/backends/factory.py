"""The predictor a run uses, built from the resolved backend, precision and threads."""

from __future__ import annotations

from typing import Optional

from UNetSegmentationLib.backends.micro_batch import CPU_MICRO_BATCH, MicroBatched
from UNetSegmentationLib.backends.plan import BACKENDS, check_threads, configure_threads, default_threads, parse_choice, resolve_backend, resolve_precision, split_threads
from UNetSegmentationLib.backends.onnx_export import ExportError, onnx_predictor_for
from UNetSegmentationLib.errors import UserError


def create_predictor(checkpoint, device, depth, options, notes: Optional[list] = None):
    """The predictor ``predict_file`` runs: backend, precision and threads from ``options``.

    ``checkpoint``: a loaded :class:`~UNetSegmentationLib.model.checkpoint.Checkpoint`. For the ONNX backend
    a cached export of exactly this checkpoint, depth and classification guidance is used when there
    is one (the PyTorch network is then never built: no MONAI import), else it is exported, checked
    against PyTorch and cached. An export that fails or disagrees with PyTorch falls back to PyTorch
    when the backend was ``auto`` (the reason is appended to ``notes``, which ``predict`` reports as a
    warning), and is an error when ``onnx`` was asked for.
    """
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    requested = getattr(options, "threads", None)
    total = check_threads(requested) if requested is not None else default_threads()
    workers, threads = split_threads(total, getattr(options, "slice_workers", None)) if on_cpu else (1, total)
    precision = resolve_precision(getattr(options, "precision", "auto"), device)
    backend = resolve_backend(getattr(options, "backend", "auto"), device, precision)
    guidance = getattr(options, "classification_guidance", True)
    if backend == "onnx":
        try:
            session = onnx_predictor_for(checkpoint, depth, guidance, threads)
            predictor = MicroBatched(session, CPU_MICRO_BATCH, workers, threads)
            # int8: quantised once the volume is read, calibrated on its slices (quantization.py)
            predictor.calibrate_int8 = precision == "int8"
            return predictor
        except ExportError as error:
            if precision == "int8" or parse_choice(getattr(options, "backend", "auto"), BACKENDS, "--backend") == "onnx":
                asked = "--precision int8" if precision == "int8" else "--backend onnx"
                raise UserError(f"{asked}: {error}") from None
            if notes is not None:
                notes.append(f"ONNX Runtime cannot run this network ({error}); using PyTorch")
    import torch

    from UNetSegmentationLib.model.checkpoint import build_model
    from UNetSegmentationLib.backends.torch_predictor import SlicePredictor

    configure_threads(requested)  # --threads: PyTorch's process-wide setting, as before
    device = torch.device(str(device))  # the resolved device may be the torch-free CPU stand-in
    # positional: tests stand in for SlicePredictor with simpler callables
    predictor = SlicePredictor(build_model(checkpoint), checkpoint.metadata, device, depth, guidance, precision, True)
    return MicroBatched(predictor, CPU_MICRO_BATCH, workers, threads, sets_torch_threads=True) if on_cpu else predictor

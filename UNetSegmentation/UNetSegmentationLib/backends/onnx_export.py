"""ONNX Runtime backend: the pruned network exported once, cached, checked against PyTorch.

Decides whether an export can serve a run: a cached one of exactly this checkpoint, depth and
guidance, else a fresh one that agrees with PyTorch (:class:`ExportError` otherwise).

Optional: needs ``onnxruntime`` and ``onnx`` (``pip install 'UNetSegmentationLib[onnx]'``, which also
brings ``onnxscript`` for PyTorch's newer exporter). Without them the plan's capability query says so
(:meth:`~UNetSegmentationLib.backends.device.Capabilities.onnx_runtime_installed`) and
``--backend auto`` uses PyTorch.

What is exported is :class:`~UNetSegmentationLib.backends.torch_network.ProbabilityNetwork`: the network
at the requested depth (UNet++ at depth L holds only the nodes i + j ≤ L and head L; ``accurate`` all
heads and their mean), BatchNorm folded, softmax/sigmoid included, with dynamic batch, rows and columns.
Its output is the class probabilities, not a decision: the pipeline resamples them from the model's
grid onto the input's before it decides (:mod:`~UNetSegmentationLib.inference.resolution`). The export is

- *cached*: ``<checkpoint stem>.<depth>.<key>.onnx`` next to the checkpoint, or in the cache folder
  (``$UNETSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/unetseg`` or ``~/.cache/unetseg``, subfolder
  ``onnx``) when that folder is not writable. ``key`` hashes the checkpoint's bytes, its metadata,
  the depth, the classification guidance, the exporter version and PyTorch's version, so a changed
  checkpoint is never served a stale export. The export stores the whole binding in its metadata and
  is used only when it verifies (:mod:`.onnx_cache`): anything else (another model's export copied
  over it, a damaged file) is said in a ``log`` line and exported again. A cache hit imports neither
  PyTorch nor MONAI: start-up is the ONNX Runtime session only. A first export is announced before
  it starts (the ``log`` callback), since it takes seconds to a minute.
- *checked*: before it is cached, ONNX Runtime and PyTorch run the same random inputs at two
  sizes (one different from the export example, to catch shapes frozen by tracing): every probability
  must be within :data:`~UNetSegmentationLib.backends.plan.ONNX_TOLERANCE` of PyTorch's, or the
  export is refused (:class:`ExportError`; ``auto`` then falls back to PyTorch).

The TorchScript-based exporter is tried first (about 1 s for the bundled model; deprecated in
PyTorch but present in 2.x), then the ``torch.export``-based one (needs ``onnxscript``; ~10× slower).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from UNetSegmentationLib.backends.onnx_cache import (
    BINDING, CHECKED_DIFFERENCE, OPSET, PORTABLE_BINDING, REQUIRED_MULTIPLE, cache_locations, content_digest, export_binding, export_name,
    export_problem, foreign_export_problem, partial_export, remove_abandoned_partials, shipped_export, torch_version,
)
from UNetSegmentationLib.backends.onnx_predictor import OnnxSlicePredictor, make_session
from UNetSegmentationLib.backends.plan import ONNX_TOLERANCE
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.io.output_gate import check_output
from UNetSegmentationLib.model.depth import depth_tag


class ExportError(Exception):
    """The network could not be exported, or its export disagrees with PyTorch."""


# --- export --------------------------------------------------------------------------------------


def _network(checkpoint, depth, guidance: bool):
    from UNetSegmentationLib.model.checkpoint import build_model
    from UNetSegmentationLib.backends.torch_network import ProbabilityNetwork, fold_batchnorm

    model = build_model(checkpoint)
    if hasattr(model, "classification_guidance"):
        model.classification_guidance = guidance
    fold_batchnorm(model)
    return ProbabilityNetwork.of(model, depth, checkpoint.metadata).eval()


def _required_multiple(network, depth) -> int:
    return int(network.model.required_multiple(depth if isinstance(depth, int) else None))


def _export_torchscript(network, example, path: Path) -> None:
    import torch

    torch.onnx.export(
        network,
        (example,),
        str(path),
        input_names=["slices"],
        output_names=["probabilities"],
        dynamic_axes={"slices": {0: "batch", 2: "rows", 3: "columns"}, "probabilities": {0: "batch", 2: "rows", 3: "columns"}},
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )


def _export_dynamo(network, example, path: Path) -> None:
    import torch

    dynamic = torch.export.Dim.DYNAMIC
    program = torch.onnx.export(
        network,
        (example,),
        input_names=["slices"],
        output_names=["probabilities"],
        dynamic_shapes={"x": {0: dynamic, 2: dynamic, 3: dynamic}},
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    program.save(str(path))


EXPORTERS = (("torchscript", _export_torchscript), ("dynamo", _export_dynamo))


@contextlib.contextmanager
def _silenced():
    """Exporters print progress, deprecation notes, registry warnings and, when they fail, the whole
    graph, partly from C++: send file descriptors 1 and 2 to /dev/null meanwhile, so that stdout
    stays clean for ``--progress json`` (failures are reported through :class:`ExportError`)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        devnull = None
    try:
        if devnull is not None:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(devnull, fd)
                except OSError:
                    pass
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        if devnull is not None:
            os.close(devnull)


def _check(session, network, in_channels: int, multiple: int) -> float:
    """The largest difference between ONNX Runtime's and PyTorch's probabilities on random inputs at
    two sizes (infinite when a shape is wrong or a value is not finite)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch, rows, columns in ((1, 2 * multiple, 2 * multiple), (2, 3 * multiple, 5 * multiple)):
        rows, columns = max(rows, 48), max(columns, 80)
        rows, columns = -(-rows // multiple) * multiple, -(-columns // multiple) * multiple
        x = torch.rand(batch, in_channels, rows, columns, generator=generator)
        with torch.inference_mode():
            expected = network(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        if got.shape != expected.shape:
            return float("inf")
        gap = float(np.abs(got - expected).max())
        if not np.isfinite(gap):  # NaN anywhere (NaN weights): max() would drop it and pass the check
            return float("inf")
        worst = max(worst, gap)
    return worst


def _add_metadata(path: Path, properties: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in properties.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def export_checked(checkpoint, depth, guidance: bool, target: Path, threads: int) -> Path:
    """Export, check against PyTorch and write ``target`` atomically, bound to ``checkpoint`` (both
    bindings of :mod:`.onnx_cache` in its metadata); :class:`ExportError` if impossible. The
    temporary file is created with ordinary permissions and locked while written (:func:`partial_export`)."""
    content = content_digest(checkpoint.path)  # the checkpoint's bytes, read once for both bindings
    bindings = {BINDING: export_binding(checkpoint, depth, guidance, content=content),
                PORTABLE_BINDING: export_binding(checkpoint, depth, guidance, portable=True, content=content)}
    network = _network(checkpoint, depth, guidance)
    multiple = _required_multiple(network, depth)
    in_channels = int(checkpoint.metadata.in_channels)
    side = max(2 * multiple, 64)
    import torch

    example = torch.rand(1, in_channels, side, side, generator=torch.Generator().manual_seed(1))
    problems = []
    for name, exporter in EXPORTERS:
        if name == "dynamo" and importlib.util.find_spec("onnxscript") is None:
            problems.append("dynamo: onnxscript is not installed")
            continue
        with partial_export(target) as temporary:
            try:
                started = time.perf_counter()
                with _silenced(), warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                    warnings.simplefilter("ignore")
                    exporter(network, example, temporary)
                seconds = time.perf_counter() - started
                session = make_session(temporary, threads, quiet=True)
                difference = _check(session, network, in_channels, multiple)
                if not difference <= ONNX_TOLERANCE:
                    problems.append(f"{name}: ONNX Runtime differs from PyTorch by {difference:.2g} (> {ONNX_TOLERANCE:g})")
                    continue
                del session
                _add_metadata(temporary, {
                    **bindings,
                    REQUIRED_MULTIPLE: multiple,
                    CHECKED_DIFFERENCE: f"{difference:.3g}",
                    "unetseg.exporter": name,
                    "unetseg.export_seconds": f"{seconds:.2f}",
                    "unetseg.checkpoint": checkpoint.path.name,
                    "unetseg.depth": depth_tag(depth),
                    "unetseg.torch": torch_version(),
                })
                os.replace(temporary, target)
                return target
            except OSError:  # the folder is not writable (or full): the caller tries the next location
                raise
            except Exception as error:  # noqa: BLE001 - any exporter failure: try the next, then report
                first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
                problems.append(f"{name}: {type(error).__name__}: {first_line[:200]}")
    raise ExportError("; ".join(problems))


# --- running -------------------------------------------------------------------------------------


def _verified(path: Path, checkpoint, depth, threads: int, binding_property: str, expected: str):
    """``(predictor, None)`` for an export that verifies, else ``(None, why not)``."""
    try:
        predictor = OnnxSlicePredictor(path, checkpoint.metadata, depth, threads)
    except Exception as error:  # noqa: BLE001 - ONNX Runtime cannot load it: a damaged file
        return None, f"ONNX Runtime cannot load it ({type(error).__name__})"
    problem = export_problem(predictor.properties, expected, binding_property)
    return (predictor, None) if problem is None else (None, problem)


def onnx_predictor_for(checkpoint, depth, guidance: bool, threads: int, log: Optional[Callable[[str], None]] = None) -> OnnxSlicePredictor:
    """The cached export of ``checkpoint`` at ``depth`` that verifies (:func:`.onnx_cache.export_problem`),
    made (and checked) if there is none. ``log`` hears, before it starts, that an export is made
    (seconds to a minute), and why a cached export found was not used."""
    say = log or (lambda message: None)
    content = content_digest(checkpoint.path)  # read once for every binding
    binding = export_binding(checkpoint, depth, guidance, content=content)
    name = export_name(checkpoint, depth, binding[:16])
    for folder in cache_locations(checkpoint):
        remove_abandoned_partials(folder)  # left by runs killed while they exported
    candidates = [(folder / name, BINDING, binding) for folder in cache_locations(checkpoint)]
    candidates.append((shipped_export(checkpoint, depth, guidance, content), PORTABLE_BINDING, export_binding(checkpoint, depth, guidance, portable=True, content=content)))
    rejected = None
    for path, binding_property, expected in candidates:
        if not path.is_file():
            continue
        problem = foreign_export_problem(path) if binding_property == BINDING else None  # a shipped one belongs to the installation
        if problem is None:
            predictor, problem = _verified(path, checkpoint, depth, threads, binding_property, expected)
            if predictor is not None:
                return predictor
        rejected = f"the cached ONNX export {path} is not used: {problem}"
        say(rejected)
    what = "the full network" if depth is None else f"the network at depth {depth_tag(depth)}"
    say(f"exporting {what} to ONNX ({'again' if rejected else 'first run with this checkpoint and depth'}): "
        "this takes a few seconds to a minute; later runs reuse the export")
    problems = []
    for folder in cache_locations(checkpoint):
        try:  # the one output gate: no special file, not the bundled model; refused there: the next location
            check_output(folder / name, what="ONNX export", overwrite=True, protected=[checkpoint.path])
        except UserError as error:
            problems.append(f"{folder}: {error}")
            continue
        try:  # a problem of the checkpoint itself (a UserError) is the run's, not this location's
            path = export_checked(checkpoint, depth, guidance, folder / name, threads)
        except OSError as error:  # not writable: the next location
            problems.append(f"{folder}: {error.strerror or error}")
            continue
        return OnnxSlicePredictor(path, checkpoint.metadata, depth, threads)
    raise ExportError("cannot write the ONNX export anywhere (" + "; ".join(problems) + ")")

"""The GPU path, measured in one prepared run (issue 18): under 8 minutes on an NVIDIA H200.

    python bench/gpu_check.py                    # on a machine with CUDA: prints the Markdown tables
    python bench/gpu_check.py --json out.json    # ... and writes the numbers as JSON too
    python bench/gpu_check.py --cpu-smoke        # every section on the CPU at tiny sizes (the test suite runs this)

Without CUDA (and without ``--cpu-smoke``) it prints one line saying so and exits 0.

Installing CUDA PyTorch on a GPU machine (the CPU build stays the default elsewhere)::

    python -m venv .venv && . .venv/bin/activate
    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128   # cu126/cu128/...: match the driver (nvidia-smi)
    pip install -e ".[onnx]"
    python bench/gpu_check.py

Sections, each with a time budget (seconds, :data:`FULL`) so that the whole fits in 8 minutes:

1. *architectures*: every registered architecture with its paper features at 512², 3 input channels,
   4 output channels, random weights: slices/s of the network alone (input already on the GPU, the
   predictor's own network, autocast and memory format) in fp32, bf16 and fp16 (what a GPU without
   native bf16 gets), batch sizes 1, 2, 4, ... 64 (a sweep stops early once larger batches stop
   paying, or at out-of-memory); the best is shown with its batch and its peak GPU memory
   (``torch.cuda.max_memory_allocated``).
2. *depths*: UNet++ (paper features) pruned to L1..L4 alike, plus bf16 through the whole
   predictor call (pinned host batch in, probabilities back on the host) at the best batch.
3. *end to end*: ``predict_file`` (what ``unetseg predict`` runs) on a 512×512×300 CT (the slicerio
   chest CT resampled; a synthetic phantom without slicerio) with the bundled model: total time
   split into start-up, read, preprocess, network, postprocess, write, at the default batch and at
   the batch the plan chooses for this GPU; a fresh ``unetseg predict`` process for the real
   start-up (Python, PyTorch, CUDA); and the labels of bf16 and fp16 against fp32.
4. *out of memory*: a batch far larger than the GPU holds is halved until it fits
   (:class:`~UNetSegmentationLib.backends.memory.MemoryGuard`); with the GPU's memory taken, one
   slice does not fit either and the run moves to the CPU. (``--cpu-smoke``: simulated by a
   predictor that refuses batches above a size, as the tests do.)
5. *training*: optimiser steps/s of UNet++ and U-Net (paper features, batch 16 of 256² crops,
   the training loss of ``training/losses.py``, AdamW, bf16 autocast; fp16 with a gradient scaler
   where bf16 is not native).

Neither CUDA graphs nor ``torch.compile`` are used: the engine uses neither, and this measures the engine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "UNetSegmentation"))

from UNetSegmentationLib.backends.device import SYSTEM  # noqa: E402
from UNetSegmentationLib.backends.memory import MemoryGuard, is_out_of_memory  # noqa: E402
from UNetSegmentationLib.backends.plan import ExecutionRequest, plan_execution  # noqa: E402
from UNetSegmentationLib.backends.torch_network import autocast  # noqa: E402
from UNetSegmentationLib.backends.torch_predictor import SlicePredictor  # noqa: E402
from UNetSegmentationLib.inference.normalization import fit_normalization  # noqa: E402
from UNetSegmentationLib.inference.options import SegmentationOptions  # noqa: E402
from UNetSegmentationLib.inference.pipeline import predict_volume  # noqa: E402
from UNetSegmentationLib.inference.predict_file import predict_file  # noqa: E402
from UNetSegmentationLib.inference.slicing import SliceGeometry  # noqa: E402
from UNetSegmentationLib.model.checkpoint import build_model, load_checkpoint  # noqa: E402
from UNetSegmentationLib.model.metadata import ModelMetadata, Normalization, make_classes, out_channels_for  # noqa: E402
from UNetSegmentationLib.networks.registry import ARCHITECTURES, build_network  # noqa: E402
from UNetSegmentationLib.protocol.reporters import Reporter  # noqa: E402

BUNDLED = ROOT / "UNetSegmentation" / "Resources" / "Models" / "ct-organs-unetplusplus.safetensors"
PRECISIONS = ("fp32", "bf16", "fp16")
CLASSES = ("a", "b", "c")  # 4 output channels (background + 3)


@dataclass(frozen=True)
class Scale:
    """The sizes and time budgets of a run."""

    device: str
    side: int  # slice rows = columns
    volume_slices: int
    batches: Sequence[int]
    train_batch: int
    train_side: int
    budgets: Dict[str, float]  # section → seconds
    measure_s: float  # time each measurement runs for, at least ...
    min_calls: int  # ... and at least this many calls
    max_train_steps: int
    narrower: int = 1  # channel widths divided by this (the smoke run's networks are small: the paths, not the speed, matter)


FULL = Scale("cuda", 512, 300, (1, 2, 4, 8, 16, 32, 64), 16, 256,
             {"architectures": 130, "depths": 60, "end to end": 80, "out of memory": 40, "training": 40}, 0.2, 3, 30)
#: sections that would start later than this many seconds after the start are skipped (8 minutes in all)
FULL_LIMIT_S = 420
SMOKE = Scale("cpu", 64, 3, (1, 2), 2, 64,
              {"architectures": 8, "depths": 4, "end to end": 10, "out of memory": 4, "training": 4}, 0.0, 1, 1, narrower=8)
#: the constructor arguments that are channel counts (``features`` aside), narrowed alike
CHANNEL_ARGUMENTS = ("skip_channels", "aspp_channels", "low_level_channels", "decoder_channels", "fc_features")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- measuring -----------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def seconds_per_call(call: Callable[[], object], device: torch.device, scale: Scale, deadline: float) -> float:
    """Mean seconds of ``call`` after warm-up (cuDNN picks its algorithms on the first call), over at
    least ``scale.min_calls`` calls and ``scale.measure_s`` seconds (no longer once ``deadline`` passed)."""
    for _ in range(1 if scale.min_calls == 1 else 2):
        call()
    synchronize(device)
    calls, started = 0, time.perf_counter()
    while calls < scale.min_calls or (time.perf_counter() - started < scale.measure_s and time.perf_counter() < deadline):
        call()
        calls += 1
    synchronize(device)  # the GPU runs behind the Python loop: the time ends when its work does
    return (time.perf_counter() - started) / calls


def on_device(predictor: SlicePredictor, x: torch.Tensor) -> torch.Tensor:
    """The predictor's own network, autocast and memory format on an input already on its device."""
    with torch.inference_mode(), autocast(predictor.settings.device_type, predictor.settings.autocast_dtype):
        return predictor.network(x)


def device_input(predictor: SlicePredictor, batch: int, side: int) -> torch.Tensor:
    x = torch.rand(batch, predictor.metadata.in_channels, side, side, device=predictor.device)
    return x.contiguous(memory_format=torch.channels_last) if predictor.channels_last else x


def network_seconds(predictor: SlicePredictor, batch: int, scale: Scale, deadline: float) -> float:
    """Seconds per call of the network alone on ``batch`` random slices already on its device."""
    x = device_input(predictor, batch, scale.side)
    return seconds_per_call(lambda: on_device(predictor, x), predictor.device, scale, deadline)


@dataclass
class Sweep:
    """slices/s and peak GPU memory per batch size of one predictor; ``notes``: batches that failed, or why the sweep ended."""

    rates: Dict[int, float] = field(default_factory=dict)
    peaks: Dict[int, Optional[float]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def best(self) -> Optional[int]:
        return max(self.rates, key=self.rates.get) if self.rates else None

    def cell(self) -> str:
        if self.best is None:
            return "— (" + "; ".join(self.notes or ["not run"]) + ")"
        peak = self.peaks[self.best]
        failures = [note for note in self.notes if note != "time"]
        return f"{self.rates[self.best]:,.0f} @{self.best}" + (f" · {peak:.1f} GiB" if peak is not None else "") + (f" ({'; '.join(failures)})" if failures else "")

    def to_json(self) -> dict:
        return {"slices_per_s": self.rates, "peak_gib": self.peaks, "best_batch": self.best, "notes": self.notes}


def sweep(predictor: SlicePredictor, scale: Scale, deadline: float) -> Sweep:
    """slices/s of the network alone from the largest batch size down (the best is nearly always a
    large one), until two sizes in a row fall below 0.98× the best or ``deadline`` passes (one size
    is always measured); a size that runs out of memory is noted and the next smaller one tried."""
    result, worse = Sweep(), 0
    for batch in sorted(scale.batches, reverse=True):
        if result.rates and time.perf_counter() > deadline:
            result.notes.append("time")
            break
        seconds = attempt(lambda: network_seconds(predictor, batch, scale, deadline), predictor.device)
        if isinstance(seconds, str):
            result.notes.append(f"{seconds} at {batch}")
            continue
        best = max(result.rates.values(), default=0.0)
        result.rates[batch], result.peaks[batch] = batch / seconds, peak_gib(predictor.device)
        worse = worse + 1 if result.rates[batch] < 0.98 * best else 0
        if worse == 2:
            break
    return result


def attempt(measure: Callable[[], float], device: torch.device):
    """``measure()``'s result, or a short text saying why it failed (out of memory, or the error)."""
    reset_peak(device)
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 - reported in the table; the check goes on
        text = "out of memory" if is_out_of_memory(error) else f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
    release(device)  # outside the except block: the error's frames (holding GPU tensors) are gone
    return text


def paper_network(name: str, narrower: int = 1):
    """``(model, metadata)``: the architecture in its paper features (channel widths divided by
    ``narrower``), 3 input channels, 4 output channels, random weights (seed 0)."""
    architecture = ARCHITECTURES[name]
    kwargs = dict(architecture.default_kwargs)
    if "paper" in architecture.feature_presets:
        kwargs["features"] = list(architecture.feature_presets["paper"])
    if narrower > 1:
        kwargs["features"] = [max(4, f // narrower) for f in kwargs["features"]]
        kwargs.update({k: max(4, (kwargs[k] or 256) // narrower) for k in CHANNEL_ARGUMENTS if k in kwargs})
    classes = make_classes(list(CLASSES))
    kwargs.update(in_channels=3, out_channels=out_channels_for(len(classes)))
    metadata = ModelMetadata(architecture=name, kwargs=kwargs, context=1, normalization=Normalization.parse("ct:-1000,1000"), classes=classes)
    torch.manual_seed(0)
    return build_network(name, kwargs).eval(), metadata


def predictors(model, metadata, device: torch.device, depth=None) -> Dict[str, SlicePredictor]:
    """One predictor per precision on ``device``, sharing ``model`` (BatchNorm folded once, as ``predict`` does)."""
    return {precision: SlicePredictor(model, metadata, device, depth, True, precision, True) for precision in PRECISIONS}


def time_left_share(deadline: float, parts_left: int) -> float:
    """A deadline for the next of ``parts_left`` equal parts of the time left until ``deadline``."""
    now = time.perf_counter()
    return now + max(0.0, deadline - now) / max(1, parts_left)


# --- 1. architectures, 2. depths -----------------------------------------------------------------


def architectures_section(scale: Scale, device: torch.device, deadline: float, folder: Path, results: dict) -> dict:
    """Per architecture: parameters and one :class:`Sweep` per precision (network alone, input on the device)."""
    names, rows = list(ARCHITECTURES), {}
    for index, name in enumerate(names):
        try:
            model, metadata = paper_network(name, scale.narrower)
            rows[name] = {"parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}
            for position, (precision, predictor) in enumerate(predictors(model, metadata, device).items()):
                parts_left = (len(names) - index) * len(PRECISIONS) - position
                rows[name][precision] = sweep(predictor, scale, time_left_share(deadline, parts_left))
                log(f"  {name} {precision}: {rows[name][precision].cell()}")
        except Exception as error:  # noqa: BLE001 - one architecture failing is a row, not the end of the check
            rows[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"}
        model = predictor = None
        release(device)
    return rows


def predictor_rate(predictor: SlicePredictor, batch: int, scale: Scale, deadline: float):
    """slices/s of the whole predictor call: a host batch in (pinned, copied), probabilities back on the host."""
    host = np.random.default_rng(0).random((batch, predictor.metadata.in_channels, scale.side, scale.side), dtype=np.float32)
    return batch / seconds_per_call(lambda: predictor(host), predictor.device, scale, deadline)


def depths_section(scale: Scale, device: torch.device, deadline: float, folder: Path, results: dict) -> dict:
    """UNet++ (paper features) at L1..L4: a :class:`Sweep` per precision and the bf16 predictor call at its best batch."""
    model, metadata = paper_network("unetplusplus", scale.narrower)
    depths, rows = list(model.depths), {}
    parts = len(PRECISIONS) + 1
    for index, depth in enumerate(depths):
        row = rows[f"L{depth}"] = {}
        per_precision = predictors(model, metadata, device, depth)
        for position, (precision, predictor) in enumerate(per_precision.items()):
            row[precision] = sweep(predictor, scale, time_left_share(deadline, (len(depths) - index) * parts - position))
        best = row["bf16"].best
        if best is not None:
            share = time_left_share(deadline, (len(depths) - index) * parts - len(PRECISIONS))
            row["bf16 predictor call"] = (best, attempt(lambda: predictor_rate(per_precision["bf16"], best, scale, share), device))
        log(f"  L{depth}: " + ", ".join(f"{p} {row[p].cell()}" for p in PRECISIONS))
        per_precision = predictor = None
        release(device)
    return rows


# --- 3. end to end -------------------------------------------------------------------------------


def ct_image(slices: int, side: int):
    """A CT of side × side × slices voxels, int16 HU: the slicerio chest CT resampled (linear), or
    without slicerio a phantom (body, two lungs, a spine)."""
    import SimpleITK as sitk

    try:
        import slicerio

        image = sitk.ReadImage(slicerio.get_testdata_file("CTChest4.nrrd"))
    except ImportError:
        return phantom(slices, side)
    new_size = [side, side, slices]
    spacing = [image.GetSpacing()[a] * image.GetSize()[a] / new_size[a] for a in range(3)]
    return sitk.Resample(image, new_size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing, image.GetDirection(), -1024, sitk.sitkInt16)


def phantom(slices: int, side: int):
    """A synthetic CT, int16 HU: air, an elliptic body, two lungs and a spine, a faint ramp along the slices."""
    import SimpleITK as sitk

    _, j, i = np.ogrid[:slices, :side, :side]

    def inside(centre_j: float, centre_i: float, radius_j: float, radius_i: float) -> np.ndarray:
        ellipse = ((j - centre_j * side) / (radius_j * side)) ** 2 + ((i - centre_i * side) / (radius_i * side)) ** 2 < 1
        return np.broadcast_to(ellipse, (slices, side, side))

    volume = np.full((slices, side, side), -1000, np.int16)
    volume[inside(0.5, 0.5, 0.35, 0.45)] = 40
    for lung in (0.3, 0.7):
        volume[inside(0.45, lung, 0.22, 0.15)] = -850
    volume[inside(0.75, 0.5, 0.06, 0.06)] = 400
    volume += (np.arange(slices, dtype=np.int16) % 7)[:, None, None]
    return sitk.GetImageFromArray(volume)


def predict_file_runs(volume_path: Path, scale: Scale, device: torch.device, deadline: float, folder: Path) -> List[dict]:
    """``predict_file`` in this process: fp32 and auto at the default batch, auto at the plan's batch for this GPU."""
    planned = plan_execution(ExecutionRequest(scale.device)).batch_size
    default = SegmentationOptions().batch_size
    runs = []
    for precision, batch in dict.fromkeys([("fp32", default), ("auto", default), ("auto", planned or default)]):
        if runs and time.perf_counter() > deadline:
            break
        options = SegmentationOptions(device=scale.device, precision=precision, batch_size=batch, overwrite=True)
        reset_peak(device)
        started = time.perf_counter()
        summary = predict_file(volume_path, folder / f"labels-{precision}-{batch}.nrrd", BUNDLED, options)
        wall = time.perf_counter() - started
        runs.append({"precision": summary.get("precision", precision), "batch": batch, "wall_s": wall, "timings": summary["timings"], "peak_gib": peak_gib(device)})
        log(f"  predict_file {precision} batch {batch}: {wall:.1f} s")
    return runs


def fresh_process_run(volume_path: Path, scale: Scale, folder: Path) -> dict:
    """``unetseg predict`` as a new process (Python, PyTorch and CUDA start-up included), default options."""
    command = [sys.executable, "-m", "UNetSegmentationLib", "predict", "--checkpoint", str(BUNDLED), "--device", scale.device,
               "--progress", "json", "--overwrite", str(volume_path), str(folder / "labels-fresh.nrrd")]
    environment = dict(os.environ, PYTHONPATH=str(ROOT / "UNetSegmentation"))
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        return {"error": finished.stderr.strip().splitlines()[-1] if finished.stderr.strip() else f"exit {finished.returncode}"}
    events = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{")]
    done = next(e for e in events if e.get("event") == "done")
    return {"wall_s": wall, "timings": done["timings"], "precision": done.get("precision")}


def label_agreement(image, scale: Scale, device: torch.device, deadline: float) -> dict:
    """The bundled model on the volume through ``predict_volume`` in each precision: the fraction of
    voxels (and of voxels either calls foreground) whose label matches fp32's, network seconds, peak memory."""
    import SimpleITK as sitk

    checkpoint = load_checkpoint(BUNDLED)
    volume = sitk.GetArrayViewFromImage(image)
    geometry = SliceGeometry.from_direction(image.GetDirection())
    mapping = fit_normalization(checkpoint.metadata.normalization, volume)
    model, labels, rows = build_model(checkpoint), {}, {}
    for precision in PRECISIONS:
        if labels and time.perf_counter() > deadline:  # fp32, the reference, always runs
            break
        predictor = SlicePredictor(model, checkpoint.metadata, device, checkpoint.metadata.recommended_depth, True, precision, True)
        reset_peak(device)
        result = predict_volume(volume, geometry, predictor, mapping, SegmentationOptions().batch_size)
        labels[precision] = result.labels
        same = labels[precision] == labels["fp32"]
        foreground = (labels[precision] > 0) | (labels["fp32"] > 0)
        rows[precision] = {"agree": float(same.mean()), "agree_foreground": float(same[foreground].mean()) if foreground.any() else 1.0,
                           "network_s": result.timings["network_s"], "peak_gib": peak_gib(device)}
    return rows


def end_to_end_section(scale: Scale, device: torch.device, deadline: float, folder: Path, results: dict) -> dict:
    import SimpleITK as sitk

    image = ct_image(scale.volume_slices, scale.side)
    volume_path = folder / "ct.nrrd"
    sitk.WriteImage(image, str(volume_path))  # uncompressed NRRD
    found = {"size": list(image.GetSize()), "runs": predict_file_runs(volume_path, scale, device, time_left_share(deadline, 2), folder)}
    found["fresh process"] = fresh_process_run(volume_path, scale, folder)
    found["agreement"] = label_agreement(image, scale, device, deadline)
    return found


# --- 4. out of memory ----------------------------------------------------------------------------


class WarningsKept(Reporter):
    """A silent reporter that keeps the ``warning`` messages."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: List[str] = []

    def warning(self, message: str) -> None:
        self.messages.append(message)


class RefusesAbove:
    """``--cpu-smoke`` only: a predictor that says it is on a GPU and runs out of memory above
    ``capacity`` slices per call (0: always), as the tests simulate it; the rest is ``inner``'s."""

    def __init__(self, inner: SlicePredictor, capacity: int) -> None:
        self.inner, self.capacity, self.device = inner, capacity, torch.device("cuda")

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __call__(self, batch):
        if len(batch) > self.capacity:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated by --cpu-smoke)")
        return self.inner(batch)


def guarded_run(predictor, batch: np.ndarray) -> dict:
    """``batch`` through a :class:`MemoryGuard` around ``predictor``: what it said and where it ended."""
    reporter = WarningsKept()
    guard = MemoryGuard(predictor, reporter)
    started = time.perf_counter()
    output = guard(batch)
    return {"slices": len(batch), "out": int(output.shape[0]), "warnings": reporter.messages, "batch_limit": guard.batch_limit,
            "ended_on": getattr(guard.predictor.device, "type", "?"), "seconds": time.perf_counter() - started, "output": output}


#: the largest batch the halving check builds: 2048 slices of 512² are 6.4 GB of input and 8.6 GB of
#: probabilities on the host (twice that while they are joined)
HUGE_BATCH_LIMIT = 2048


def huge_batch(predictor: SlicePredictor, scale: Scale, device: torch.device) -> np.ndarray:
    """A batch about twice as large as the GPU's free memory holds (at most :data:`HUGE_BATCH_LIMIT`; 8 slices on the CPU)."""
    count = 8
    if device.type == "cuda":
        reset_peak(device)
        on_device(predictor, device_input(predictor, 4, scale.side))
        per_slice = torch.cuda.max_memory_allocated(device) / 4
        free, _ = torch.cuda.mem_get_info(device)
        while count * per_slice < 2 * free and count < HUGE_BATCH_LIMIT:
            count *= 2
    batch = np.empty((count, predictor.metadata.in_channels, scale.side, scale.side), np.float32)
    batch[:] = np.random.default_rng(0).random(batch.shape[1:], dtype=np.float32)
    return batch


def take_gpu_memory(device: torch.device) -> List[torch.Tensor]:
    """One tensor holding all of the GPU's free memory but a few MiB, so that not even one slice fits."""
    release(device)  # nothing cached that the network could reuse
    free, _ = torch.cuda.mem_get_info(device)
    for spare_mib in (16, 64, 256, 1024):  # the allocator rounds sizes up: leave a little more if need be
        try:
            return [torch.empty(max(0, free - (spare_mib << 20)), dtype=torch.uint8, device=device)]
        except torch.cuda.OutOfMemoryError:
            release(device)
    return []


def out_of_memory_section(scale: Scale, device: torch.device, deadline: float, folder: Path, results: dict) -> dict:
    """A batch too large for the GPU is halved until it fits; with the GPU full, the run moves to the CPU."""
    simulated = device.type != "cuda"
    model, metadata = paper_network("unetplusplus", scale.narrower)
    predictor = SlicePredictor(model, metadata, device, None, True, "fp32", True)  # fp32: the most memory per slice
    batch = huge_batch(predictor, scale, device)
    halving = guarded_run(RefusesAbove(predictor, len(batch) // 4) if simulated else predictor, batch)
    halving.pop("output")
    model = predictor = batch = None
    release(device)

    checkpoint = load_checkpoint(BUNDLED)
    depth = checkpoint.metadata.recommended_depth
    slices = np.random.default_rng(1).random((4, 3, scale.side, scale.side), dtype=np.float32)
    reference = SlicePredictor(build_model(checkpoint), checkpoint.metadata, torch.device("cpu"), depth)(slices)
    on_gpu = SlicePredictor(build_model(checkpoint), checkpoint.metadata, device, depth, True, "bf16", True)
    held = [] if simulated else take_gpu_memory(device)
    try:
        to_cpu = guarded_run(RefusesAbove(on_gpu, 0) if simulated else on_gpu, slices)
    finally:
        held.clear()
        release(device)
    to_cpu["max_difference_from_cpu_fp32"] = float((to_cpu.pop("output") - reference).abs().max())
    return {"simulated": simulated, "halving": halving, "to_cpu": to_cpu}


# --- 5. training ---------------------------------------------------------------------------------


def training_rate(name: str, scale: Scale, device: torch.device, deadline: float) -> dict:
    """Optimiser steps/s of ``name`` (paper features): the training loss, AdamW, bf16 autocast on CUDA
    (fp16 and a gradient scaler where the GPU has no native bf16), random crops and labels."""
    from UNetSegmentationLib.training.losses import SegmentationLoss, loss_kind

    model, metadata = paper_network(name, scale.narrower)
    model = model.train().to(device)
    classes = metadata.kwargs["out_channels"]
    loss = SegmentationLoss(loss_kind(name), classes, crop=(scale.train_side, scale.train_side)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dtype = None
    if device.type == "cuda":
        dtype = torch.bfloat16 if SYSTEM.cuda_bf16_supported(device.index or 0) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(scale.train_batch, 3, scale.train_side, scale.train_side, device=device, generator=generator)
    y = torch.randint(0, classes, (scale.train_batch, scale.train_side, scale.train_side), device=device, generator=generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device.type, None if dtype is None else str(dtype).split(".")[1]):
            total, _ = loss(model(x), y)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(min(3, scale.max_train_steps)):
        step()
    synchronize(device)
    reset_peak(device)
    steps, started = 0, time.perf_counter()
    while steps < scale.max_train_steps and (steps == 0 or time.perf_counter() < deadline):
        step()
        steps += 1
    synchronize(device)
    rate = steps / (time.perf_counter() - started)
    return {"steps_per_s": rate, "slices_per_s": rate * scale.train_batch, "steps": steps, "peak_gib": peak_gib(device),
            "autocast": None if dtype is None else str(dtype).split(".")[1]}


def training_section(scale: Scale, device: torch.device, deadline: float, folder: Path, results: dict) -> dict:
    rows = {}
    for index, name in enumerate(("unetplusplus", "unet")):
        rows[name] = attempt(lambda: training_rate(name, scale, device, time_left_share(deadline, 2 - index)), device)
        release(device)
    return rows


SECTIONS = (
    ("architectures", architectures_section),
    ("depths", depths_section),
    ("end to end", end_to_end_section),
    ("out of memory", out_of_memory_section),
    ("training", training_section),
)


# --- the tables ----------------------------------------------------------------------------------


def machine(device: torch.device) -> dict:
    found = {"torch": torch.__version__, "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d"), "device": str(device)}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        found.update(gpu=properties.name, memory_gib=properties.total_memory / 2**30, cudnn=torch.backends.cudnn.version(),
                     capability=".".join(map(str, torch.cuda.get_device_capability(device))))
    plan = plan_execution(ExecutionRequest(str(device)))
    found["plan"] = {"device": str(plan.device), "precision": plan.precision, "backend": plan.backend, "batch_size": plan.batch_size}
    return found


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def gib(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f} GiB"


def failed(found) -> Optional[str]:
    """The error text of a section or row that failed, else None."""
    if isinstance(found, str):
        return found
    return found.get("error") if isinstance(found, dict) else None


def network_tables(results: dict, scale: Scale) -> List[str]:
    lines = [f"### Architectures at {scale.side}², paper features: network alone (input on the device), best slices/s @batch · peak memory", ""]
    rows = []
    for name, row in results.get("architectures", {}).items():
        if failed(row):
            rows.append([name, "", failed(row), "", ""])
            continue
        rows.append([name, f"{row['parameters_m']:.1f} M"] + [row[p].cell() if p in row else "—" for p in PRECISIONS])
    lines += table(["architecture", "parameters", *PRECISIONS], rows)
    lines += ["", f"### UNet++ (paper features) pruned, at {scale.side}²", ""]
    rows = []
    for depth, row in results.get("depths", {}).items():
        call = row.get("bf16 predictor call")
        whole = "—" if call is None else (call[1] if isinstance(call[1], str) else f"{call[1]:,.0f} @{call[0]}")
        rows.append([depth] + [row[p].cell() if p in row else "—" for p in PRECISIONS] + [whole])
    lines += table(["depth", *PRECISIONS, "bf16, whole predictor call (host in, probabilities out)"], rows)
    return lines


def end_to_end_tables(found: dict) -> List[str]:
    size = "×".join(map(str, found.get("size", [])))
    lines = [f"### End to end: `predict` on a {size} CT, bundled model (recommended depth), shares of the total", ""]
    rows = []
    for run in found.get("runs", []):
        t, total = run["timings"], run["timings"]["total_s"]
        share = lambda *keys: f"{100 * sum(t.get(k, 0.0) for k in keys) / total:.0f} %"  # noqa: E731
        slices = found["size"][2] if found.get("size") else 0
        rows.append([f"in process, {run['precision']}", run["batch"], f"{total:.2f} s", f"{slices / total:,.0f}", share("load_model_s"), share("read_s"),
                     share("prepare_s", "preprocess_s"), share("network_s"), share("postprocess_s"), share("write_s"), gib(run["peak_gib"])])
    fresh = found.get("fresh process", {})
    if failed(fresh):
        rows.append(["fresh process", "", failed(fresh)] + [""] * 8)
    elif fresh:
        t = fresh["timings"]
        rows.append([f"fresh process, {fresh.get('precision')}", "default", f"{fresh['wall_s']:.2f} s wall",
                     f"process start {fresh['wall_s'] - t['total_s']:.1f} s", f"{t['load_model_s']:.2f} s", f"{t['read_s']:.2f} s",
                     f"{t.get('prepare_s', 0) + t['preprocess_s']:.2f} s", f"{t['network_s']:.2f} s", f"{t['postprocess_s']:.2f} s", f"{t['write_s']:.2f} s", ""])
    lines += table(["run", "batch", "total", "slices/s", "start-up", "read", "preprocess", "network", "postprocess", "write", "peak GPU memory"], rows)
    lines += ["", "Labels against fp32 (the same volume through `predict_volume`, default batch):", ""]
    rows = [[p, f"{r['agree']:.4%}", f"{r['agree_foreground']:.4%}", f"{r['network_s']:.2f} s", gib(r["peak_gib"])] for p, r in found.get("agreement", {}).items()]
    return lines + table(["precision", "voxels agreeing", "foreground voxels agreeing", "network", "peak GPU memory"], rows)


def out_of_memory_table(found: dict) -> List[str]:
    how = " (simulated: --cpu-smoke)" if found.get("simulated") else ""
    lines = [f"### Out of memory, provoked{how}", ""]
    rows = []
    for name, what in (("halving", "a batch about twice what the GPU holds"), ("to_cpu", "4 slices with the GPU's memory taken")):
        run = found.get(name)
        if run is None:
            continue
        ended = f"{run['out']}/{run['slices']} slices computed on {run['ended_on']}, batch limit {run['batch_limit']}, {run['seconds']:.1f} s"
        if "max_difference_from_cpu_fp32" in run:
            ended += f", largest difference from the CPU's fp32 probabilities {run['max_difference_from_cpu_fp32']:.1e}"
        rows.append([f"{what}: {run['slices']} slices", ended, "<br>".join(run["warnings"]) or "none"])
    return lines + table(["provoked", "outcome", "warning events"], rows)


def training_table(found: dict, scale: Scale) -> List[str]:
    lines = [f"### Training: batch {scale.train_batch} of {scale.train_side}² crops, AdamW, the architecture's loss, autocast", ""]
    rows = []
    for name, run in found.items():
        if failed(run):
            rows.append([name, failed(run), "", "", ""])
        else:
            rows.append([name, f"{run['steps_per_s']:.2f}", f"{run['slices_per_s']:,.0f}", run["autocast"] or "fp32", gib(run["peak_gib"])])
    return lines + table(["architecture", "steps/s", "slices/s", "autocast", "peak GPU memory"], rows)


def render(results: dict, scale: Scale, command: str) -> str:
    m = results["machine"]
    where = f"{m['gpu']} ({m['memory_gib']:.0f} GiB, compute {m['capability']}), cuDNN {m['cudnn']}" if "gpu" in m else "CPU (--cpu-smoke)"
    plan = m["plan"]
    lines = [f"## GPU check, {m['date']}", "", f"`{command}` · {where} · PyTorch {m['torch']} (CUDA {m['cuda']}) · "
             f"the plan here: {plan['device']}, {plan['precision']}, {plan['backend']}, batch {plan['batch_size']} · {results['total_s']:.0f} s in all", ""]
    for name, render_section in (("architectures", None), ("end to end", end_to_end_tables), ("out of memory", out_of_memory_table), ("training", None)):
        found = results.get(name)
        if failed(found):
            lines += [f"### {name}: failed", "", f"    {failed(found)}", ""]
            continue
        if name == "architectures":
            lines += network_tables(results, scale)
        elif name == "training":
            lines += training_table(found or {}, scale)
        elif found is not None:
            lines += render_section(found)
        lines.append("")
    rows = [[name, f"{results['seconds'].get(name, 0):.0f} s", f"{scale.budgets[name]:.0f} s"] for name, _ in SECTIONS]
    return "\n".join(lines + ["### Time per section", ""] + table(["section", "took", "budget"], rows)) + "\n"


def plain(value):
    """``value`` with every :class:`Sweep` as a dict, for JSON."""
    if isinstance(value, Sweep):
        return value.to_json()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="every section on the CPU at tiny sizes (that the script runs)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU is available to this PyTorch ({torch.__version__}); nothing measured (see the docstring to install CUDA PyTorch)")
        return 0
    scale = SMOKE if args.cpu_smoke else FULL
    device = torch.device(scale.device)
    started = time.perf_counter()
    results = {"machine": machine(device), "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="unetseg-gpu-check-") as folder:
        for name, section in SECTIONS:
            section_started = time.perf_counter()
            if not args.cpu_smoke and section_started - started > FULL_LIMIT_S:
                results[name], results["seconds"][name] = {"error": "skipped: the check is over its 8-minute budget"}, 0.0
                continue
            log(f"{name} ({scale.budgets[name]:.0f} s budget)")
            try:
                results[name] = section(scale, device, section_started + scale.budgets[name], Path(folder), results)
            except Exception as error:  # noqa: BLE001 - a failed section is reported in its table; the others still run
                results[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"}
            results["seconds"][name] = time.perf_counter() - section_started
            release(device)
    results["total_s"] = time.perf_counter() - started
    command = "python bench/gpu_check.py" + (" --cpu-smoke" if args.cpu_smoke else "")
    print(render(results, scale, command))
    if args.json:
        args.json.write_text(json.dumps(plain(results), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

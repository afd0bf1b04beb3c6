"""Inference speed in one run: the machine's peak, every architecture, MONAI, the optimisations, end to end.

    python bench/speed.py                       # full run (about 10-15 min on 2 cores), table + JSON
    python bench/speed.py --quick               # a few minutes: fewer sizes, repetitions and slices
    python bench/speed.py --markdown BENCHMARKS.md   # also refresh the tables between the markers there

Everything is measured in ONE process, variants interleaved (warm-up, then for each repetition
every variant once), so that a shared, noisy machine slows all of them alike; medians are quoted
with the [min–max] spread of the repetitions. Sections:

1. *peak*: fp32 and bf16 matrix-multiply GFLOP/s (torch.matmul, square matrices) with the thread
   count used everywhere below; measured at the start and at the end, the median quoted.
2. *architectures*: every registered architecture in its paper features (UNet++ at L1..L4), 3 input
   channels, 3 classes (softmax over 4 channels), random weights, at 256² and 512²: the engine's
   predictor (what ``unetseg predict`` runs: ``--backend auto``) at batch 1 and at the best batch;
   GFLOPs per slice (FlopCounterMode), achieved GFLOP/s and its fraction of the fp32 peak, the peak
   resident memory while it ran; the plain PyTorch path (the engine before this benchmark:
   eager, float32, BatchNorm unfolded, contiguous) at 256²; MONAI's ``BasicUNetPlusPlus`` with the
   same features (32..512, batch norm, ReLU) on the same input, interleaved with UNet++; UNet++
   also with ``--precision int8`` (the export quantised as ``predict`` does it).
2b. *head-to-head*: UNet++ L4 (fp32 and int8) against MONAI BasicUNet++ again, in a child process
   that builds and runs nothing else (eager PyTorch measures slower in the long benchmark process
   than in a fresh one; the targets quote the smaller ratio of the two measurements).
3. *optimisations*: each speed option alone and combined on UNet++ L4 (paper features, 256²) and on
   the bundled model at its recommended depth (512², the end-to-end workload): BatchNorm folding,
   channels_last, ONNX Runtime, bf16 autocast (only on CPUs with native bf16: emulated bf16 is
   ~100× slower), threads, batch size, int8, torch.compile (full mode), overlapping preprocessing.
4. *bf16 accuracy* (section ``bf16``): Dice of the bundled model against the real segmentation of
   the slicerio chest CT in fp32, bf16 and int8, and the fraction of voxels whose label agrees.
5. *end to end*: ``unetseg predict`` as a child process on a 512×512×200 CT (the slicerio CT
   resampled, int16, gzip NRRD) writing a ``.seg.nrrd``: wall time split into start-up, read,
   preprocess, network, postprocess, write, and the child's peak RSS; the first run exports the
   ONNX model (cold cache), the others reuse it; then 512×512×600 to show memory stays flat.

FLOPs: 2 × multiply-accumulates of convolutions and matrix products (as ``architecture_table.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from marked_section import write_marked_section
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "UNetSegmentation"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from architecture_table import count_flops  # noqa: E402

from UNetSegmentationLib.backends.plan import configure_threads  # noqa: E402

from UNetSegmentationLib.model.checkpoint import build_model, create_checkpoint, load_checkpoint  # noqa: E402
from UNetSegmentationLib.backends.torch_predictor import SlicePredictor
from UNetSegmentationLib.inference.options import SegmentationOptions  # noqa: E402
from UNetSegmentationLib.model.metadata import ModelMetadata, Normalization, make_classes, out_channels_for  # noqa: E402
from UNetSegmentationLib.networks.registry import ARCHITECTURES, build_network  # noqa: E402
from UNetSegmentationLib.backends.device import onnx_runtime_available as onnx_available  # noqa: E402
from UNetSegmentationLib.backends.onnx_export import onnx_predictor_for  # noqa: E402
from UNetSegmentationLib.backends.factory import create_predictor
from UNetSegmentationLib.backends.plan import ExecutionRequest, plan_execution  # noqa: E402
from UNetSegmentationLib.backends import device  # noqa: E402

BUNDLED = ROOT / "Testing" / "Data" / "chest-ct-unetplusplus.safetensors"  # the chest model of rounds 1-2, which these tables measured
START, END = "<!-- speed-results:start -->", "<!-- speed-results:end -->"
PREDICT_BATCH = SegmentationOptions().batch_size  # what predict gathers per step by default
CLASSES = ["a", "b", "c"]  # "a few classes": softmax over background + 3
PAPER_UNETPP = (32, 64, 128, 256, 512)


# --- measuring -----------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Peak resident memory of this process while a block runs (sampled every 2 ms on a thread)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "RssSampler":
        self.before = self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def summary(times: List[float], per: int = 1) -> dict:
    """Median and spread of ``times`` (seconds per call) as milliseconds per slice."""
    ms = [1000 * t / per for t in times]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "runs": len(ms)}


def interleaved(variants: Dict[str, Callable[[], object]], repetitions: int, warmup: int = 1) -> Dict[str, dict]:
    """Warm-up, then ``repetitions`` rounds calling every variant once.

    Per variant: the times of the rounds after the warm-up, and ``peak_rss``: the largest growth of
    the resident memory during one call over what was resident before it (the activations, buffers
    and arenas the call needed; the first call usually sets it).
    """
    times: Dict[str, List[float]] = {name: [] for name in variants}
    peaks: Dict[str, int] = {name: 0 for name in variants}
    for round_ in range(warmup + repetitions):
        for name, run in variants.items():
            with RssSampler() as sampler:
                started = time.perf_counter()
                run()
                elapsed = time.perf_counter() - started
            peaks[name] = max(peaks[name], sampler.peak - sampler.before)  # memory the call needed on top of what was resident
            if round_ >= warmup:
                times[name].append(elapsed)
    return {name: {"times": times[name], "peak_rss": peaks[name]} for name in variants}


def fmt_ms(s: dict) -> str:
    return f"{s['median_ms']:.1f} [{s['min_ms']:.0f}–{s['max_ms']:.0f}]" if s['median_ms'] < 1000 else f"{s['median_ms'] / 1000:.2f} s [{s['min_ms'] / 1000:.2f}–{s['max_ms'] / 1000:.2f}]"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- 1. peak ---------------------------------------------------------------------------------------


def _rates(run: Callable[[], object], n: int, repetitions: int, products: int = 1) -> List[float]:
    run()
    rates = []
    for _ in range(repetitions):
        started = time.perf_counter()
        run()
        rates.append(products * 2 * n**3 / (time.perf_counter() - started) / 1e9)
    return rates


def _concurrently(run: Callable[[], object], workers: int) -> Callable[[], None]:
    """``run`` called ``workers`` times at once on a thread pool (as the engine's slice workers do)."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(workers)

    def all_at_once() -> None:
        for future in [pool.submit(run) for _ in range(workers)]:
            future.result()

    return all_at_once


def _onnx_matmul(n: int, threads: int):
    """An ONNX Runtime session computing one n×n MatMul (MLAS, ONNX Runtime's GEMM)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, 10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    return lambda: session.run(None, {"a": a, "b": b})


def measure_peak(native_bf16: bool, quick: bool, threads: int) -> dict:
    """Best fp32 GEMM rate over the GEMMs at hand (PyTorch/MKL, numpy/OpenBLAS, ONNX Runtime/MLAS) and bf16 (PyTorch).

    The peak is the fastest of them: the library used by one backend is not always the machine's
    fastest (MKL takes a slower path on AMD CPUs).
    """
    n = 2048
    repetitions = 5 if quick else 7
    a, b = torch.randn(n, n), torch.randn(n, n)
    na, nb = a.numpy(), b.numpy()
    gemms = {"torch (MKL)": lambda: torch.matmul(a, b), "numpy (OpenBLAS)": lambda: np.matmul(na, nb)}
    products = {name: 1 for name in gemms}
    if onnx_available():
        gemms["onnxruntime (MLAS)"] = _onnx_matmul(n, threads)
        products["onnxruntime (MLAS)"] = 1
        if threads > 1:  # the engine's way: one single-threaded product per thread, all at once
            name = f"onnxruntime (MLAS), {threads} one-thread products at once"
            gemms[name], products[name] = _concurrently(_onnx_matmul(n, 1), threads), threads
    fp32 = {}
    for name, run in gemms.items():
        rates = _rates(run, n, repetitions, products[name])
        fp32[name] = {"gflops": statistics.median(rates), "min": min(rates), "max": max(rates)}
    best = max(fp32, key=lambda k: fp32[k]["gflops"])
    nb16 = 2048 if native_bf16 else 256  # emulated bf16 is ~100x slower: a small product suffices
    ab, bb = a[:nb16, :nb16].bfloat16(), b[:nb16, :nb16].bfloat16()
    bf16_rates = _rates(lambda: torch.matmul(ab, bb), nb16, 3)
    return {
        "fp32": {"n": n, "gflops": fp32[best]["gflops"], "min": fp32[best]["min"], "max": fp32[best]["max"], "library": best, "libraries": fp32},
        "bf16": {"n": nb16, "gflops": statistics.median(bf16_rates), "min": min(bf16_rates), "max": max(bf16_rates), "library": "torch (oneDNN)"},
    }


# --- networks --------------------------------------------------------------------------------------


def make_checkpoint(folder: Path, name: str, arch: str, features=None) -> Path:
    architecture = ARCHITECTURES[arch]
    kwargs = dict(architecture.default_kwargs)
    if features is not None:
        kwargs["features"] = list(features)
    elif "paper" in architecture.feature_presets:
        kwargs["features"] = list(architecture.feature_presets["paper"])
    classes = make_classes(CLASSES)
    kwargs.update(in_channels=3, out_channels=out_channels_for(len(classes)))
    metadata = ModelMetadata(architecture=arch, kwargs=kwargs, context=1, normalization=Normalization.parse("ct:-1000,1000"), classes=classes)
    path = folder / f"{name}.safetensors"
    create_checkpoint(path, metadata, seed=0)
    return path


def engine_predictor(checkpoint_path: Path, depth, threads: int, backend: str = "auto", precision: str = "auto", slice_workers=None):
    """What ``unetseg predict`` builds (create_predictor), on the CPU."""
    checkpoint = load_checkpoint(checkpoint_path)
    plan = plan_execution(ExecutionRequest("cpu", backend, precision, threads, slice_workers))
    predictor, notes = create_predictor(checkpoint, plan, depth)
    for note in notes:
        log(f"  note: {note}")
    return predictor


def plain_predictor(checkpoint_path: Path, depth):
    """The engine before the speed work: eager PyTorch, float32, BatchNorm unfolded, contiguous."""
    checkpoint = load_checkpoint(checkpoint_path)
    return SlicePredictor(build_model(checkpoint), checkpoint.metadata, torch.device("cpu"), depth)


def flops_per_slice(checkpoint_path: Path, depth, size: int) -> float:
    checkpoint = load_checkpoint(checkpoint_path)
    with torch.device("meta"):
        model = build_network(checkpoint.metadata.architecture, checkpoint.metadata.kwargs).eval()
    forward = (lambda x: model.forward_depth(x, depth)) if isinstance(depth, int) else model
    return count_flops(lambda: forward(torch.zeros(1, 3, size, size, device="meta"))) / 1e9


def monai_unetpp(features=PAPER_UNETPP):
    from monai.networks.nets import BasicUNetPlusPlus

    torch.manual_seed(0)
    net = BasicUNetPlusPlus(
        spatial_dims=2, in_channels=3, out_channels=len(CLASSES) + 1, features=tuple(features) + (features[0],), norm="batch", act="relu"
    ).eval()

    def run(batch: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(net(torch.from_numpy(batch))[0], dim=1)

    return net, run


def monai_flops(net, size: int) -> float:
    return count_flops(lambda: net(torch.zeros(1, 3, size, size))) / 1e9


# --- 2. architectures ------------------------------------------------------------------------------


def architecture_section(folder: Path, sizes: List[int], threads: int, quick: bool, peak: float) -> List[dict]:
    rows: List[dict] = []
    repetitions = 2 if quick else 3
    groups = []  # (label, checkpoint, depth, arch) lists that are interleaved together
    for name, architecture in ARCHITECTURES.items():
        path = make_checkpoint(folder, name, name)
        if architecture.prunable:
            groups.append([(f"{architecture.title} L{d}", path, d, name) for d in architecture.prune_depths])
        else:
            groups.append([(architecture.title, path, None, name)])
    if quick:
        groups = [g for g in groups if g[0][3] in ("unet", "unetplusplus", "deeplabv3plus")]
    monai_net, monai_run = monai_unetpp()
    for group in groups:
        predictors = {}
        for label, path, depth, arch in group:
            started = time.perf_counter()
            predictors[label] = engine_predictor(path, depth, threads)
            log(f"{label}: engine predictor ({predictors[label].backend}) ready in {time.perf_counter() - started:.1f} s")
        plain = {label: plain_predictor(path, depth) for label, path, depth, arch in group}
        is_unetpp = group[0][3] == "unetplusplus"
        int8_rows = []  # (label, checkpoint, depth, arch) of the --precision int8 rows, UNet++ only
        if is_unetpp and onnx_available():
            for label, path, depth, arch in group:
                started = time.perf_counter()
                predictors[f"{label} int8"] = int8_predictor(path, depth, threads, min(sizes))
                int8_rows.append((f"{label} int8", path, depth, arch))
                log(f"{label} int8: quantised in {time.perf_counter() - started:.1f} s")
        for size in sizes:
            inputs = {count: np.random.default_rng(0).random((count, 3, size, size), dtype=np.float32) for count in (1, 2, max(1, threads))}
            x1 = inputs[1]
            # the engine as predict runs it: one slice per network call, its slice workers all busy
            variants = {label: (lambda p=p: p(inputs[p.workers])) for label, p in predictors.items()}
            if size == min(sizes):
                variants.update({f"plain {label}": (lambda p=p: p(x1)) for label, p in plain.items()})
            if is_unetpp:  # MONAI as its user would run it: batch 1 or 2, whichever is faster
                variants["MONAI BasicUNet++"] = lambda: monai_run(x1)
                variants["MONAI BasicUNet++ batch 2"] = lambda: monai_run(inputs[2])
            started = time.perf_counter()
            results = interleaved(variants, repetitions)
            log(f"  {size}²: batch 1 measured in {time.perf_counter() - started:.0f} s")
            for label, path, depth, arch in group + int8_rows:
                gflops = flops_per_slice(path, depth, size)
                row = {
                    "network": label,
                    "arch": arch,
                    "depth": depth,
                    "size": size,
                    "backend": predictors[label].backend + (" int8" if label.endswith("int8") else ""),
                    "gflops_per_slice": gflops,
                    "workers": predictors[label].workers,
                    "batch1": summary(results[label]["times"], per=predictors[label].workers),
                    "peak_rss_mb": results[label]["peak_rss"] / 2**20,
                }
                if f"plain {label}" in results:
                    row["plain_batch1"] = summary(results[f"plain {label}"]["times"])
                rows.append(row)
            if is_unetpp:
                rows.append(
                    {
                        "network": "MONAI BasicUNet++ (32..512)",
                        "arch": "monai",
                        "depth": None,
                        "size": size,
                        "backend": "torch eager",
                        "gflops_per_slice": monai_flops(monai_net, size),
                        "batch1": summary(results["MONAI BasicUNet++"]["times"]),
                        "batches": {"2": summary(results["MONAI BasicUNet++ batch 2"]["times"], per=2)},
                        "peak_rss_mb": max(results[k]["peak_rss"] for k in ("MONAI BasicUNet++", "MONAI BasicUNet++ batch 2")) / 2**20,
                    }
                )
            # best batch: larger batches for networks cheap enough to try them at this size
            candidates = [b for b in ((2, 4) if size <= 256 else (2,))]
            for batch in candidates:
                variants = {}
                for label, path, depth, arch in group:
                    row = next(r for r in rows if r["network"] == label and r["size"] == size)
                    if row["gflops_per_slice"] * batch > 600 or (quick and batch > 2):
                        continue
                    xb = np.random.default_rng(1).random((batch, 3, size, size), dtype=np.float32)
                    raw = getattr(predictors[label], "inner", predictors[label])  # without the engine's CPU micro-batching
                    variants[label] = lambda p=raw, xb=xb: p(xb)
                if not variants:
                    continue
                results = interleaved(variants, 2)
                for label in variants:
                    row = next(r for r in rows if r["network"] == label and r["size"] == size)
                    row.setdefault("batches", {})[str(batch)] = summary(results[label]["times"], per=batch)
                    row["peak_rss_mb"] = max(row["peak_rss_mb"], results[label]["peak_rss"] / 2**20)
            for row in rows:
                if row["size"] == size and row["arch"] != "monai" and "best_batch" not in row:
                    options = {"1": row["batch1"], **row.get("batches", {})}
                    best = min(options, key=lambda b: options[b]["median_ms"])
                    row["best_batch"] = int(best)
                    row["best"] = options[best]
                    row["gflops_per_s"] = row["gflops_per_slice"] / (row["best"]["median_ms"] / 1000)
                    row["fraction_of_peak"] = row["gflops_per_s"] / peak
                if row["size"] == size and row["arch"] == "monai" and "gflops_per_s" not in row:
                    options = {"1": row["batch1"], **row.get("batches", {})}
                    best = min(options, key=lambda b: options[b]["median_ms"])
                    row["best_batch"], row["best"] = int(best), options[best]
                    row["gflops_per_s"] = row["gflops_per_slice"] / (row["best"]["median_ms"] / 1000)
                    row["fraction_of_peak"] = row["gflops_per_s"] / peak
        del predictors, plain
    return rows


def int8_predictor(checkpoint_path: Path, depth, threads: int, size: int, slices: int = 8):
    """The engine with ``--precision int8``: its ONNX export quantised as ``predict`` does, calibrated on
    ``slices`` random slices (random weights: the ranges do not change the speed; the label check
    that ``predict`` adds is left out, random networks' near-ties make it meaningless)."""
    from UNetSegmentationLib.backends.int8 import calibration_tiles, quantize_export

    predictor = engine_predictor(checkpoint_path, depth, threads, precision="int8")
    session = predictor.inner
    rng = np.random.default_rng(5)
    slices_ = [rng.standard_normal((1, 3, size, size), dtype=np.float32) for _ in range(slices)]
    calibration = [tile for batch in slices_ for tile in calibration_tiles(batch, predictor.required_multiple)]
    return predictor.with_inner(session.with_model(quantize_export(session.path, session.input_name, calibration), "int8"))


def head_to_head(size: int, threads: int, repetitions: int) -> dict:
    """UNet++ L4 (the engine in fp32 and int8) against MONAI BasicUNet++ in a process of their own:
    nothing else was built or run in it. (In the long benchmark process, eager PyTorch, MONAI's
    and the plain path alike, measures up to ~1.5× slower than in a fresh one; the ONNX Runtime
    engine does not: the comparison is made here as well, and the smaller ratio is the one quoted.)"""
    with tempfile.TemporaryDirectory(prefix="unetseg-head-to-head-") as temporary:
        folder = Path(temporary)
        os.environ["UNETSEG_CACHE_DIR"] = str(folder / "cache")
        path = make_checkpoint(folder, "unetplusplus", "unetplusplus")
        predictors = {"UNet++ L4": engine_predictor(path, 4, threads)}
        if onnx_available():
            predictors["UNet++ L4 int8"] = int8_predictor(path, 4, threads, size)
        _, monai_run = monai_unetpp()
        inputs = {count: np.random.default_rng(0).random((count, 3, size, size), dtype=np.float32) for count in (1, 2, threads)}
        variants = {label: (lambda p=p: p(inputs[p.workers])) for label, p in predictors.items()}
        variants["MONAI BasicUNet++"] = lambda: monai_run(inputs[1])
        variants["MONAI BasicUNet++ batch 2"] = lambda: monai_run(inputs[2])
        results = interleaved(variants, repetitions)
    out = {label: summary(results[label]["times"], per=p.workers) for label, p in predictors.items()}
    monai = {"1": summary(results["MONAI BasicUNet++"]["times"]), "2": summary(results["MONAI BasicUNet++ batch 2"]["times"], per=2)}
    out["MONAI BasicUNet++"] = min(monai.values(), key=lambda s: s["median_ms"])
    return out


def head_to_head_section(sizes: List[int], threads: int, quick: bool) -> dict:
    """:func:`head_to_head` at each size, each in a child process."""
    found = {}
    for size in sizes:
        started = time.perf_counter()
        command = [sys.executable, str(Path(__file__).resolve()), "--head-to-head", str(size), "--threads", str(threads), "--repetitions", "3" if quick else "5"]
        finished = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if finished.returncode != 0:
            raise RuntimeError(f"head-to-head at {size}² failed: {finished.stderr[-2000:]}")
        found[str(size)] = json.loads(finished.stdout.strip().splitlines()[-1])
        log(f"  head to head {size}²: {time.perf_counter() - started:.0f} s")
    return found


# --- 3. optimisations ------------------------------------------------------------------------------


def optimisation_variants(checkpoint_path: Path, depth, size: int, threads: int, native_bf16: bool, with_onnx: bool, batches=(1,)):
    """Name → predictor for each speed option alone and combined (same network, same input)."""
    from UNetSegmentationLib.backends.torch_network import fold_batchnorm

    checkpoint = load_checkpoint(checkpoint_path)
    metadata = checkpoint.metadata
    cpu = torch.device("cpu")

    def torch_variant(fold: bool, channels_last: bool, precision: str = "fp32"):
        predictor = SlicePredictor(build_model(checkpoint), metadata, cpu, depth, True, precision)
        if fold:
            fold_batchnorm(predictor.model)
        if channels_last:
            predictor.model.to(memory_format=torch.channels_last)  # in place: the predictor's network holds this module
            predictor.settings = dataclasses.replace(predictor.settings, channels_last=True)
        return predictor

    variants = {
        "plain (eager fp32)": torch_variant(False, False),
        "+ fold BN": torch_variant(True, False),
        "+ channels_last": torch_variant(False, True),
        "+ fold BN + channels_last (torch backend)": torch_variant(True, True),
    }
    if with_onnx:
        variants["ONNX Runtime (fold BN by export)"] = onnx_predictor_for(checkpoint, depth, True, threads)
    if native_bf16:
        variants["+ fold BN + channels_last + bf16 autocast"] = torch_variant(True, True, "bf16")
    return variants


def optimisation_section(folder: Path, threads: int, quick: bool, native_bf16: bool, with_onnx: bool) -> List[dict]:
    workloads = [
        ("UNet++ L4, paper features 32..512, 3 classes", make_checkpoint(folder, "ablation-unetpp", "unetplusplus"), 4, 256),
        ("bundled chest-CT UNet++ (8..128), L3, 7 classes", BUNDLED, 3, 512),
    ]
    results = []
    repetitions = 3 if quick else 5
    for title, path, depth, size in workloads:
        variants = optimisation_variants(path, depth, size, threads, native_bf16, with_onnx)
        x = np.random.default_rng(2).random((1, 3, size, size), dtype=np.float32)
        log(f"optimisations: {title} at {size}²")
        measured = interleaved({name: (lambda p=p: p(x)) for name, p in variants.items()}, repetitions)
        plain = statistics.median(measured["plain (eager fp32)"]["times"])
        gflops = flops_per_slice(path, depth, size)
        entry = {"workload": title, "size": size, "gflops_per_slice": gflops, "variants": []}
        for name in variants:
            s = summary(measured[name]["times"])
            entry["variants"].append({"name": name, **s, "speedup_vs_plain": plain * 1000 / s["median_ms"], "peak_rss_mb": measured[name]["peak_rss"] / 2**20})
        if not native_bf16:
            entry["variants"].append({"name": "bf16 autocast", "skipped": "no native bf16 on this CPU (AVX512-BF16/AMX): oneDNN emulates it, ~100× slower than fp32"})
        # the network alone at batch 1/2/4 on all threads, then how the threads are used
        engine = engine_predictor(path, depth, threads, slice_workers=1)
        raw = getattr(engine, "inner", engine)  # the network called on the whole batch (no micro-batching)
        batch_variants = {}
        for batch in (1, 2, 4):
            xb = np.random.default_rng(3).random((batch, 3, size, size), dtype=np.float32)
            batch_variants[f"engine ({engine.backend}), network batch {batch}"] = (lambda xb=xb: raw(xb), batch)
        measured = interleaved({k: v[0] for k, v in batch_variants.items()}, max(2, repetitions - 2))
        for name, (_, batch) in batch_variants.items():
            s = summary(measured[name]["times"], per=batch)
            entry["variants"].append({"name": name, **s, "speedup_vs_plain": plain * 1000 / s["median_ms"], "peak_rss_mb": measured[name]["peak_rss"] / 2**20})
        if threads > 1:  # on `threads` slices: one thread; all threads on one slice at a time; one slice per thread at once
            xw = np.random.default_rng(4).random((threads, 3, size, size), dtype=np.float32)
            ways = {
                "1 thread": engine_predictor(path, depth, 1),
                f"{threads} threads on one slice at a time": engine,
                f"{threads} slices at once, 1 thread each (the default)": engine_predictor(path, depth, threads, slice_workers=threads),
            }
            if with_onnx:
                ways[f"{threads} slices at once, int8 (`--precision int8`)"] = int8_predictor(path, depth, threads, size)
            measured = interleaved({name: (lambda p=p: p(xw)) for name, p in ways.items()}, repetitions)
            configure_threads(threads)
            for name in ways:
                s = summary(measured[name]["times"], per=threads)
                entry["variants"].append({"name": f"engine ({engine.backend}), {name}", **s, "speedup_vs_plain": plain * 1000 / s["median_ms"], "peak_rss_mb": measured[name]["peak_rss"] / 2**20})
            del ways
        results.append(entry)
    return results


def compile_section(threads: int) -> dict:
    """torch.compile of the bundled model (folded, channels_last) at 512²: compile time against gain."""
    from UNetSegmentationLib.backends.torch_network import ProbabilityNetwork, fold_batchnorm

    checkpoint = load_checkpoint(BUNDLED)
    model = build_model(checkpoint)
    fold_batchnorm(model)
    network = ProbabilityNetwork(model, 3, True).eval().to(memory_format=torch.channels_last)
    onnx = onnx_predictor_for(checkpoint, 3, True, threads) if onnx_available() else None
    x = torch.rand(1, 3, 512, 512).contiguous(memory_format=torch.channels_last)
    # cold: an empty inductor cache; warm: the same compilation again with its on-disk cache (a later run)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="unetseg-inductor-")
    times = []
    for _ in range(2):
        torch._dynamo.reset()
        started = time.perf_counter()
        compiled = torch.compile(network, dynamic=False)
        with torch.inference_mode():
            compiled(x)
        times.append(time.perf_counter() - started)
    compile_s, warm_compile_s = times
    variants = {"eager (fold BN + channels_last)": lambda: network(x), "torch.compile (inductor)": lambda: compiled(x)}
    if onnx is not None:
        xn = x.contiguous().numpy()
        variants["ONNX Runtime"] = lambda: onnx(xn)
    with torch.inference_mode():
        measured = interleaved(variants, 5)
    shutil.rmtree(os.environ.pop("TORCHINDUCTOR_CACHE_DIR"), ignore_errors=True)
    out = {"compile_s": compile_s, "warm_compile_s": warm_compile_s, "variants": {k: summary(v["times"]) for k, v in measured.items()}}
    gain = (out["variants"]["eager (fold BN + channels_last)"]["median_ms"] - out["variants"]["torch.compile (inductor)"]["median_ms"]) / 1000
    out["break_even_slices"] = compile_s / gain if gain > 0 else None
    out["break_even_slices_warm"] = warm_compile_s / gain if gain > 0 else None
    return out


def prefetch_section(threads: int, slices: int = 24) -> dict:
    """predict_volume on a 512×512×N volume with and without the preprocessing thread."""
    import SimpleITK as sitk

    from UNetSegmentationLib.inference.pipeline import predict_volume
    from UNetSegmentationLib.inference.normalization import fit_normalization
    from UNetSegmentationLib.inference.slicing import SliceGeometry

    image = ct_volume(slices)
    volume = sitk.GetArrayViewFromImage(image)
    checkpoint = load_checkpoint(BUNDLED)
    predictor = engine_predictor(BUNDLED, 3, threads)
    geometry = SliceGeometry.from_direction(image.GetDirection())
    mapping = fit_normalization(checkpoint.metadata.normalization, volume)

    def run(prefetch: bool):
        if prefetch:
            os.environ.pop("UNETSEG_NO_PREFETCH", None)
        else:
            os.environ["UNETSEG_NO_PREFETCH"] = "1"
        try:
            return predict_volume(volume, geometry, predictor, mapping, PREDICT_BATCH)
        finally:
            os.environ.pop("UNETSEG_NO_PREFETCH", None)

    measured = interleaved({"preprocessing on a thread": lambda: run(True), "all in the main thread": lambda: run(False)}, 3)
    return {"slices": slices, "backend": predictor.backend, "batch": PREDICT_BATCH, "variants": {k: summary(v["times"], per=slices) for k, v in measured.items()}}


# --- 4. bf16 accuracy ------------------------------------------------------------------------------


def bf16_section(threads: int) -> dict:
    """Dice of the bundled model on the slicerio chest CT in fp32, bf16 (emulated if need be: same
    numerics) and int8 (ONNX Runtime, quantised for this CT as ``predict --precision int8`` does)."""
    import slicerio

    from UNetSegmentationLib.backends.int8 import quantize_for_volume
    from UNetSegmentationLib.evaluation.evaluate import held_out_slices_of
    from UNetSegmentationLib.evaluation.metrics import dice_per_class
    from UNetSegmentationLib.inference.pipeline import predict_volume
    from UNetSegmentationLib.inference.normalization import fit_normalization
    from UNetSegmentationLib.inference.slicing import SliceGeometry, normalised_batch, padding_for
    from UNetSegmentationLib.training.cases import Case
    from UNetSegmentationLib.io.labels import resolve_classes
    from UNetSegmentationLib.io.labels import load_case

    checkpoint = load_checkpoint(BUNDLED)
    metadata = checkpoint.metadata
    case = Case("CTChest4", Path(slicerio.get_testdata_file("CTChest4.nrrd")), Path(slicerio.get_testdata_file("Segmentation.seg.nrrd")))
    loaded = load_case(case)
    _, (lookup,) = resolve_classes([(case.name, loaded.label)], declared=metadata.classes)
    truth = lookup[np.minimum(loaded.label.array, lookup.size - 1)]
    truth[loaded.label.array >= lookup.size] = 0
    geometry = SliceGeometry.from_direction(loaded.direction)
    mapping = fit_normalization(metadata.normalization, loaded.volume)
    held_out = held_out_slices_of(metadata, case.image)
    value_to_channel = np.zeros(max(c.value for c in metadata.classes) + 1, dtype=np.uint8)
    for channel, c in enumerate(metadata.classes, 1):
        value_to_channel[c.value] = channel
    out = {"classes": [c.name for c in metadata.classes], "precisions": ["bf16"] + (["int8"] if onnx_available() else []), "depths": {}}
    for depth in (3, 4):
        labels = {}
        seconds = {}
        for precision in ["fp32"] + out["precisions"]:
            started = time.perf_counter()
            if precision == "int8":  # as predict does it: calibrated on 8 slices of this CT, checked on 8 others
                predictor = engine_predictor(BUNDLED, depth, threads, precision="int8")
                slices = geometry.slices_view(loaded.volume)
                padding = padding_for(slices.shape[1:], predictor.required_multiple)
                quantized = quantize_for_volume(predictor, len(slices), lambda k: normalised_batch(slices, k, metadata.context, mapping, padding))
                predictor = quantized.predictor
                out.setdefault("int8_check", {})[f"L{depth}"] = {"precision": quantized.precision, "agreement": quantized.agreement.describe(), "seconds": quantized.seconds}
            else:
                predictor = SlicePredictor(build_model(checkpoint), metadata, torch.device("cpu"), depth, True, precision, True)
            labels[precision] = value_to_channel[predict_volume(loaded.volume, geometry, predictor, mapping, 4).labels]
            seconds[precision] = time.perf_counter() - started
        entry = {"seconds": seconds}
        for name, selection in (("all 34 slices", slice(None)), ("7 held-out slices", held_out)):
            view = lambda a: geometry.slices_view(a)[selection]  # noqa: E731
            entry[name] = {}
            for precision in labels:
                dice = dice_per_class(view(labels[precision]), view(truth), len(metadata.classes))
                entry[name][f"dice_{precision}"] = [None if np.isnan(v) else float(v) for v in dice]
                entry[name][f"mean_dice_{precision}"] = float(np.nanmean(dice))
            for precision in out["precisions"]:
                entry[name][f"label_agreement_{precision}"] = float((view(labels["fp32"]) == view(labels[precision])).mean())
                entry[name][f"mean_dice_difference_{precision}"] = entry[name][f"mean_dice_{precision}"] - entry[name]["mean_dice_fp32"]
        out["depths"][f"L{depth}"] = entry
    return out


# --- 5. end to end ---------------------------------------------------------------------------------


def ct_volume(slices: int, size: int = 512):
    """The slicerio chest CT resampled (linear) to size × size × slices, int16 HU, same field of view."""
    import SimpleITK as sitk
    import slicerio

    image = sitk.ReadImage(slicerio.get_testdata_file("CTChest4.nrrd"))
    new_size = [size, size, slices]
    spacing = [image.GetSpacing()[a] * image.GetSize()[a] / new_size[a] for a in range(3)]
    return sitk.Resample(image, new_size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing, image.GetDirection(), -1024, sitk.sitkInt16)


#: runs ``unetseg`` and reports its own high-water RSS: a child's ru_maxrss from wait4 would include
#: the benchmark process's memory copied at fork time
CHILD = (
    "import atexit, sys\n"
    "def _hwm():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM'):\n"
    "            sys.stderr.write('UNETSEG_BENCH_VMHWM_KB ' + line.split()[1] + '\\n')\n"
    "atexit.register(_hwm)\n"
    "import runpy\n"
    "sys.argv = ['unetseg'] + sys.argv[1:]\n"
    "runpy.run_module('UNetSegmentationLib', run_name='__main__', alter_sys=True)\n"
)


def run_predict_with_rss(arguments: List[str], env: dict) -> dict:
    """``unetseg predict ... --progress json`` in a child process: wall time, its peak RSS, its events."""
    command = [sys.executable, "-c", CHILD, "predict", *arguments, "--progress", "json"]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"unetseg predict failed ({completed.returncode}): {completed.stderr[-2000:]}")
    events = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    done = next(e for e in events if e["event"] == "done")
    start = next(e for e in events if e["event"] == "start")
    hwm = [int(line.split()[1]) for line in completed.stderr.splitlines() if line.startswith("UNETSEG_BENCH_VMHWM_KB")]
    return {"wall_s": wall, "peak_rss_mb": hwm[-1] / 1024 if hwm else float("nan"), "done": done, "start": start}


def split_times(run: dict) -> dict:
    t = run["done"]["timings"]
    startup = run["wall_s"] - t["total_s"] + t["load_model_s"]  # interpreter, imports, checkpoint, predictor
    parts = {
        "startup_s": startup,
        "read_s": t["read_s"],
        "preprocess_s": t["prepare_s"] + t["preprocess_s"],
        "network_s": t["network_s"],
        "postprocess_s": t["postprocess_s"],
        "write_s": t["write_s"],
    }
    parts["other_s"] = max(0.0, run["wall_s"] - sum(parts.values()))
    parts["wall_s"] = run["wall_s"]
    parts["overhead_fraction"] = 1 - t["network_s"] / run["wall_s"]
    return parts


def end_to_end_section(folder: Path, slice_counts: List[int], warm_runs: int, threads: int) -> dict:
    import SimpleITK as sitk

    checkpoint = folder / "e2e" / BUNDLED.name  # a copy: the first run exports into an empty cache next to it
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUNDLED, checkpoint)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "UNetSegmentation")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["UNETSEG_CACHE_DIR"] = str(folder / "cache")
    out: dict = {"checkpoint": "bundled chest-CT UNet++ (8..128), recommended depth L3", "runs": {}}
    for count in slice_counts:
        source = folder / f"ct-512x512x{count}.nrrd"
        image = ct_volume(count)
        sitk.WriteImage(image, str(source), useCompression=True)
        del image
        runs = []
        for index in range(warm_runs + (1 if count == slice_counts[0] else 0)):
            target = folder / f"out-{count}.seg.nrrd"
            arguments = ["--checkpoint", str(checkpoint), "--threads", str(threads), "--overwrite", str(source), str(target)]
            run = run_predict_with_rss(arguments, env)
            cold = count == slice_counts[0] and index == 0
            parts = split_times(run)
            runs.append({"cold_onnx_cache": cold, "backend": run["start"].get("backend"), "peak_rss_mb": run["peak_rss_mb"], **parts})
            log(f"  {count} slices{' (cold cache)' if cold else ''}: {parts['wall_s']:.1f} s, network {parts['network_s']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MB")
        voxels = 512 * 512 * count
        out["runs"][str(count)] = {
            "input_mb": source.stat().st_size / 2**20,
            "volume_bytes_in_memory_mb": voxels * (2 + 1) / 2**20,  # int16 input + uint8 labels
            "runs": runs,
        }
        source.unlink()
    return out


# --- report ----------------------------------------------------------------------------------------


def machine_info(threads: int, native_bf16: bool) -> dict:
    flags = device._cpu_flags()
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnxruntime", "onnx", "monai", "numpy", "SimpleITK"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            versions[name] = None
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "isa": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16,
        "load_average_at_start": os.getloadavg(),
        "versions": versions,
    }


def targets(report: dict) -> List[dict]:
    rows = report.get("architectures", [])
    found = []

    def row(network: str, size: int):
        return next((r for r in rows if r["network"] == network and r["size"] == size), None)

    for size in sorted({r["size"] for r in rows} | {int(size) for size in report.get("head_to_head", {})}):
        l4, monai, l2 = row("UNet++ L4", size), row("MONAI BasicUNet++ (32..512)", size), row("UNet++ L2", size)
        alone = report.get("head_to_head", {}).get(str(size), {})
        for label, precision in (("UNet++ L4", "fp32, the default"), ("UNet++ L4 int8", "`--precision int8`")):
            ratios = []
            engine = row(label, size)
            if engine and monai:
                ratios.append(("in this process", monai["best"]["median_ms"] / engine["batch1"]["median_ms"]))
            if label in alone:
                ratios.append(("in a process of their own", alone["MONAI BasicUNet++"]["median_ms"] / alone[label]["median_ms"]))
            if ratios:
                smallest = min(ratio for _, ratio in ratios)
                found.append(
                    {
                        "target": f"UNet++ L4 ≥ 2× faster per slice than MONAI BasicUNet++ ({size}²; engine {precision}, as `predict` runs it; "
                        "MONAI: its faster of batch 1 and 2)",
                        "value": ", ".join(f"{ratio:.2f}× {where}" for where, ratio in ratios),
                        "met": smallest >= 2,
                    }
                )
        if l4 and l2:
            ratio = l4["best"]["median_ms"] / l2["best"]["median_ms"]
            found.append({"target": f"UNet++ L2 ≥ 2.4× faster than L4 ({size}²)", "value": f"{ratio:.2f}×", "met": ratio >= 2.4})
    big = [r for r in rows if r["size"] == 512 and r["arch"] != "monai" and not r["backend"].endswith("int8")]
    if big:
        met = [r["network"] for r in big if r["fraction_of_peak"] >= 0.5]
        found.append(
            {
                "target": "network at 512² ≥ 50 % of the fp32 peak matmul rate",
                "value": ", ".join(f"{r['network']} {100 * r['fraction_of_peak']:.0f}%" for r in big),
                "met": len(met) == len(big),
                "partly": f"{len(met)} of {len(big)}",
            }
        )
    e2e = report.get("end_to_end", {}).get("runs", {})
    counts = sorted(e2e, key=int)
    if counts:
        warm = [r for r in e2e[counts[0]]["runs"] if not r["cold_onnx_cache"]] or e2e[counts[0]]["runs"]
        fraction = statistics.median(r["overhead_fraction"] for r in warm)
        found.append({"target": f"start-up + IO + pre/post-processing < 15 % of end to end (512×512×{counts[0]}, warm cache)", "value": f"{100 * fraction:.1f} %", "met": fraction < 0.15})
        cold = [r for r in e2e[counts[0]]["runs"] if r["cold_onnx_cache"]]
        if cold:
            found.append({"target": "(same, first run: ONNX export included)", "value": f"{100 * cold[0]['overhead_fraction']:.1f} %", "met": cold[0]["overhead_fraction"] < 0.15})
        last = e2e[counts[-1]]
        peak = max(r["peak_rss_mb"] for r in last["runs"])
        found.append({"target": f"peak RSS < 2.5 GB for 512×512×{counts[-1]}", "value": f"{peak / 1024:.2f} GB", "met": peak < 2.5 * 1024})
        if len(counts) > 1:
            first = e2e[counts[0]]
            working = [max(r["peak_rss_mb"] for r in e["runs"]) - e["volume_bytes_in_memory_mb"] for e in (first, last)]
            found.append(
                {
                    "target": "memory not growing with the number of slices (peak RSS − input and label arrays)",
                    "value": f"{working[0]:.0f} MB at {counts[0]} slices, {working[1]:.0f} MB at {counts[-1]}",
                    "met": working[1] <= working[0] * 1.15 + 50,
                }
            )
    return found


def markdown(report: dict) -> str:
    lines = []
    machine = report["machine"]
    peak = report["peak"]
    lines.append(f"Run: `{report['command']}` — {report['date']}, {report['run_s'] / 60:.1f} min.")
    lines.append("")
    lines.append(
        f"Machine: {machine['cpu']} ({machine['logical_cpus']} logical CPUs, ISA {', '.join(machine['isa'])}; PyTorch CPU capability "
        f"{machine['torch_cpu_capability']}; native bf16: {'yes' if machine['native_bf16'] else 'no'}), {machine['threads']} threads; "
        f"load average at start {machine['load_average_at_start'][0]:.2f}. torch {machine['versions']['torch']}, onnxruntime "
        f"{machine['versions']['onnxruntime']}, MONAI {machine['versions']['monai']}."
    )
    lines.append("")
    lines.append("**Peak matmul** (square products, median [min–max] of the repetitions at the start and the end of the run; the peak is the fastest library):")
    lines.append("")
    lines.append("| precision | GEMM | n | GFLOP/s |")
    lines.append("|---|---|---:|---:|")
    for name, rates in peak["fp32"].get("libraries", {}).items():
        lines.append(f"| fp32 | {name} | {peak['fp32']['n']} | {rates['gflops']:.1f} [{rates['min']:.1f}–{rates['max']:.1f}] |")
    for name in ("fp32", "bf16"):
        p = peak[name]
        lines.append(f"| **{name} peak** | {p['library']} | {p['n']} | **{p['gflops']:.1f}** [{p['min']:.1f}–{p['max']:.1f}] |")
    lines.append("")
    if report.get("targets"):
        lines.append("**Targets**")
        lines.append("")
        lines.append("| target | measured | met |")
        lines.append("|---|---|:---:|")
        for t in report["targets"]:
            met = "yes" if t["met"] else ("partly (" + t["partly"] + ")" if t.get("partly") and not t["met"] else "no")
            lines.append(f"| {t['target']} | {t['value']} | {met} |")
        lines.append("")
    if report.get("architectures"):
        lines.append(
            "**Architectures** (paper features, 3 input channels, 3 classes; ms/slice median [min–max]; engine = `--backend auto` as "
            "`predict` runs it: one slice per network call, as many slices at once as it has slice workers, each on threads ÷ workers "
            "threads; best batch: that or one worker's network alone (threads ÷ workers threads) at batch 2 or 4; MONAI: batch 1 in the engine column; "
            "*int8*: `--precision int8`, the export quantised as `predict` does it; its % of peak is of the fp32 peak)"
        )
        lines.append("")
        lines.append("| network | size | GFLOPs/slice | engine | engine ms/slice | slices/s | best batch | best ms/slice | GFLOP/s | % of fp32 peak | extra RSS of a call MB | plain PyTorch batch 1 | speed-up |")
        lines.append("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in report["architectures"]:
            best = r.get("best", r["batch1"])
            plain = r.get("plain_batch1")
            cells = [
                r["network"],
                f"{r['size']}²",
                f"{r['gflops_per_slice']:.1f}",
                r["backend"],
                fmt_ms(r["batch1"]),
                f"{1000 / r['batch1']['median_ms']:.2f}",
                str(r.get("best_batch", 1)),
                f"{best['median_ms']:.1f}",
                f"{r['gflops_per_s']:.0f}",
                f"{100 * r['fraction_of_peak']:.0f}",
                f"{r['peak_rss_mb']:.0f}",
                fmt_ms(plain) if plain else "",
                f"{plain['median_ms'] / r['batch1']['median_ms']:.2f}×" if plain else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if report.get("head_to_head"):
        lines.append("**Head to head in a process of their own** (UNet++ L4 32..512 as `predict` runs it, and MONAI BasicUNet++ at its faster of batch 1 and 2; "
                     "nothing else built or run in that process; ms/slice median [min–max])")
        lines.append("")
        lines.append("| size | engine fp32 | engine int8 | MONAI BasicUNet++ | MONAI ÷ fp32 | MONAI ÷ int8 |")
        lines.append("|---:|---:|---:|---:|---:|---:|")
        for size, h in report["head_to_head"].items():
            monai = h["MONAI BasicUNet++"]["median_ms"]
            int8 = h.get("UNet++ L4 int8")
            int8_cells = (fmt_ms(int8), f"{monai / int8['median_ms']:.2f}×") if int8 else ("n/a", "")
            lines.append(
                f"| {size}² | {fmt_ms(h['UNet++ L4'])} | {int8_cells[0]} | {fmt_ms(h['MONAI BasicUNet++'])} | "
                f"{monai / h['UNet++ L4']['median_ms']:.2f}× | {int8_cells[1]} |"
            )
        lines.append("")
    for entry in report.get("optimisations", []):
        lines.append(f"**Optimisations: {entry['workload']}, {entry['size']}², batch 1 unless named** ({entry['gflops_per_slice']:.1f} GFLOPs/slice)")
        lines.append("")
        lines.append("| variant | ms/slice | speed-up vs plain | extra RSS of a call MB |")
        lines.append("|---|---:|---:|---:|")
        for v in entry["variants"]:
            if v.get("skipped"):
                lines.append(f"| {v['name']} | not run: {v['skipped']} | | |")
            else:
                rss = f"{v['peak_rss_mb']:.0f}" if v.get("peak_rss_mb") else ""
                lines.append(f"| {v['name']} | {fmt_ms(v)} | {v['speedup_vs_plain']:.2f}× | {rss} |")
        lines.append("")
    if report.get("compile"):
        c = report["compile"]
        pays = (
            f"pays off after {c['break_even_slices']:.0f} slices (cold) or {c['break_even_slices_warm']:.0f} (warm cache)"
            if c.get("break_even_slices")
            else "never pays off (no gain)"
        )
        lines.append(
            f"**torch.compile** (bundled model, L3, 512², batch 1): compile {c['compile_s']:.1f} s with an empty inductor cache, "
            f"{c['warm_compile_s']:.1f} s with its on-disk cache; " + "; ".join(f"{k} {fmt_ms(v)} ms" for k, v in c["variants"].items()) + f"; {pays}."
        )
        lines.append("")
    if report.get("prefetch"):
        p = report["prefetch"]
        lines.append(f"**Overlap** (predict_volume, bundled model, 512×512×{p['slices']}, --batch-size {p.get('batch', 1)}, {p['backend']}): " + "; ".join(f"{k} {fmt_ms(v)} ms/slice" for k, v in p["variants"].items()) + ".")
        lines.append("")
    if report.get("bf16"):
        b = report["bf16"]
        lines.append("**Reduced precision vs fp32, bundled model on the slicerio chest CT** (Dice against `Segmentation.seg.nrrd`; "
                     "bf16: PyTorch autocast; int8: `--precision int8`, calibrated on 8 slices of this CT and checked on 8 others)")
        lines.append("")
        lines.append("| depth | slices | precision | mean Dice fp32 | mean Dice | difference | labels agreeing with fp32 |")
        lines.append("|---|---|---|---:|---:|---:|---:|")
        for depth, entry in b["depths"].items():
            for name in ("all 34 slices", "7 held-out slices"):
                e = entry[name]
                for precision in b.get("precisions", ["bf16"]):
                    lines.append(
                        f"| {depth} | {name} | {precision} | {e['mean_dice_fp32']:.4f} | {e[f'mean_dice_{precision}']:.4f} | "
                        f"{e[f'mean_dice_difference_{precision}']:+.4f} | {100 * e[f'label_agreement_{precision}']:.2f} % |"
                    )
        lines.append("")
    if report.get("end_to_end"):
        e = report["end_to_end"]
        lines.append(f"**End to end**: `unetseg predict` ({e['checkpoint']}) → `.seg.nrrd`, child process, seconds")
        lines.append("")
        lines.append("| volume | run | backend | wall | start-up | read | preprocess | network | postprocess | write | not network | peak RSS MB |")
        lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for count, entry in e["runs"].items():
            for index, r in enumerate(entry["runs"]):
                label = "first (ONNX export)" if r["cold_onnx_cache"] else f"warm {index}"
                lines.append(
                    f"| 512×512×{count} | {label} | {r['backend']} | {r['wall_s']:.1f} | {r['startup_s']:.2f} | {r['read_s']:.2f} | {r['preprocess_s']:.2f} | "
                    f"{r['network_s']:.1f} | {r['postprocess_s']:.2f} | {r['write_s']:.2f} | {100 * r['overhead_fraction']:.1f} % | {r['peak_rss_mb']:.0f} |"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer networks, sizes, repetitions and slices (a few minutes)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every measurement (default: PyTorch's default, one per core)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "speed-results.json", help="where to write the results (default bench/speed-results.json)")
    parser.add_argument("--markdown", type=Path, help="refresh the tables between the speed-results markers of this file (e.g. BENCHMARKS.md)")
    parser.add_argument("--sections", default="architectures,head-to-head,optimisations,compile,prefetch,bf16,end-to-end", help="comma-separated subset to run")
    parser.add_argument("--head-to-head", type=int, metavar="SIZE", help=argparse.SUPPRESS)  # the child of the head-to-head section
    parser.add_argument("--repetitions", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.head_to_head:
        print(json.dumps(head_to_head(args.head_to_head, configure_threads(args.threads), args.repetitions)))
        return 0
    sections = set(args.sections.split(","))
    if args.quick:
        sections.discard("compile")
    started = time.perf_counter()
    threads = configure_threads(args.threads)
    native_bf16 = device.cpu_has_native_bf16()
    with_onnx = onnx_available()
    command = "python bench/speed.py" + (" --quick" if args.quick else "") + (f" --threads {args.threads}" if args.threads else "")
    if args.sections != parser.get_default("sections"):
        command += f" --sections {args.sections}"
    report: dict = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(threads, native_bf16)}
    log(f"threads {threads}, native bf16 {native_bf16}, onnxruntime {'yes' if with_onnx else 'no'}")
    peaks = [measure_peak(native_bf16, args.quick, threads)]
    log(f"peak fp32 {peaks[0]['fp32']['gflops']:.1f} GFLOP/s, bf16 {peaks[0]['bf16']['gflops']:.1f} GFLOP/s")
    with tempfile.TemporaryDirectory(prefix="unetseg-speed-") as temporary:
        folder = Path(temporary)
        os.environ["UNETSEG_CACHE_DIR"] = str(folder / "cache")
        peak_fp32 = peaks[0]["fp32"]["gflops"]
        if "architectures" in sections:
            report["architectures"] = architecture_section(folder, [256] if args.quick else [256, 512], threads, args.quick, peak_fp32)
        if "head-to-head" in sections:
            log("head to head (own process)")
            report["head_to_head"] = head_to_head_section([256] if args.quick else [256, 512], threads, args.quick)
        if "optimisations" in sections:
            report["optimisations"] = optimisation_section(folder, threads, args.quick, native_bf16, with_onnx)
        if "compile" in sections:
            log("torch.compile")
            report["compile"] = compile_section(threads)
        if "prefetch" in sections:
            log("overlap")
            report["prefetch"] = prefetch_section(threads, 12 if args.quick else 24)
        if "bf16" in sections:
            log("bf16 accuracy")
            report["bf16"] = bf16_section(threads)
        peaks.append(measure_peak(native_bf16, args.quick, threads))
        if "end-to-end" in sections:
            log("end to end")
            counts = [40, 120] if args.quick else [200, 600]
            report["end_to_end"] = end_to_end_section(folder, counts, 1 if args.quick else 2, threads)
    report["peak"] = {
        name: {
            "n": peaks[0][name]["n"],
            "gflops": statistics.median(p[name]["gflops"] for p in peaks),
            "min": min(p[name]["min"] for p in peaks),
            "max": max(p[name]["max"] for p in peaks),
            "library": peaks[-1][name]["library"],
            "measurements": [p[name]["gflops"] for p in peaks],
        }
        for name in ("fp32", "bf16")
    }
    report["peak"]["fp32"]["libraries"] = {
        library: {
            "gflops": statistics.median(p["fp32"]["libraries"][library]["gflops"] for p in peaks),
            "min": min(p["fp32"]["libraries"][library]["min"] for p in peaks),
            "max": max(p["fp32"]["libraries"][library]["max"] for p in peaks),
        }
        for library in peaks[0]["fp32"]["libraries"]
    }
    # fractions of the peak against the final (median) peak
    for row in report.get("architectures", []):
        row["fraction_of_peak"] = row["gflops_per_s"] / report["peak"]["fp32"]["gflops"]
    import resource

    report["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["targets"] = targets(report)
    report["run_s"] = time.perf_counter() - started
    text = markdown(report)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    log(f"wrote {args.json} ({report['run_s'] / 60:.1f} min)")
    if args.markdown:
        write_marked_section(args.markdown, START, END, text)
        log(f"updated {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency of click refinement on a 512 × 512 input (issue 26's "Must show": per click median ≤ 150 ms,
p95 ≤ 300 ms on 2 cores with a warm engine; propagation across ±30 slices ≤ 3 s).

The input is the slicerio chest CT resampled to a clinical 0.76 mm in-plane (512 × 512, its 34 slices of
10 mm) and, for propagation, also to 2.5 mm slices (136): 30 slices on each side of the middle one.
Three measurements:

- ``session``: :meth:`RefineSession.add` in this process, one click on the visible slice (what the warm
  engine runs for a ``refine_click``), clicks spread over the body's slices, positive and negative: on
  whole slices (``crop=False``, the upper bound) and around the left lung (a large object, the network's
  region as :mod:`~UNetSegmentationLib.interactive.work_region` chooses it);
- ``warm engine round trip``: the same clicks as ``refine_click`` requests to ``unetseg serve`` through
  :class:`~UNetSegmentationLib.engine.client.EngineClient`, the left lung as ``initial``: what the Slicer
  effect waits for (request line, the edit, the ``.npy`` answer written, the ``done`` event read);
- ``propagation ±30``: :meth:`RefineSession.propagate` from the middle slice of the 2.5 mm version, its
  network forced to find an object (~30 mm) on every slice and its stop rules (negligible change, growth) off, so that all
  60 slices run (the worst case; a real propagation stops earlier where the object ends): whole slices,
  and around that object.

Run with the CPUs limited to two (``taskset -c 0,1``) for the issue's condition; ``--threads`` is the
network's thread count (default 2). On a machine others load, wall times measure the queue for the CPU;
the CPU time per click (this process's, and for the warm engine the engine's and the client's together) is
what a click costs on idle cores (with ``--threads 1``, its idle wall time). ``--checkpoint`` defaults to the bundled interactive model; where it is
missing, ``--untrained`` measures an untrained network of the same shape (UNet++ 8…128: the time does not
depend on the weights).

    taskset -c 0,1 python bench/refine_latency.py [--checkpoint CKPT | --untrained] [--clicks 40]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "UNetSegmentation"))

from UNetSegmentationLib.interactive.click_points import parse_click  # noqa: E402
from UNetSegmentationLib.interactive.propagation import PropagationRule  # noqa: E402
from UNetSegmentationLib.interactive.session import RefineSession, read_session_input  # noqa: E402
from UNetSegmentationLib.model.bundled import interactive_model_path  # noqa: E402


def resampled(image: sitk.Image, factors: Sequence[float]) -> sitk.Image:
    """``image`` on a grid of the same extent with its spacing times ``factors`` (linear)."""
    spacing, size = np.array(image.GetSpacing()), np.array(image.GetSize())
    new_size = np.round(size / np.asarray(factors)).astype(int)
    new_spacing = size * spacing / new_size
    direction = np.array(image.GetDirection()).reshape(3, 3)
    grid = sitk.Image([int(s) for s in new_size], sitk.sitkInt16)
    grid.SetSpacing([float(s) for s in new_spacing])
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin([float(o) for o in np.array(image.GetOrigin()) + direction @ ((new_spacing - spacing) / 2)])
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)


def untrained_checkpoint(folder: Path) -> Path:
    """An untrained interactive UNet++ 8…128 at the chest CT's spacing (the shape of the shipped one)."""
    from UNetSegmentationLib.interactive.guidance import GuidanceSpec
    from UNetSegmentationLib.model.checkpoint import create_checkpoint
    from UNetSegmentationLib.model.metadata import ModelMetadata, Normalization, make_classes

    kwargs = {"in_channels": 6, "out_channels": 1, "features": [8, 16, 32, 64, 128], "deep_supervision": True}
    metadata = ModelMetadata("unetplusplus", kwargs, 1, Normalization("ct", (-1000.0, 1000.0)), make_classes(["object"]),
                             training_spacing=[3.0, 3.0], slice_distance=5.0, guidance=GuidanceSpec().to_dict())
    path = folder / "untrained-interactive.safetensors"
    create_checkpoint(path, metadata)
    return path


def body_clicks(image: sitk.Image, count: int, seed: int = 0) -> List[dict]:
    """``count`` clicks inside the body (above -500 HU) on random slices, alternately positive and negative."""
    rng = np.random.default_rng(seed)
    array = sitk.GetArrayViewFromImage(image)
    body = np.argwhere(array > -500)
    picks = body[rng.choice(len(body), size=count, replace=False)]
    return [{"ijk": [int(i), int(j), int(k)], "positive": bool(n % 2 == 0)} for n, (k, j, i) in enumerate(picks)]


def percentiles(values: Sequence[float]) -> str:
    values = np.asarray(values, dtype=float)
    return f"{np.median(values):.0f} | {np.percentile(values, 95):.0f} | {values.min():.0f} | {values.max():.0f}"


class _Forced:
    """The network with the object forced onto a central disk of every slice it segments (never empty,
    never the slice's current mask): a propagation then runs every slice up to its limit."""

    def __init__(self, model) -> None:
        self.model, self.metadata, self.spec = model, model.metadata, model.spec
        self.calls = 0

    def predict(self, images: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        self.calls += 1
        out = self.model.predict(images, guidance)
        rows, columns = out.shape[-2:]
        r, c = np.ogrid[:rows, :columns]
        radius = 8 + (self.calls % 3)  # ~30 mm at 3 mm, a different disk each slice: the change never becomes negligible
        out[:, (r - rows // 2) ** 2 + (c - columns // 2) ** 2 <= radius ** 2] = 1.0
        return out


def measure_session(image: sitk.Image, model, clicks: List[dict], initial=None, crop: bool = True) -> tuple:
    """``(wall ms, CPU ms)`` of each click: the CPU time (all threads of this process) is what the click costs
    on idle cores, whatever else the machine runs meanwhile (with one thread, it is the idle wall time)."""
    session = RefineSession.open(image, model, initial, crop=crop)
    session.add(parse_click(clicks[0]))  # the first call warms the network up (as the engine's open would)
    wall, cpu = [], []
    for click in clicks:
        started = time.process_time()
        wall.append(session.add(parse_click(click)).seconds * 1000.0)
        cpu.append((time.process_time() - started) * 1000.0)
    return wall, cpu


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_engine(path: Path, checkpoint: Path, clicks: List[dict], threads: int, initial: Path) -> tuple:
    """``(wall ms of each round trip, CPU ms per click of the engine and this client together)``."""
    from UNetSegmentationLib.engine.client import EngineClient

    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    latencies = []
    with EngineClient(env=env) as client:
        opened = client.run("refine_open", timeout_s=600, input=str(path), checkpoint=str(checkpoint), initial=str(initial))[-1]
        if opened["event"] != "done":
            raise SystemExit(f"refine_open failed: {opened}")
        client.run("refine_click", timeout_s=600, session=opened["session"], click=clicks[0])  # warm-up
        engine_cpu, client_cpu = _cpu_seconds(client.pid), time.process_time()
        for click in clicks:
            started = time.perf_counter()
            last = client.run("refine_click", timeout_s=600, session=opened["session"], click=click)[-1]
            latencies.append((time.perf_counter() - started) * 1000.0)
            if last["event"] != "done":
                raise SystemExit(f"refine_click failed: {last}")
        cpu_ms = (_cpu_seconds(client.pid) - engine_cpu + time.process_time() - client_cpu) * 1000.0 / len(clicks)
    return latencies, cpu_ms


def measure_propagation(image: sitk.Image, model, sides: int, crop: bool) -> tuple:
    forced = _Forced(model)
    session = RefineSession.open(image, forced, rule=PropagationRule(max_slices=sides, max_growth=float("inf"), negligible_share=0.0, negligible_pixels=-1), crop=crop)
    middle = image.GetSize()[2] // 2
    session.add(parse_click({"ijk": [256, 256, middle], "positive": True}))
    started = time.process_time()
    answer = session.propagate()
    return answer.seconds, len(answer.slices), time.process_time() - started


def left_lung_on(grid: sitk.Image) -> sitk.Image:
    """The slicerio segmentation's left lung (a large object: most of half a slice) on ``grid``, nearest neighbour."""
    import slicerio

    from UNetSegmentationLib.io.labels import read_label

    ct = sitk.ReadImage(slicerio.get_testdata_file("CTChest4.nrrd"))
    labels = read_label(slicerio.get_testdata_file("Segmentation.seg.nrrd"), ct)
    (value,) = [s.value for s in labels.segments if s.name == "left lung"]
    lung = sitk.GetImageFromArray((labels.array == value).astype(np.uint8))
    lung.CopyInformation(ct)
    return sitk.Resample(lung, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="interactive checkpoint (default: the bundled interactive model)")
    parser.add_argument("--untrained", action="store_true", help="an untrained UNet++ 8..128 of the shipped shape, when no checkpoint is given")
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sides", type=int, default=30, help="slices on each side for the propagation (default 30)")
    parser.add_argument("--no-engine", action="store_true", help="leave out the warm engine's round trip")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args(argv)

    import slicerio
    import torch

    torch.set_num_threads(args.threads)
    from UNetSegmentationLib.interactive.predictor import InteractiveModel

    with tempfile.TemporaryDirectory(prefix="refine-latency-") as folder:
        folder = Path(folder)
        checkpoint = args.checkpoint or interactive_model_path()
        if args.checkpoint is None and (args.untrained or not checkpoint.exists()):
            if not args.untrained:
                raise SystemExit(f"no bundled interactive model at {checkpoint}; give --checkpoint or --untrained")
            checkpoint = untrained_checkpoint(folder)
        model = InteractiveModel.load(checkpoint)
        ct = read_session_input(slicerio.get_testdata_file("CTChest4.nrrd"))
        fine = resampled(ct, (0.25, 0.25, 1.0))
        thin = resampled(ct, (0.25, 0.25, 0.25))
        fine_path = folder / "chest-512.nrrd"
        sitk.WriteImage(fine, str(fine_path), True)
        clicks = body_clicks(fine, args.clicks)
        lung = left_lung_on(fine)
        lung_path = folder / "left-lung-512.nrrd"
        sitk.WriteImage(lung, str(lung_path), True)
        lung_mask = sitk.GetArrayFromImage(lung).astype(bool)
        rows, cpu = {}, {}
        rows["session, whole slices"], cpu["session, whole slices"] = measure_session(fine, model, clicks, crop=False)
        rows["session, around the left lung"], cpu["session, around the left lung"] = measure_session(fine, model, clicks, lung_mask)
        if not args.no_engine:
            name = "warm engine round trip, around the left lung"
            rows[name], engine_cpu_ms = measure_engine(fine_path, checkpoint, clicks, args.threads, lung_path)
        propagation = {name: measure_propagation(thin, model, args.sides, crop) for name, crop in (("whole slices", False), ("around a 30 mm object", True))}
        grid = RefineSession.open(fine, model).grid

    print(f"checkpoint {checkpoint.name} ({model.metadata.architecture} {model.metadata.kwargs.get('features')}); input 512x512 "
          f"(model grid {grid.model_size[0]}x{grid.model_size[1]}); torch threads {args.threads}; CPUs usable {len(os.sched_getaffinity(0))}; load {os.getloadavg()[0]:.1f}")
    print("\n| measurement | clicks | median ms | p95 ms | min ms | max ms | CPU ms median / p95 |\n| --- | --- | --- | --- | --- | --- | --- |")
    for name, values in rows.items():
        cpu_text = f"{np.median(cpu[name]):.0f} / {np.percentile(cpu[name], 95):.0f}" if name in cpu else f"{engine_cpu_ms:.0f} (mean: engine + client)"
        print(f"| click on the visible slice, {name} | {len(values)} | {percentiles(values)} | {cpu_text} |")
    for name, (seconds, slices, cpu_s) in propagation.items():
        print(f"\npropagation, {name}: {slices} slices (±{args.sides} asked) in {seconds:.2f} s, CPU {cpu_s:.2f} s ({seconds / max(slices, 1) * 1000:.0f} ms/slice), 512x512x136 at 2.5 mm")
    if args.json:
        args.json.write_text(json.dumps({"clicks_ms": rows, "clicks_cpu_ms": cpu, "propagation": propagation, "threads": args.threads}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

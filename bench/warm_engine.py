"""The warm engine (issue 25, item 3): a request to ``unetseg serve`` against a fresh ``unetseg predict``
process, on the same volume with the bundled model.

Volumes: the slicerio chest CT as it is (128 × 128 × 34 at 3.05 × 3.05 × 10 mm) and resampled as a
clinical scan (512 × 512 × 300 at 0.76 × 0.76 × 1.13 mm, linear, ``Testing/clinical_volumes.py``'s grid
covering the same extent). For each volume the rounds alternate: a fresh ``python -m UNetSegmentationLib
predict`` (wall time from the process's start to its exit, and the engine's own ``total_s`` with its
``load_model_s``), then a request to one engine started before the rounds and warmed by one request per
volume (wall time at the client from the request's line written to its ``done`` event read, the
engine's ``total_s`` and ``load_model_s``). Medians of ``--rounds``, then each volume's stage timings
(the ``done`` event's) fresh against warm, and the engine's first request per volume (the first one pays
the engine's start-up and model load). CPU seconds (user + system, all threads: the fresh process's, and the
engine's during the request) are what a loaded machine does not inflate as it inflates wall times.

    nice -n 5 python bench/warm_engine.py [--rounds 3] [--volumes chest,clinical-512x512x300,clinical-gz] [--checkpoint CKPT]

``clinical-gz`` is ``bench/clinical_speed.py``'s fixture (the same grid, 32-bit voxels in a gzip NRRD, as
Slicer saves a volume); ``--checkpoint``: another model than the bundled one, for both the fresh process
and the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "UNetSegmentation"))
sys.path.insert(0, str(REPO / "Testing"))

from clinical_volumes import resampled_grid  # noqa: E402

from UNetSegmentationLib.engine.client import EngineClient  # noqa: E402
from UNetSegmentationLib.inference.options import SegmentationOptions  # noqa: E402
from UNetSegmentationLib.protocol.child_environment import child_environment  # noqa: E402

CLINICAL = "clinical-512x512x300"
CLINICAL_GZ = "clinical-gz"


def write_volumes(folder: Path) -> Dict[str, Path]:
    """The chest CT as it is, and resampled to 512 × 512 × 300 over the same extent (uncompressed NRRD)."""
    import slicerio

    chest = Path(slicerio.get_testdata_file("CTChest4.nrrd"))
    image = sitk.ReadImage(str(chest))
    size = image.GetSize()
    grid = resampled_grid(image, (size[0] / 512, size[1] / 512, size[2] / 300))
    clinical = folder / f"{CLINICAL}.nrrd"
    sitk.WriteImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16), str(clinical), False)
    sys.path.insert(0, str(REPO / "bench"))
    from clinical_speed import fixture

    return {"chest": chest, CLINICAL: clinical, CLINICAL_GZ: fixture(300, Path(tempfile.gettempdir()) / "unetseg-clinical-speed")[0]}


def fresh_predict(volume: Path, output: Path, checkpoint: str = "bundled") -> dict:
    """One ``unetseg predict`` process: its wall time and its ``done`` event."""
    command = [sys.executable, "-m", "UNetSegmentationLib", "predict", "--checkpoint", checkpoint, "--progress", "json", "--overwrite", str(volume), str(output)]
    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True, env=child_environment())
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    done = [json.loads(line) for line in result.stdout.splitlines() if '"event": "done"' in line]
    if result.returncode != 0 or not done:
        raise SystemExit(f"predict failed: {result.stderr[-500:]}")
    return {"wall": wall, "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, **done[-1]["timings"]}


def process_cpu(pid: int) -> float:
    """User + system seconds process ``pid`` has used so far (all its threads; Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warm_request(client: EngineClient, volume: Path, output: Path, checkpoint: str = "bundled") -> dict:
    """One request to the warm engine: the client's wall time and its ``done`` event."""
    started, before = time.perf_counter(), process_cpu(client.pid) if client.pid else 0.0
    events = list(client.events(client.segment(volume, output, SegmentationOptions(overwrite=True), checkpoint=checkpoint), timeout_s=600))
    wall = time.perf_counter() - started
    if events[-1]["event"] != "done":
        raise SystemExit(f"request failed: {events[-1]}")
    return {"wall": wall, "cpu": process_cpu(client.pid) - before, **events[-1]["timings"]}


def median(runs: List[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--volumes", default=f"chest,{CLINICAL}")
    parser.add_argument("--checkpoint", default="bundled", help="the model: a .safetensors path, or 'bundled' (default)")
    args = parser.parse_args()
    checkpoint = args.checkpoint if args.checkpoint == "bundled" else str(Path(args.checkpoint).resolve())
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        volumes = {name: path for name, path in write_volumes(folder).items() if name in args.volumes.split(",")}
        fresh: Dict[str, List[dict]] = {name: [] for name in volumes}
        warm: Dict[str, List[dict]] = {name: [] for name in volumes}
        with EngineClient() as client:
            started = time.perf_counter()
            first = {}
            for name, volume in volumes.items():  # the engine's start-up and model load, once; then each volume once
                first[name] = warm_request(client, volume, folder / f"{name}-warmup.nrrd", checkpoint)
                first[name]["since_start"] = time.perf_counter() - started
            for _ in range(args.rounds):
                for name, volume in volumes.items():
                    fresh[name].append(fresh_predict(volume, folder / f"{name}-fresh.nrrd", checkpoint))
                    warm[name].append(warm_request(client, volume, folder / f"{name}-warm.nrrd", checkpoint))
    print(f"medians of {args.rounds} interleaved rounds; model {checkpoint}, CPU; load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| volume | fresh `predict`: wall s | CPU s | its total_s (load_model_s) | warm request: wall s | CPU s | its total_s (load_model_s) | fresh / warm wall |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in volumes:
        f, w = fresh[name], warm[name]
        print(f"| {name} | {median(f, 'wall'):.2f} | {median(f, 'cpu'):.2f} | {median(f, 'total_s'):.2f} ({median(f, 'load_model_s'):.2f}) | {median(w, 'wall'):.2f} | "
              f"{median(w, 'cpu'):.2f} | {median(w, 'total_s'):.2f} ({median(w, 'load_model_s'):.3f}) | {median(f, 'wall') / median(w, 'wall'):.1f}x |")
    for name in volumes:  # where the engine's own seconds go, fresh process against warm engine
        stages = [key for key in fresh[name][0] if key.endswith("_s") and all(key in run for run in fresh[name] + warm[name])]
        print(f"\n{name}, stage medians (s): | stage | fresh | warm |\n| --- | --- | --- |")
        for key in stages:
            print(f"| {key[:-2]} | {median(fresh[name], key):.3f} | {median(warm[name], key):.3f} |")
    print("\nthe engine's first requests (the first pays the process start, imports and model load):")
    for name in volumes:
        print(f"- {name}: {first[name]['wall']:.2f} s wall (load_model_s {first[name]['load_model_s']:.2f}), done {first[name]['since_start']:.2f} s after the client started")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The two comparisons of issue 25 on the clinical CT fixtures of ``bench/clinical_speed.py``, in one
process, interleaved round by round (the same network: the bundled model's shipped ONNX export, L3, on
ONNX Runtime with 2 threads, as ``predict`` runs it):

- ``monai``: what a MONAI user would write: the CT read with SimpleITK into a ``MetaTensor``, MONAI's
  ``Spacing`` to the model's spacing (3.05 × 3.05 mm, 10 mm slices; trilinear), ``ScaleIntensityRange``
  to the model's window, the 2.5D neighbour channels stacked, ``SliceInferer`` (slices along the last
  axis, 4 per call), the probabilities ``SpatialResample``-d back onto the CT's grid (trilinear), argmax,
  written as a compressed NRRD;
- ``limit``: reading the CT, the network on exactly the model-grid slices ``predict`` computes (their
  inputs built beforehand), writing ``predict``'s label map: what no pipeline around this network can beat;
- ``predict``: ``unetseg predict`` in a fresh process (wall time, and the done event's total_s).

With ``predict`` and ``limit`` both run, a last row gives issue 25's ratio: the work around the network (the
engine's ``total_s`` less the network alone, the ``limit``'s network time) over the network alone.

    python bench/clinical_comparisons.py [--rounds 3] [--sizes 300] [--encodings gzip,raw] [--pipelines predict,monai,limit] [--checkpoint CKPT]

``--checkpoint``: another model than the bundled one; the network is then the engine's own predictor of
that checkpoint (as ``predict`` opens it: its ONNX export where it has one), for all three pipelines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "UNetSegmentation"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "Testing"))
MODEL = REPO / "Testing/Data/chest-ct-unetplusplus.safetensors"  # the chest model of rounds 1-2 (the bundled one until issue 24): --checkpoint bundled for today's


def network(checkpoint: Path = MODEL) -> tuple:
    """``(network, the multiple its input sizes need)``, the network ``(B, 2c+1, H, W) → (B, K, H, W)``: the bundled
    model's shipped ONNX export on ONNX Runtime, 2 threads; another checkpoint's predictor as ``predict`` opens it."""
    if Path(checkpoint).resolve() != MODEL.resolve():
        from UNetSegmentationLib.inference.options import SegmentationOptions
        from UNetSegmentationLib.inference.predict_file import open_model
        from UNetSegmentationLib.model.checkpoint import load_checkpoint
        from UNetSegmentationLib.protocol.reporters import Reporter

        predictor = open_model(load_checkpoint(checkpoint, None, weights=False), SegmentationOptions(), Reporter()).predictor
        return (lambda batch: np.asarray(predictor(np.ascontiguousarray(batch, dtype=np.float32)))), int(predictor.required_multiple)
    from UNetSegmentationLib.backends.onnx_predictor import make_session

    session = make_session(next((REPO / "Testing/Data").glob("chest-ct-unetplusplus.L3.*.shipped.onnx")), threads=2)
    name = session.get_inputs()[0].name
    return (lambda batch: session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]), 32


def model_inputs(ct: Path, metadata, multiple: int = 32) -> list:
    """The batches of network inputs ``predict`` computes on ``ct`` (built once, outside the timing)."""
    from UNetSegmentationLib.inference.layout import layout_volume
    from UNetSegmentationLib.inference.model_slices import position_batches
    from UNetSegmentationLib.inference.normalization import fit_normalization
    from UNetSegmentationLib.inference.slicing import SliceGeometry

    image = sitk.ReadImage(str(ct))
    volume = sitk.GetArrayViewFromImage(image)
    geometry = SliceGeometry.from_direction(image.GetDirection())
    layout = layout_volume(volume, geometry, image.GetSpacing(), metadata, True, True)
    slices = geometry.slices_view(volume)
    positions = layout.grid.network_positions(slices.shape[0])
    return [b.inputs.copy() for b in position_batches(slices, positions, 4, metadata.context, fit_normalization(metadata.normalization, volume), layout.grid, layout.bodies, multiple)]


def limit(ct: Path, labels: np.ndarray, inputs: list, net, output: Path) -> dict:
    """Read + network + write, nothing else."""
    t0 = time.perf_counter()
    image = sitk.ReadImage(str(ct))
    t1 = time.perf_counter()
    for batch in inputs:
        net(batch)
    t2 = time.perf_counter()
    written = sitk.GetImageFromArray(labels)
    written.CopyInformation(image)
    sitk.WriteImage(written, str(output), True)
    t3 = time.perf_counter()
    return {"read": t1 - t0, "network": t2 - t1, "write": t3 - t2, "total": t3 - t0}


def monai_run(ct: Path, metadata, net, output: Path, multiple: int = 32) -> tuple:
    """``(seconds per step, labels)`` of the MONAI user's pipeline."""
    import torch
    from monai.data import MetaTensor
    from monai.inferers import SliceInferer
    from monai.transforms import ScaleIntensityRange, Spacing, SpatialResample

    steps = {}
    t = time.perf_counter()
    image = sitk.ReadImage(str(ct))
    array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)  # x, y, z
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    data = MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None], affine=torch.as_tensor(affine))
    steps["read"], t = time.perf_counter() - t, time.perf_counter()
    row, column = metadata.in_plane_spacing
    resampled = Spacing(pixdim=(column, row, metadata.context_distance), mode="bilinear")(data)
    low, high = metadata.normalization.window
    volume = ScaleIntensityRange(low, high, 0.0, 1.0, clip=True)(resampled)[0]
    count, c = volume.shape[-1], metadata.context  # the 2.5D neighbours c model slices either side, ends repeated
    channels = [volume[..., np.clip(np.arange(count) + offset, 0, count - 1)] for offset in range(-c, c + 1)]
    stacked = torch.stack(channels).permute(0, 2, 1, 3).flip(1, 2)[None]  # rows along -y, columns along -x, as the model learned
    steps["Spacing + scale"], t = time.perf_counter() - t, time.perf_counter()
    size = tuple(int(-(-s // multiple) * multiple) for s in stacked.shape[2:4])
    inferer = SliceInferer(roi_size=size, sw_batch_size=4, spatial_dim=2, progress=False)
    with torch.inference_mode():
        probabilities = inferer(stacked, lambda x: torch.from_numpy(net(x.numpy())))
    steps["SliceInferer"], t = time.perf_counter() - t, time.perf_counter()
    probabilities = MetaTensor(probabilities[0].flip(1, 2).permute(0, 2, 1, 3).contiguous(), affine=resampled.affine)
    back = SpatialResample(mode="bilinear")(probabilities, dst_affine=data.affine, spatial_size=array.shape)
    values = np.array([0] + [c.value for c in metadata.classes], dtype=np.uint8)
    labels = values[back.argmax(0).numpy()].transpose(2, 1, 0)
    del back, probabilities
    steps["SpatialResample back + argmax"], t = time.perf_counter() - t, time.perf_counter()
    written = sitk.GetImageFromArray(np.ascontiguousarray(labels))
    written.CopyInformation(image)
    sitk.WriteImage(written, str(output), True)
    steps["write"] = time.perf_counter() - t
    steps["total"] = sum(steps.values())
    return steps, labels


PIPELINES = ("predict", "monai", "limit")


def compare(sizes, rounds: int, cache: Path, scratch: Path, checkpoint: Path = MODEL, encodings=("gzip",), pipelines=PIPELINES) -> None:
    from clinical_resolution import engine
    from clinical_speed import encoded, fixture
    from UNetSegmentationLib.model.header import read_metadata

    metadata = read_metadata(checkpoint)
    net, multiple = network(checkpoint)
    print(f"\nload average at start: {os.getloadavg()[0]:.1f} (2 cores); {rounds} rounds interleaved, medians; monai and limit in this process, predict a fresh process\n")
    print("| volume | input | pipeline | wall s | steps (median s) | voxels as predict |")
    print("| --- | --- | --- | --- | --- | --- |")
    for slices in sizes:
        for encoding in encodings:
            ct = encoded(fixture(slices, cache, checkpoint)[0], encoding)
            ours = scratch / f"predict-{slices}.nrrd"
            engine(REPO, "predict", "--checkpoint", str(checkpoint), str(ct), str(ours), "--overwrite", "--progress", "json", scratch=scratch)  # warm the file cache; labels for the limit
            labels = sitk.GetArrayFromImage(sitk.ReadImage(str(ours)))
            inputs = model_inputs(ct, metadata, multiple)
            results = {name: [] for name in pipelines}
            monai_labels = None
            for _ in range(rounds):
                if "predict" in results:
                    wall, done, _ = engine(REPO, "predict", "--checkpoint", str(checkpoint), str(ct), str(ours), "--overwrite", "--progress", "json", scratch=scratch)
                    # no peak RSS here: a child's ru_maxrss starts at this process's, which holds MONAI's probabilities (bench/clinical_speed.py measures it)
                    results["predict"].append({"total": wall, "engine total_s": done["timings"]["total_s"], "network_s": done["timings"]["network_s"]})
                if "monai" in results:
                    steps, monai_labels = monai_run(ct, metadata, net, scratch / f"monai-{slices}.nrrd", multiple)
                    results["monai"].append(steps)
                if "limit" in results:
                    results["limit"].append(limit(ct, labels, inputs, net, scratch / f"limit-{slices}.nrrd"))
            agreement = {"predict": 1.0, "monai": float((monai_labels == labels).mean()) if monai_labels is not None else 0.0, "limit": 1.0}
            for name, runs in results.items():
                keys = [k for k in runs[0] if k != "total"]
                text = ", ".join(f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in keys)
                print(f"| 512²×{slices} | {encoding} | {name} | {statistics.median(r['total'] for r in runs):.2f} | {text} | {100 * agreement[name]:.2f} % |")
            if "predict" in results and "limit" in results:
                total = statistics.median(r["engine total_s"] for r in results["predict"])
                alone = statistics.median(r["network"] for r in results["limit"])
                print(f"| 512²×{slices} | {encoding} | work around the network ÷ the network alone | | ({total:.2f} − {alone:.2f}) ÷ {alone:.2f} = **{(total - alone) / alone:.2f}** | |")


def _checkpoint(text: str) -> Path:
    """``--checkpoint``: a file, or ``bundled`` (the bundled model)."""
    from UNetSegmentationLib.model.bundled import checkpoint_path

    return Path(checkpoint_path(text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="300")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "unetseg-clinical-speed")
    parser.add_argument("--checkpoint", type=_checkpoint, default=MODEL, help="the model: a checkpoint file, or 'bundled' (default: the chest model of rounds 1-2, Testing/Data)")
    parser.add_argument("--encodings", default="gzip", help="comma-separated: gzip (the fixture as written), raw (uncompressed 16-bit, as the panel sends it); bench/clinical_speed.py's ENCODINGS")
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help="comma-separated, of " + ", ".join(PIPELINES) + " (the MONAI pipeline takes minutes per run at 600 slices)")
    args = parser.parse_args()
    from clinical_speed import ENCODINGS

    pipelines = tuple(p for p in args.pipelines.split(",") if p)
    if not pipelines or any(p not in PIPELINES for p in pipelines):
        parser.error(f"--pipelines: some of {', '.join(PIPELINES)}")
    encodings = tuple(e for e in args.encodings.split(",") if e)
    if not encodings or any(e not in ENCODINGS for e in encodings):
        parser.error(f"--encodings: some of {', '.join(ENCODINGS)}")
    with tempfile.TemporaryDirectory() as scratch:
        compare([int(s) for s in args.sizes.split(",")], args.rounds, args.cache, Path(scratch), args.checkpoint.resolve(), encodings, pipelines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

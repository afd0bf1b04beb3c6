"""Training step throughput (slices/s): ``unetseg train``'s step against a plain MONAI training loop on the
same network, batch and crop, interleaved in one process; prints a Markdown table of medians.

- **ours**: the trainer's own epoch of steps (``Trainer._train_epoch``: the 2.5D sampler with foreground oversampling and
  MONAI augmentation; on a GPU the next batch prepared on a thread and channels_last, on the CPU neither; bf16
  autocast where the CPU computes bf16 natively, the UNet++ deep-supervision loss).
- **plain MONAI**: what a MONAI user writes: a ``CacheDataset`` of normalised 2.5D slices
  (``ScaleIntensityRanged``), ``RandCropByPosNegLabeld`` + the same augmentations, a ``DataLoader``
  (``num_workers=0``: two cores), float32 NCHW, ``DiceCELoss`` on every head, AdamW.

Both train the bundled model's architecture (UNet++ 8…128, 3 input channels, 8 outputs) on the slicerio
CT at batch 8, crop 96. Rounds alternate ours / MONAI; each round times ``--steps`` steps after a warm-up.

``python bench/training_speed.py [--rounds 5] [--steps 10] [--threads 2]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import slicerio
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "UNetSegmentation"))

from UNetSegmentationLib.backends.device import cpu_has_native_bf16  # noqa: E402
from UNetSegmentationLib.networks.blocks import as_training_output  # noqa: E402
from UNetSegmentationLib.networks.registry import build_network  # noqa: E402
from UNetSegmentationLib.protocol.reporters import Reporter  # noqa: E402
from UNetSegmentationLib.training.cases import Case  # noqa: E402
from UNetSegmentationLib.training.checkpointing import RunState  # noqa: E402
from UNetSegmentationLib.training.config import TrainConfig  # noqa: E402
from UNetSegmentationLib.training.dataset import load_training_data  # noqa: E402
from UNetSegmentationLib.training.trainer import Trainer  # noqa: E402

CT = Path(slicerio.get_testdata_file("CTChest4.nrrd"))
SEG = Path(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
BATCH, CROP = 8, 96


def ours(output: Path, amp: bool, steps: int):
    """A function running one epoch of ``steps`` steps of our trainer (the setup made once, as a run makes it)."""
    config = TrainConfig(features=[8, 16, 32, 64, 128], batch_size=BATCH, crop=(CROP, CROP), lr=1e-3, device="cpu", amp=amp, epochs=1000, steps_per_epoch=steps)
    case = Case("chest", CT, SEG)
    trainer = Trainer(config, [case], [], output, reporter=Reporter())
    data = load_training_data(config, [case], [], None)
    setup = trainer._setup(data, None, torch.device("cpu"), time.perf_counter())
    state = RunState()
    return lambda: trainer._train_epoch(setup, state), setup


def plain_monai(setup, steps: int):
    """A function running ``steps`` steps of the plain MONAI loop on the same network architecture, batch and crop."""
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss
    from monai.transforms import Compose, RandAffined, RandCropByPosNegLabeld, RandScaleIntensityd, RandShiftIntensityd, ScaleIntensityRanged

    volume = setup.data.volumes[0]
    slices = np.asarray(volume.slices, dtype=np.float32)
    targets = np.asarray(volume.targets)
    items = []
    for s in range(slices.shape[0]):
        neighbours = np.clip([s - 1, s, s + 1], 0, slices.shape[0] - 1)
        items.append({"image": slices[neighbours], "label": targets[s][None].astype(np.float32)})
    transforms = Compose([
        ScaleIntensityRanged(keys="image", a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=True),
        RandCropByPosNegLabeld(keys=("image", "label"), label_key="label", spatial_size=(CROP, CROP), pos=1, neg=1, num_samples=1),
        RandAffined(keys=("image", "label"), prob=0.5, rotate_range=(np.deg2rad(15),), scale_range=(0.1, 0.1), mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ])
    dataset = CacheDataset(items, transforms, progress=False)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0, drop_last=True)
    metadata = setup.metadata
    model = build_network(metadata.architecture, metadata.kwargs).train()
    loss_function = DiceCELoss(softmax=True, to_onehot_y=True, include_background=False, batch=True, lambda_ce=0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    batches = iter(())

    def epoch() -> None:
        for _ in range(steps):
            step()

    def step() -> None:
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        heads = as_training_output(model(batch["image"])).heads
        loss = sum(loss_function(h, batch["label"]) for h in heads) / len(heads)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return epoch


def timed(epoch, steps: int) -> float:
    """Slices per second of one call of ``epoch`` (``steps`` steps)."""
    started = time.perf_counter()
    epoch()
    return steps * BATCH / (time.perf_counter() - started)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from monai.data.meta_obj import set_track_meta

    set_track_meta(False)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        ours_bf16, setup = ours(Path(folder) / "a.safetensors", True, args.steps)
        ours_fp32, _ = ours(Path(folder) / "b.safetensors", False, args.steps)
        runs = {"ours": ours_bf16, "ours, float32 (--no-amp)": ours_fp32, "plain MONAI loop (float32)": plain_monai(setup, args.steps)}
        rates = {name: [] for name in runs}
        for epoch in runs.values():
            timed(epoch, args.steps)  # warm-up
        for _ in range(args.rounds):
            for name, epoch in runs.items():
                rates[name].append(timed(epoch, args.steps))
        sampler = setup.sampler
        started = time.perf_counter()
        for _ in range(20):
            sampler.batch(BATCH)
        batch_ms = (time.perf_counter() - started) / 20 * 1000
    reference = statistics.median(rates["plain MONAI loop (float32)"])
    print(f"UNet++ 8-128 (bundled model's architecture), batch {BATCH}, crop {CROP}, {args.threads} threads, "
          f"bf16 native on this CPU: {cpu_has_native_bf16()}; medians of {args.rounds} interleaved rounds of {args.steps} steps\n")
    print("| loop | slices/s (median) | rounds | vs plain MONAI |\n|---|---:|---|---:|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} | {statistics.median(values) / reference:.2f}x |")
    print(f"\nour sampler prepares a batch of {BATCH} crops in {batch_ms:.1f} ms")


if __name__ == "__main__":
    main()

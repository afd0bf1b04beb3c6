"""Fine-tuning the bundled model on a small volume (issue 22, defect 2): the measurement behind
training/adapt.py's rules of thumb. Prints Markdown tables.

The volume is the slicerio CT's lumbar spine, resampled to 1.5 mm and cropped to 73×73×30 voxels
(``Testing/support.write_lumbar_crop``): 36×36 pixels at the bundled model's 3.05 mm, 30 slices.

1. **Crop side**: the fine-tuning defaults with the crop fitted to the slices (now 32: 36 rounded down
   to the network's multiple of 16; the first measurement's rule rounded up, to 48) and with
   ``--crop 48``, ``--crop 32`` and ``--crop 16``: the held-out Dice of the lumbar class and of all
   classes before and after, seconds per run (the crop column is the one asked for).
2. **Held-out blocks**: for volumes of 20-120 slices at the neighbours' reach of a 10 mm model on
   1.5 mm and 5 mm slices, what :func:`~UNetSegmentationLib.training.adapt.fit_hold_out` keeps
   (computed, no training): blocks, slices held out, slices left to train on.

Run from the repository root: ``python bench/small_volume_finetune.py [--quick]`` (``--quick``: table 2
only). Slow on a busy 2-core machine: each run is the default 100 steps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "UNetSegmentation"))
sys.path.insert(0, str(REPO / "Testing"))

from support import write_lumbar_crop  # noqa: E402
from UNetSegmentationLib.cli.main import main  # noqa: E402
from UNetSegmentationLib.model.header import read_metadata  # noqa: E402
from UNetSegmentationLib.training.adapt import fit_hold_out  # noqa: E402

LUMBAR = "lumbar vertebral column"


def fine_tune(folder: Path, image: Path, label: Path, name: str, *options: str) -> dict:
    """One default fine-tuning of the bundled model (hold-out 0.2, as the panel asks) with ``options``."""
    out = folder / f"{name}.safetensors"
    started = time.perf_counter()
    code = main(["train", "--init", "bundled", "--image", str(image), "--label", str(label), "--val-slices", "0.2",
                 "--progress", "none", "--overwrite", *options, str(out)])
    seconds = time.perf_counter() - started
    if code != 0:
        return {"name": name, "error": code, "seconds": seconds}
    training = read_metadata(out).training
    record, config = training["fine_tuning"], training["config"]
    before, after = record.get("validation_before") or {}, record.get("validation_after") or {}
    lumbar = lambda v: ((v.get("by_depth") or {}).get(f"L{v.get('main_depth')}") or {}).get("per_class", {}).get(LUMBAR)  # noqa: E731
    return {"name": name, "crop": config["crop"], "seconds": seconds, "dice_before": record.get("dice_before"), "dice_after": record.get("dice_after"),
            "lumbar_before": lumbar(before), "lumbar_after": lumbar(after)}


def crop_table(folder: Path) -> None:
    image, label = write_lumbar_crop(folder)
    rows = [fine_tune(folder, image, label, "default")] + [fine_tune(folder, image, label, f"crop{c}", "--crop", str(c)) for c in (48, 32, 16)]
    print("| run | crop | held-out Dice, all classes: base → tuned | lumbar: base → tuned | seconds |")
    print("|---|---|---|---|---|")
    number = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for row in rows:
        if "error" in row:
            print(f"| {row['name']} | failed ({row['error']}) | | | {row['seconds']:.0f} |")
            continue
        print(f"| {row['name']} | {row['crop'][0]}x{row['crop'][1]} | {number(row['dice_before'])} → {number(row['dice_after'])} | "
              f"{number(row['lumbar_before'])} → {number(row['lumbar_after'])} | {row['seconds']:.0f} |")


def blocks_table() -> None:
    print("| slices | slice spacing | gap | blocks kept (of 3) | held out | left to train on |")
    print("|---|---|---|---|---|---|")
    for spacing in (1.5, 5.0):
        gap = int(-(-10.0 // spacing))  # the reach of 1 neighbour 10 mm away, in slices (ceil)
        for count in (20, 30, 40, 60, 120):
            train, val, note = fit_hold_out(count, 0.2, 3, gap)
            kept = "none" if not val.size else ("1 at the end" if note and "end" in note else str(3 if note is None else note.split(": ")[-1].split(" ")[0]))
            print(f"| {count} | {spacing:g} mm | {gap} | {kept} | {val.size} | {train.size} |")


def main_(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the held-out block table (no training)")
    args = parser.parse_args(argv)
    blocks_table()
    if not args.quick:
        print()
        with tempfile.TemporaryDirectory() as folder:
            crop_table(Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main_(sys.argv[1:]))

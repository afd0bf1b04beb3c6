"""Fine-tuning on the slicerio chest CT, as a user would run it (issue 16's must-shows); prints Markdown tables.

1. **Corrections of another region**: a model trained only on the upper half of the slices is
   fine-tuned (``unetseg train --init``) on a few slices of the lower half — the ground truth stands in
   for a user's corrections — and both are scored (``unetseg evaluate``) on the remaining lower-half
   slices: per-class Dice before and after, the time the fine-tuning took, the commands.
2. **Labels of one class only**: the bundled model fine-tuned on a label map holding only one class
   (``--label-map 1:CLASS``). With the marginal loss (the default, ``--partial-classes auto``) the
   other classes keep their Dice (the marginal loss, and the base model teaching the split of the rest); ``--partial-classes none`` (every other class taught as background,
   what the issue reported) is shown beside it.
3. ``--sweep``: the fine-tuning defaults (learning rate, steps, frozen encoder, frozen BatchNorm
   statistics) measured on scenario 1; ``training/finetuning.py`` holds the ones chosen.

Run from the repository root: ``python bench/finetune_demo.py`` (``--quick``: a shorter base model;
``--sweep``: the defaults' measurement; ``--threads 2``). Every run is in this process and uses the
CLI's own parser, so the commands printed are what a user types.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import slicerio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "UNetSegmentation"))

from UNetSegmentationLib.cli.main import build_parser, main  # noqa: E402
from UNetSegmentationLib.model.bundled import bundled_model_path  # noqa: E402
from UNetSegmentationLib.model.header import read_metadata  # noqa: E402

CT = Path(slicerio.get_testdata_file("CTChest4.nrrd"))
SEG = Path(slicerio.get_testdata_file("Segmentation.seg.nrrd"))


def spec(slices: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` → ``"3-5,9"``."""
    runs: List[List[int]] = []
    for s in sorted(slices):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def halves() -> tuple:
    """(upper, lower) slice indices along k: upper = toward the head (LPS S grows with the index or not)."""
    image = sitk.ReadImage(str(CT))
    count = image.GetSize()[2]
    superior_up = image.GetDirection()[8] > 0  # k's S component
    order = list(range(count))
    first, second = order[: count // 2], order[count // 2:]
    return (second, first) if superior_up else (first, second)


def run(*argv) -> float:
    """``unetseg ARGV`` in this process; seconds taken (stops the script on a failure)."""
    started = time.perf_counter()
    code = main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"unetseg {' '.join(map(str, argv))} failed with {code}")
    return time.perf_counter() - started


def train_with(argv: Sequence[str], **overrides) -> float:
    """``unetseg train ARGV`` with config fields no flag sets (e.g. ``freeze_norm``) overridden; seconds."""
    from UNetSegmentationLib.cli.data_options import cases_from_options
    from UNetSegmentationLib.cli.train import train_config
    from UNetSegmentationLib.protocol.reporters import make_reporter
    from UNetSegmentationLib.training.trainer import Trainer

    args = build_parser().parse_args(["train", *map(str, argv)])
    config = dataclasses.replace(train_config(args), **overrides)
    cases, validation, description = cases_from_options(args, for_training=True)
    started = time.perf_counter()
    Trainer(config, cases, validation, Path(args.output), overwrite=True, reporter=make_reporter("none"), data_description=description).run()
    return time.perf_counter() - started


def dice(checkpoint: Path, slices: Sequence[int], folder: Path, depth: Optional[int] = None, label: Path = SEG) -> Dict[str, float]:
    """Per-class Dice of ``checkpoint`` on ``slices`` of the CT (``unetseg evaluate``, PyTorch float32), at ``depth``
    (default: the checkpoint's recommended depth, else its deepest)."""
    metadata = read_metadata(checkpoint)
    depth = depth or metadata.recommended_depth or 4  # L4: the deepest of the five-level UNet++ trained here
    out = folder / f"eval-{checkpoint.stem}"
    run("evaluate", "--checkpoint", checkpoint, "--image", CT, "--label", label, "--slices", spec(slices), "--depth", depth,
        "--output-dir", out, "--overwrite", "--progress", "none", "--device", "cpu", "--backend", "torch", "--precision", "fp32")
    rows = json.loads((out / "evaluation.json").read_text())["rows"]
    return {r["class"]: r["dice"] for r in rows if r["dice"] is not None and r["class"] not in ("mean", "all")}


def table(title: str, columns: Dict[str, Dict[str, float]]) -> str:
    """A Markdown table: one row per class, one column per model, and the mean."""
    classes = list(next(iter(columns.values())))
    lines = [f"**{title}**", "", "| class | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name in classes:
        lines.append(f"| {name} | " + " | ".join("—" if c.get(name) is None else f"{c[name]:.3f}" for c in columns.values()) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{np.nanmean([v for v in c.values() if v is not None]):.3f}**" for c in columns.values()) + " |")
    return "\n".join(lines)


# --- 1. corrections of another region --------------------------------------------------------------------


def corrections_demo(folder: Path, quick: bool, threads: int, reuse: Optional[Path] = None) -> tuple:
    upper, lower = halves()
    marked = [lower[i] for i in np.linspace(1, len(lower) - 2, 3).round().astype(int)]
    rest = [s for s in lower if s not in marked]
    base = folder / "upper-half.safetensors"
    epochs = "8" if quick else "20"
    base_cmd = ["train", "--image", CT, "--label", SEG, "--train-slices", spec(upper), "--features", "8,16,32,64,128", "--epochs", epochs,
                "--steps-per-epoch", "30", "--batch-size", "8", "--crop", "96", "--lr", "3e-3", "--seed", "0", "--threads", threads,
                "--progress", "none", "--overwrite", base]
    base_seconds = float("nan")
    if reuse is not None:  # a base made by this command before (--base): its training is not repeated
        base.write_bytes(Path(reuse).read_bytes())
    else:
        base_seconds = run(*base_cmd)
    tuned = folder / "fine-tuned.safetensors"
    tune_cmd = ["train", "--init", base, "--image", CT, "--label", SEG, "--train-slices", spec(marked), "--threads", threads,
                "--progress", "none", "--overwrite", tuned]
    tune_seconds = run(*tune_cmd)
    before, after = dice(base, rest, folder, depth=4), dice(tuned, rest, folder, depth=4)
    text = table(f"Dice on the {len(rest)} lower-half slices not marked ({spec(rest)}), depth L4", {"trained on the upper half": before, f"fine-tuned on slices {spec(marked)}": after})
    text += (f"\n\nBase: {base_seconds:.0f} s on {threads} thread(s) for the upper half ({spec(upper)}). Fine-tuning: **{tune_seconds:.0f} s** "
             f"(defaults; {len(marked)} marked slices).\n\n```bash\nunetseg {' '.join(map(_shown, base_cmd))}\nunetseg {' '.join(map(_shown, tune_cmd))}\n```")
    return text, base, marked, rest


def _shown(value) -> str:
    text = str(value)
    if text == str(CT):
        return '"$CT"'
    if text == str(SEG):
        return '"$SEG"'
    return Path(text).name if "/" in text else text


# --- 2. labels of one class only ---------------------------------------------------------------------------


def one_class_label(folder: Path, name: str) -> Path:
    """A label map holding only segment ``name`` of the ground truth (value 1), on the CT's grid."""
    from UNetSegmentationLib.io.labels import read_label

    image = sitk.ReadImage(str(CT))
    label = read_label(SEG, image)
    value = next(s.value for s in label.segments if s.name == name)
    out = sitk.GetImageFromArray((label.array == value).astype(np.uint8))
    out.CopyInformation(image)
    path = folder / f"only-{name.replace(' ', '-')}.nrrd"
    sitk.WriteImage(out, str(path))
    return path


def one_class_demo(folder: Path, name: str, threads: int) -> str:
    bundled = bundled_model_path()
    held_out = read_metadata(bundled).training["data"]["held_out_slices"][0]["slices"]
    everything = list(range(sitk.ReadImage(str(CT)).GetSize()[2]))
    label = one_class_label(folder, name)
    columns: Dict[str, Dict[str, float]] = {"bundled (base)": dice(bundled, everything, folder)}
    commands, seconds = [], {}
    for partial in ("auto", "none"):
        out = folder / f"only-{name.replace(' ', '-')}-{partial}.safetensors"
        command = ["train", "--init", bundled, "--image", CT, "--label", label, "--label-map", f"1:{name}", "--partial-classes", partial,
                   "--threads", threads, "--progress", "none", "--overwrite", out]
        seconds[partial] = run(*command)
        commands.append(command)
        columns[f"fine-tuned, --partial-classes {partial}"] = dice(out, everything, folder)
    base = columns["bundled (base)"]
    kept = columns["fine-tuned, --partial-classes auto"]
    worst = max(abs(kept[c] - base[c]) for c in base if c != name)
    text = table(f"Dice on all {len(everything)} slices after fine-tuning the bundled model on '{name}' labels only (recommended depth)", columns)
    text += (f"\n\nLargest change of another class with --partial-classes auto (marginal loss + distillation from the base): **{worst:.3f}** (limit 0.05). "
             f"Fine-tuning took {seconds['auto']:.0f} s (auto) and {seconds['none']:.0f} s (none). The bundled model's held-out slices are {spec(held_out)}.\n\n"
             "```bash\n" + "\n".join("unetseg " + " ".join(map(_shown, c)) for c in commands) + "\n```")
    return text


# --- 3. the defaults' measurement ----------------------------------------------------------------------------


def sweep(folder: Path, base: Path, marked: Sequence[int], rest: Sequence[int], threads: int) -> str:
    lines = ["| lr | steps | frozen encoder | frozen BN statistics | mean Dice (rest of lower half) | seconds |", "|---:|---:|---|---|---:|---:|"]
    settings = [(lr, 100, False, True) for lr in (1e-4, 3e-4, 1e-3)] + [(3e-4, 100, True, True), (3e-4, 100, False, False), (3e-4, 200, False, True)]
    for lr, steps, encoder, norm in settings:
        out = folder / "sweep.safetensors"
        argv = ["--init", base, "--image", CT, "--label", SEG, "--train-slices", spec(marked), "--lr", lr, "--epochs", 4,
                "--steps-per-epoch", steps // 4, "--threads", threads, "--progress", "none", out] + (["--freeze-encoder"] if encoder else [])
        seconds = train_with(argv, freeze_norm=norm)
        mean = float(np.nanmean(list(dice(out, rest, folder, depth=4).values())))
        lines.append(f"| {lr:g} | {steps} | {'yes' if encoder else 'no'} | {'yes' if norm else 'no'} | {mean:.3f} | {seconds:.0f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main_demo(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter base model for scenario 1")
    parser.add_argument("--sweep", action="store_true", help="measure the fine-tuning defaults")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--base", type=Path, help="scenario 1: reuse this upper-half model (made by the command printed) instead of training it")
    parser.add_argument("--only", choices=("corrections", "one-class"), help="run one scenario")
    parser.add_argument("--classes", default="left lung,thoracic vertebral column", help="scenario 2: the classes to label alone, one run each")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        if args.only in (None, "corrections") or args.sweep:
            text, base, marked, rest = corrections_demo(folder, args.quick, args.threads, args.base)
            print(text + "\n", flush=True)
            if args.sweep:
                print(sweep(folder, base, marked, rest, args.threads) + "\n", flush=True)
        if args.only in (None, "one-class"):
            for name in args.classes.split(","):
                print(one_class_demo(folder, name.strip(), args.threads) + "\n", flush=True)


if __name__ == "__main__":
    main_demo()

"""Trains the bundled many-organ CT model (issue 24): leave one patient out to choose the augmentation,
then the shipped model on every volume.

    python Resources/Tools/prepare_training_data.py --output training-data
    python Resources/Tools/train_bundled_model.py --data training-data --runs runs/many-organ --jobs 2
    python Resources/Tools/train_bundled_model.py --data training-data --runs runs/many-organ --final AUGMENTATION

Stage 1 (no ``--final``): for each augmentation candidate of :data:`AUGMENTATIONS` and each patient of
the datalist's ``leave_one_patient_out`` list, ``unetseg train`` on the OTHER patients' volumes only.
The held-out patient takes no part in the run at all — neither in training nor in choosing the best
epoch: the run keeps its best epoch by Dice on held-out slices of its own training volumes
(``--val-slices``), so scoring the fold model on the held-out patient afterwards
(``bench/lopo_table.py``) is a measurement on a patient it has never seen. Fold models land in
``RUNS/AUGMENTATION/foldK.safetensors`` (fold K = trained without the datalist's fold K).

Stage 2 (``--final AUGMENTATION``): the same command on every volume, written to ``RUNS/final.safetensors``;
``bench/lopo_table.py`` and the calibration tool then score it and the fold models, and the model is
copied into ``UNetSegmentation/Resources/Models/`` by hand with its card.

Every run is one ``unetseg train`` command line, printed before it starts (so it can be rerun alone);
``--dry-run`` only prints them. ``--jobs N`` runs N at once, each with one torch thread (a 2-core machine:
``--jobs 2``). A run whose checkpoint exists is skipped unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Sequence

#: the network and the schedule every run shares: UNet++ (depth pruning stays), 8..128 features like
#: today's model (the speed issue's whole-CT budget holds at this size), 3 mm in-plane (the data's own
#: spacing, within 2 % for three of the four volumes), 2.5D neighbours 5 mm away (between the 3 mm
#: abdomen and the 10 mm chest; predict's thin-slice path then runs a 340 mm scan in 68 network slices)
COMMON = [
    "--arch", "unetplusplus", "--features", "8,16,32,64,128", "--context", "1", "--norm", "ct:-1000,1000",
    "--spacing", "3.0", "--slice-distance", "5", "--epochs", "36", "--steps-per-epoch", "40", "--batch-size", "8",
    "--crop", "96", "--lr", "3e-3", "--foreground", "0.7", "--seed", "0", "--threads", "1", "--val-slices", "0.15",
    "--val-blocks", "2", "--progress", "none",
]
#: the augmentation candidates issue 24 names, compared leave-one-patient-out
AUGMENTATIONS: Dict[str, List[str]] = {
    # today's default: in-plane rotation and scale, intensity shift and scale
    "geometric": ["--rotate", "15", "--scale", "0.1", "--intensity", "0.1"],
    # + contrast, simulated resolution, slice thickness and noise, crops that cut the anatomy, wider scale
    "acquisition": ["--rotate", "15", "--scale", "0.2", "--intensity", "0.1", "--contrast", "0.3", "--low-resolution", "0.4",
                    "--thickness", "0.5", "--noise", "0.03", "--cut", "0.2"],
}


#: the slicerio CT's slices that the chest model of rounds 1-2 held out (its card: three blocks at the lumbar,
#: thoracic and cervical levels). Every run holds out the same ones, so the shipped model is scored on the
#: very slices the old model was (issue 24: "at least as well as today's model on its held-out slices").
HELD_OUT_SLICES = {"ctchest4": "4-6,16-17,27-28"}


def training_datalist(datalist: dict, cases: Sequence[str]) -> dict:
    """The datalist restricted to ``cases`` (the held-out patient's volumes are not even listed)."""
    wanted = set(cases)
    kept = [dict(item) for item in datalist["training"] if item["name"] in wanted]
    for item in kept:
        item.pop("fold", None)
        if item["name"] in HELD_OUT_SLICES:
            item["held_out_slices"] = HELD_OUT_SLICES[item["name"]]
    return {key: value for key, value in datalist.items() if key not in ("training", "leave_one_patient_out")} | {"training": kept}


def command(data: Path, datalist: Path, augmentation: str, output: Path, overwrite: bool) -> List[str]:
    """The ``unetseg train`` command line of one run."""
    return [sys.executable, "-m", "UNetSegmentationLib", "train", "--datalist", str(datalist), "--data-root", str(data),
            "--classes", str(data / "classes.json"), *COMMON, *AUGMENTATIONS[augmentation],
            *(["--overwrite"] if overwrite else []), str(output)]


def planned_runs(data: Path, runs: Path, final: str | None, overwrite: bool, augmentations: Sequence[str] = tuple(AUGMENTATIONS),
                 folds: Sequence[int] | None = None) -> List[List[str]]:
    """Every run's command line; writes the per-run datalists into ``runs``."""
    datalist = json.loads((data / "datalist.json").read_text(encoding="utf-8"))
    planned = []
    if final:
        everything = [item["name"] for item in datalist["training"]]
        path = runs / "final.datalist.json"
        path.write_text(json.dumps(training_datalist(datalist, everything), indent=1), encoding="utf-8")
        return [command(data, path, final, runs / "final.safetensors", overwrite)]
    for augmentation in augmentations:
        (runs / augmentation).mkdir(parents=True, exist_ok=True)
        for fold in datalist["leave_one_patient_out"]:
            if folds is not None and fold["fold"] not in folds:
                continue
            path = runs / augmentation / f"fold{fold['fold']}.datalist.json"
            path.write_text(json.dumps(training_datalist(datalist, fold["training"]), indent=1), encoding="utf-8")
            planned.append(command(data, path, augmentation, runs / augmentation / f"fold{fold['fold']}.safetensors", overwrite))
    return planned


def run(arguments: List[str], overwrite: bool) -> str:
    """Run one training (skipped when its checkpoint exists); returns a line for the summary."""
    output = Path(arguments[-1])
    if output.exists() and not overwrite:
        return f"skipped (exists): {output}"
    started = time.monotonic()
    log = output.with_suffix(".log")
    with open(log, "w", encoding="utf-8") as stream:
        code = subprocess.call(arguments, stdout=stream, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2] / "UNetSegmentation")
    return f"{'done' if code == 0 else f'FAILED ({code}, see {log})'} in {time.monotonic() - started:.0f} s: {output}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("training-data"), help="prepare_training_data.py's output folder")
    parser.add_argument("--runs", type=Path, default=Path("runs/many-organ"), help="folder of the runs' checkpoints, logs and datalists")
    parser.add_argument("--final", choices=sorted(AUGMENTATIONS), help="train the shipped model on every volume with this augmentation")
    parser.add_argument("--augmentations", default=",".join(AUGMENTATIONS), help="stage 1: the candidates to run, comma-separated (default: all)")
    parser.add_argument("--folds", help="stage 1: the folds to run, comma-separated (default: every patient)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one torch thread each)")
    parser.add_argument("--dry-run", action="store_true", help="print the command lines only")
    parser.add_argument("--overwrite", action="store_true", help="train again where a checkpoint exists")
    args = parser.parse_args(argv)
    data, runs = args.data.resolve(), args.runs.resolve()
    if not (data / "datalist.json").is_file():
        parser.error(f"{data} holds no datalist.json: run Resources/Tools/prepare_training_data.py --output {args.data} first")
    runs.mkdir(parents=True, exist_ok=True)
    augmentations = [name.strip() for name in args.augmentations.split(",") if name.strip()]
    unknown = [name for name in augmentations if name not in AUGMENTATIONS]
    if unknown:
        parser.error(f"--augmentations: unknown {', '.join(unknown)} (known: {', '.join(AUGMENTATIONS)})")
    folds = None if args.folds is None else [int(fold) for fold in args.folds.split(",")]
    planned = planned_runs(data, runs, args.final, args.overwrite, augmentations, folds)
    for arguments in planned:
        print(shlex.join(arguments), flush=True)
    if args.dry_run:
        return 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for line in pool.map(lambda arguments: run(arguments, args.overwrite), planned):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

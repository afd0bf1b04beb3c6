"""The leave-one-patient-out table of the bundled model (issue 24): per class and held-out patient, the new
model's Dice against today's bundled model's, both from ``unetseg evaluate``.

For every fold K of the datalist (one patient each, ``Resources/Tools/prepare_training_data.py``), the fold
model trained without fold K (``--fold-models PATTERN`` with ``{fold}``) is evaluated on fold K's volumes
(``unetseg evaluate --datalist D --fold K``: only the classes each case labels are scored), and so is
the old model (``--old``, default ``bundled``) on the same volumes, its classes matched to the datalist's
label values by name (``--label-map``; other values read as background). A cell is the mean Dice over
the patient's volumes; ``n/a`` where the class is not labelled in that patient, absent from its labels,
or not a class of the model; ``new < old`` marks a class where the old model did better.

``--final CKPT`` also evaluates the model trained on every volume on every volume (its training data:
agreement, not generalisation), and with ``--slicerio`` both models on the held-out slices of the slicerio
CT that the old model recorded (the "at least as well as today's model" check, mean Dice of the shared classes).

    python bench/lopo_table.py --datalist training-data/datalist.json --fold-models '/tmp/lopo/CONFIG/fold{fold}.safetensors' \\
        [--old bundled] [--final /tmp/lopo/final.safetensors] [--slicerio] [--depth L] [--threads 1] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "UNetSegmentation"))
sys.path.insert(0, str(ROOT / "bench"))

from review_ranking import unetseg  # noqa: E402


def label_map_for(datalist: Path, checkpoint: str) -> Optional[str]:
    """``VALUE:class`` for every datalist label value whose class name the checkpoint also has (None: the
    checkpoint's values already are the datalist's, by name and value)."""
    from UNetSegmentationLib.model.bundled import checkpoint_path
    from UNetSegmentationLib.model.header import read_metadata

    names = {int(value): name for value, name in json.loads(datalist.read_text()).get("labels", {}).items() if int(value) > 0}
    classes = {c.name.lower(): c for c in read_metadata(checkpoint_path(checkpoint)).classes}
    if all(name.lower() in classes and classes[name.lower()].value == value for value, name in names.items()):
        return None
    return ",".join(f"{value}:{classes[name.lower()].name}" for value, name in sorted(names.items()) if name.lower() in classes)


def evaluate(checkpoint: str, datalist: Path, folder: Path, extra: List[str], threads: int, depth: Optional[str]) -> List[dict]:
    """``unetseg evaluate`` of ``checkpoint``; its rows (one per volume and scored class)."""
    label_map = label_map_for(datalist, checkpoint)
    mapping = ["--label-map", label_map, "--other-labels", "background"] if label_map else []
    unetseg("evaluate", "--checkpoint", checkpoint, "--datalist", datalist, *extra, *mapping, "--depth", depth or _depth(checkpoint),
            "--threads", threads, "--output-dir", folder, "--overwrite")
    return json.loads((folder / "evaluation.json").read_text())["rows"]


def _depth(checkpoint: str) -> str:
    """The checkpoint's recommended depth (what predict runs), or the whole network."""
    from UNetSegmentationLib.model.bundled import checkpoint_path
    from UNetSegmentationLib.model.header import read_metadata

    recommended = read_metadata(checkpoint_path(checkpoint)).recommended_depth
    return str(recommended) if recommended else "all"


def per_class(rows: List[dict]) -> Dict[str, Optional[float]]:
    """Class → mean Dice over the volumes where it was scored and present (None: nowhere)."""
    values: Dict[str, list] = {}
    for row in rows:
        values.setdefault(row["class"], [])
        if row["dice"] is not None:
            values[row["class"]].append(row["dice"])
    return {name: (float(np.mean(v)) if v else None) for name, v in values.items()}


def fold_numbers(datalist: Path) -> List[int]:
    return sorted({int(item["fold"]) for item in json.loads(datalist.read_text())["training"] if "fold" in item})


def _cell(new: Optional[float], old: Optional[float]) -> str:
    text = "n/a" if new is None else f"{new:.3f}"
    if old is not None or new is not None:
        text += " / " + ("n/a" if old is None else f"{old:.3f}")
    return text + (" ✗" if new is not None and old is not None and new < old else "")


def lopo_table(classes: List[str], results: Dict[int, dict], patients: Dict[int, str]) -> str:
    folds = sorted(results)
    lines = ["| class | " + " | ".join(f"{patients[k]} (fold {k}): new / old" for k in folds) + " |", "|---|" + "---:|" * len(folds)]
    for name in classes:
        lines.append(f"| {name} | " + " | ".join(_cell(results[k]["new"].get(name), results[k]["old"].get(name)) for k in folds) + " |")
    cells = []
    for k in folds:
        shared = [c for c in classes if results[k]["new"].get(c) is not None and results[k]["old"].get(c) is not None]
        cells.append(f"{np.mean([results[k]['new'][c] for c in shared]):.3f} / {np.mean([results[k]['old'][c] for c in shared]):.3f} ({len(shared)})" if shared else "n/a")
    lines.append("| mean (classes both have) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\n✗: the old model did better on that class. Dice: agreement with the reference labels (TotalSegmentator's outputs for the "
                               "TS volumes). Today's bundled model was trained on the slicerio CT (all but 7 of its slices), so its figures on that patient "
                               "are on its training data; --slicerio compares both on those 7 slices.\n")


def volume_table(rows: List[dict], classes: List[str]) -> str:
    volumes = list(dict.fromkeys(r["volume"] for r in rows))
    lines = ["| class | " + " | ".join(volumes) + " |", "|---|" + "---:|" * len(volumes)]
    for name in classes:
        cells = []
        for volume in volumes:
            match = [r for r in rows if r["volume"] == volume and r["class"] == name]
            cells.append("n/a" if not match or match[0]["dice"] is None else f"{match[0]['dice']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def slicerio_check(final: str, old: str, threads: int, depth: Optional[str], folder: Path) -> str:
    """Both models on the slicerio CT's slices the old model held out in training: mean Dice of the shared classes."""
    import slicerio

    from UNetSegmentationLib.evaluation.evaluate import held_out_slices_of
    from UNetSegmentationLib.model.bundled import checkpoint_path
    from UNetSegmentationLib.model.header import read_metadata

    ct, segmentation = Path(slicerio.get_testdata_file("CTChest4.nrrd")), Path(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
    slices = ",".join(str(s) for s in held_out_slices_of(read_metadata(checkpoint_path(old)), ct))
    results = {}
    for name, checkpoint in (("new", final), ("old", old)):
        classes = {c.name for c in read_metadata(checkpoint_path(checkpoint)).classes}
        unetseg("evaluate", "--checkpoint", checkpoint, "--image", ct, "--label", segmentation, "--slices", slices, "--other-labels", "background",
                "--depth", depth or _depth(checkpoint), "--threads", threads, "--output-dir", folder / name, "--overwrite")
        results[name] = per_class(json.loads((folder / name / "evaluation.json").read_text())["rows"])
        results[name] = {c: v for c, v in results[name].items() if c in classes}
    shared = [c for c in results["new"] if results["new"][c] is not None and results["old"].get(c) is not None]
    lines = [f"slicerio CT, the old model's held-out slices ({slices}): mean Dice of the {len(shared)} shared classes "
             f"new {np.mean([results['new'][c] for c in shared]):.3f}, old {np.mean([results['old'][c] for c in shared]):.3f}"]
    lines += [f"- {c}: new {results['new'][c]:.3f}, old {results['old'][c]:.3f}" for c in shared]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", type=Path, required=True)
    parser.add_argument("--fold-models", required=True, help="the fold models' path with {fold} for the fold number")
    parser.add_argument("--old", default="bundled", help="the model to compare with (default: today's bundled model)")
    parser.add_argument("--final", help="the model trained on every volume: evaluated on every volume")
    parser.add_argument("--slicerio", action="store_true", help="with --final: both models on the old model's held-out slices of the slicerio CT")
    parser.add_argument("--folds", help="only these folds, e.g. 0,1 (default: every fold)")
    parser.add_argument("--depth", help="depth for every model (default: each one's recommended depth)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every row here")
    parser.add_argument("--benchmarks", type=Path, help="also write the tables into this Markdown file (BENCHMARKS.md) between its lopo-table markers")
    args = parser.parse_args()
    datalist = args.datalist.resolve()
    spec = json.loads(datalist.read_text())
    classes = [name for value, name in sorted(spec["labels"].items(), key=lambda item: int(item[0])) if int(value) > 0]
    folds = fold_numbers(datalist)
    patients = {k: ", ".join(sorted({str(e.get("patient", e.get("name"))) for e in spec["training"] if e.get("fold") == k})) for k in folds}
    results: Dict[int, dict] = {}
    everything: Dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="lopo-table-") as temporary:
        folder = Path(temporary)
        for fold in folds:
            if args.folds and str(fold) not in args.folds.split(","):
                continue
            model = args.fold_models.format(fold=fold)
            new = evaluate(model, datalist, folder / f"new{fold}", ["--fold", str(fold)], args.threads, args.depth)
            old = evaluate(args.old, datalist, folder / f"old{fold}", ["--fold", str(fold)], args.threads, args.depth)
            results[fold] = {"new": per_class(new), "old": per_class(old)}
            everything[f"fold{fold}"], everything[f"old{fold}"] = new, old
        text = "### Leave one patient out: Dice per class (new fold model / today's bundled model)\n\n" + lopo_table(classes, results, patients)
        if args.final:
            rows = evaluate(args.final, datalist, folder / "final", ["--section", "training"], args.threads, args.depth)
            everything["final"] = rows
            text += "\n### The model trained on every volume, on every volume (its training data)\n\n" + volume_table(rows, classes)
            if args.slicerio:
                text += "\n" + slicerio_check(args.final, args.old, args.threads, args.depth, folder / "slicerio")
    print(text, end="")
    if args.benchmarks:
        from marked_section import write_marked_section

        command = "python bench/lopo_table.py " + " ".join(sys.argv[1:])
        write_marked_section(args.benchmarks, "<!-- lopo-table:start -->", "<!-- lopo-table:end -->", f"{text}\n`{command}`\n")
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

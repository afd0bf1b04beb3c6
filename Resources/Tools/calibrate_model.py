"""Fit a model's calibration temperature leave one patient out, and write it into a copy of the checkpoint.

Given the datalist of ``Resources/Tools/prepare_training_data.py`` and the fold models of a
leave-one-patient-out training (fold K trained with ``unetseg train --fold K``, so without the cases
whose ``fold`` is K), every fold model segments its held-out patient's volumes through the engine's
own path (``predict``'s plan, predictor, depth, layout and body crop:
:func:`UNetSegmentationLib.evaluation.calibration.record_held_out`), and one temperature is fitted per
fold by minimising the negative log-likelihood over the classes each case labels
(:func:`~UNetSegmentationLib.evaluation.calibration.marginal_nll`). Printed per fold: its own fit, the
fit on the other folds (the one an honest after-calibration figure for that patient uses) and the
calibration error (15 bins, over the known voxels inside the body) before and after the latter.

The model shipped (``--model``, trained on every fold) gets the temperature fitted on all held-out
data, written through the engine's checkpoint writer (validated metadata, atomic, the output gate:
never over an existing file without ``--overwrite``, never over the model read or a fold model); its
weights are those of ``--model``, byte for byte. Why a tool and not an ``unetseg`` command: it needs a
leave-one-patient-out training's fold models, which only whoever trains a model to ship has.

    python Resources/Tools/calibrate_model.py --datalist training-data/datalist.json \\
        --fold-models '/tmp/lopo/CONFIG/fold{fold}.safetensors' \\
        [--model /tmp/lopo/final.safetensors --output calibrated.safetensors [--overwrite]] \\
        [--depth L] [--threads N] [--report fit.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "UNetSegmentation"))

from UNetSegmentationLib.errors import UserError  # noqa: E402


def fold_cases(datalist: Path, data_root=None) -> Dict[int, list]:
    """The datalist's training cases by ``fold`` (each fold one patient: the split ``train --fold`` makes)."""
    from UNetSegmentationLib.training.cases import cases_from_datalist, split_fold

    cases = cases_from_datalist(datalist, "training", data_root)
    folds = sorted({c.fold for c in cases if c.fold is not None})
    return {fold: split_fold(cases, fold, f"datalist {datalist}")[1] for fold in folds}


def held_out_runs(datalist: Path, pattern: str, depth, threads, data_root=None, folds=None) -> Dict[int, Tuple[object, list]]:
    """fold → (fold model, its recorded held-out volumes), for ``folds`` (default: every fold of the datalist)."""
    from UNetSegmentationLib.backends.plan import ExecutionRequest
    from UNetSegmentationLib.cli.evaluate import labelled_volumes
    from UNetSegmentationLib.evaluation.calibration import record_held_out
    from UNetSegmentationLib.model.checkpoint import load_checkpoint

    runs = {}
    for fold, cases in fold_cases(datalist, data_root).items():
        if folds is not None and fold not in folds:
            continue
        path = Path(pattern.format(fold=fold))
        if not path.is_file():
            raise UserError(f"fold {fold}: no fold model {path} (--fold-models {pattern!r})")
        checkpoint = load_checkpoint(path)
        volumes = labelled_volumes(cases, checkpoint.metadata.classes, "error")
        runs[fold] = (checkpoint, record_held_out(checkpoint, volumes, depth, ExecutionRequest(threads=threads)))
    return runs


def temperature_after(own: float, other_folds: float) -> float:
    """The temperature a fold's after-calibration figures use: the one fitted on the other folds (NaN with one
    fold only: nothing else to fit on, so the checkpoint's ``own``)."""
    return other_folds if other_folds == other_folds else own


def fit(runs: Dict[int, Tuple[object, list]]) -> Tuple[object, List[dict]]:
    """The fold temperatures and one row per fold: temperatures, NLL and ECE before and after."""
    from UNetSegmentationLib.evaluation.calibration import FitSample, expected_calibration_error, fit_sample, lopo_temperatures, marginal_nll

    samples = {fold: FitSample.join([fit_sample(volume) for volume in recorded]) for fold, (_, recorded) in runs.items()}
    temperatures = lopo_temperatures(samples)
    rows = []
    for fold, (checkpoint, recorded) in runs.items():
        own_t, lopo_t = checkpoint.metadata.temperature, temperatures.held_out[fold]
        after_t = temperature_after(own_t, lopo_t)
        rows.append({
            "fold": fold, "patient": ", ".join(v.name for v in recorded), "checkpoint": str(checkpoint.path),
            "temperature_own_fit": temperatures.own[fold], "temperature_other_folds": lopo_t,
            "nll_before": marginal_nll(samples[fold], own_t), "nll_after": marginal_nll(samples[fold], after_t),
            "ece_before": expected_calibration_error(recorded)[0], "ece_after": expected_calibration_error(recorded, after_t / own_t)[0],
        })
    return temperatures, rows


def table(rows: List[dict], shipped: float) -> str:
    lines = ["| fold | held-out volumes | T (own fit) | T (other folds) | NLL before | NLL after | ECE before | ECE after |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['fold']} | {r['patient']} | {r['temperature_own_fit']:.3f} | {r['temperature_other_folds']:.3f} | "
                     f"{r['nll_before']:.4f} | {r['nll_after']:.4f} | {r['ece_before']:.4f} | {r['ece_after']:.4f} |")
    return "\n".join(lines) + f"\n\nshipped temperature (all held-out data): {shipped:.4f}\n"


def write_calibrated(model: Path, output: Path, temperature: float, overwrite: bool, protected: List[Path]) -> Path:
    """``model`` with ``temperature`` in its metadata, through the engine's output gate and checkpoint writer."""
    import dataclasses

    from UNetSegmentationLib.io.output_gate import check_output
    from UNetSegmentationLib.model.checkpoint import load_checkpoint, save_checkpoint

    check_output(output, what="--output", overwrite=overwrite, protected=[model, *protected])
    checkpoint = load_checkpoint(model)
    metadata = dataclasses.replace(checkpoint.metadata, temperature=round(temperature, 4))
    return save_checkpoint(output, checkpoint.state_dict, metadata, overwrite=overwrite)


def parse_folds(text):
    """``--folds 0,1`` → {0, 1}; None: every fold."""
    if not text:
        return None
    try:
        return {int(part) for part in text.split(",")}
    except ValueError:
        raise UserError(f"--folds must be fold numbers separated by commas, got {text!r}") from None


def check_outputs(args: argparse.Namespace) -> None:
    """The output gate for ``--output`` and ``--report``: never over the models read, an existing file only with ``--overwrite``."""
    from UNetSegmentationLib.io.output_gate import check_output

    protected = [p for p in (args.model, args.datalist) if p is not None]
    protected += sorted(Path(p) for p in glob.glob(args.fold_models.replace("{fold}", "*")))  # {fold} may stand in a folder's name too
    for path, what in ((args.output, "--output"), (args.report, "--report")):
        if path is not None:
            check_output(path, what=what, overwrite=args.overwrite, protected=protected)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, help="folder the datalist's relative paths start from (default: its folder)")
    parser.add_argument("--fold-models", required=True, help="the fold models' path with {fold} for the fold number")
    parser.add_argument("--model", type=Path, help="the model to ship (trained on every fold): gets the temperature fitted on all held-out data")
    parser.add_argument("--output", type=Path, help="where the calibrated copy of --model is written")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--folds", help="only these folds, e.g. 0,1 (default: every fold of the datalist)")
    parser.add_argument("--depth", help="UNet++ depth to run (default: each checkpoint's recommended depth)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", type=Path, help="also write the fit as JSON here")
    args = parser.parse_args(argv)
    try:
        from UNetSegmentationLib.model.depth import parse_depth

        if (args.model is None) != (args.output is None):
            raise UserError("--model and --output go together")
        if "{fold}" not in args.fold_models:
            raise UserError(f"--fold-models must hold {{fold}} where the fold number goes, got {args.fold_models!r}")
        check_outputs(args)  # before any work
        runs = held_out_runs(args.datalist, args.fold_models, parse_depth(args.depth) if args.depth else None, args.threads, args.data_root, parse_folds(args.folds))
        temperatures, rows = fit(runs)
        print(table(rows, temperatures.shipped), end="")
        if args.report:
            from UNetSegmentationLib.io.outputs import atomic_output

            with atomic_output([args.report], overwrite=args.overwrite) as (temporary,):
                temporary.write_text(json.dumps({"folds": rows, "shipped_temperature": temperatures.shipped}, indent=2))
        if args.model is not None:
            written = write_calibrated(args.model, args.output, temperatures.shipped, args.overwrite, [c.path for c, _ in runs.values()])
            print(f"wrote {written} (temperature {temperatures.shipped:.4f})")
    except UserError as error:
        print(f"calibrate_model: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

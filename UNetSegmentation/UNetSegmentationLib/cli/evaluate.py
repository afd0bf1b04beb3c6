"""``unetseg evaluate``: segment labelled volumes and score them (every UNet++ depth)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from UNetSegmentationLib.cli.data_options import add_data_options, cases_from_options
from UNetSegmentationLib.errors import UserError


def command_evaluate(args: argparse.Namespace) -> int:
    from UNetSegmentationLib.evaluation.evaluate import (
        OUTPUT_FILES, EvaluationOptions, evaluate_cases, format_table, parse_slices, plot_accuracy_vs_speed, write_csv,
    )
    from UNetSegmentationLib.model.depth import parse_depth
    from UNetSegmentationLib.io.outputs import atomic_output, check_output_path
    from UNetSegmentationLib.inference.slicing import parse_axis

    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output-dir {output_dir} is a file, not a folder")
    depths = None
    if args.depth and args.depth != "all":
        depths = [parse_depth(d.strip()) for d in args.depth.split(",")]
    options = EvaluationOptions(depths=depths, device=args.device, batch_size=args.batch_size, axis=parse_axis(args.axis),
                                slices=parse_slices(args.slices), other_labels=args.other_labels)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}")
    cases, _, _ = cases_from_options(args, for_training=False)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {key: output_dir / name for key, name in OUTPUT_FILES.items()}
    for key, path in paths.items():
        check_output_path(path, args.overwrite, what=f"evaluation {key}", extensions=(path.suffix,))

    def report(volume: str, depth: str) -> None:
        if args.progress == "json":
            print(json.dumps({"event": "progress", "volume": volume, "depth": depth}), flush=True)
        elif args.progress == "bar":
            print(f"evaluated {volume} at depth {depth}", file=sys.stderr)

    evaluation = evaluate_cases(args.checkpoint, cases, options, report)
    summary = evaluation.summary()
    written = [paths["csv"], paths["json"]]
    with atomic_output([paths["csv"]], overwrite=args.overwrite) as (temporary,):
        write_csv(evaluation, temporary)
    with atomic_output([paths["json"]], overwrite=args.overwrite) as (temporary,):
        temporary.write_text(json.dumps(evaluation.to_json(), indent=2))
    if len(summary) > 1:
        with atomic_output([paths["plot"]], overwrite=args.overwrite) as (temporary,):
            plot_accuracy_vs_speed(summary, temporary, title=f"{Path(args.checkpoint).name}: mean Dice vs speed per depth")
        written.append(paths["plot"])
    if args.progress == "json":
        print(json.dumps({"event": "done", "summary": summary, "outputs": [str(p) for p in written]}), flush=True)
    else:
        print(format_table(evaluation), end="")
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def add_commands(commands) -> None:
    """Register this subcommand on the ``unetseg`` parser."""
    evaluate = commands.add_parser("evaluate", help="segment volumes and compare with ground truth (Dice, IoU, HD95, precision, recall, F1; every UNet++ depth)")
    evaluate.add_argument("--checkpoint", required=True, metavar="CKPT", help=".safetensors checkpoint")
    add_data_options(evaluate, for_training=False)
    evaluate.add_argument("--depth", default="all", help="UNet++ depths to evaluate: all (default), a list like 2,4, or 'accurate'")
    evaluate.add_argument("--slices", default="all",
                          help="slices along the slice axis to score: all (default), 'checkpoint' (the held-out slices recorded when the model was trained), or e.g. 4-6,16,17")
    evaluate.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    evaluate.add_argument("--batch-size", type=int, default=4, help="slices per network call (default 4)")
    evaluate.add_argument("--axis", default="auto", help="image axis to slice along: auto, i, j or k")
    evaluate.add_argument("--output-dir", default="unetseg-evaluation", help="where evaluation.csv, evaluation.json and accuracy-vs-speed.png go")
    evaluate.add_argument("--overwrite", action="store_true", help="replace existing result files")
    evaluate.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    evaluate.set_defaults(run=command_evaluate)

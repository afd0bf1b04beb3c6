"""``unetseg evaluate``: segment labelled volumes as ``predict`` does and score them (every UNet++ depth)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from UNetSegmentationLib.cli.data_options import add_data_options, cases_from_options
from UNetSegmentationLib.cli.needs import check_needs
from UNetSegmentationLib.grammar.slice_ranges import parse_slice_selection
from UNetSegmentationLib.model.bundled import BUNDLED_SHORT_NAME, checkpoint_path
from UNetSegmentationLib.inference.options import BACKENDS, DEFAULTS, PRECISIONS, SPACING_CHOICES, axis_name
from UNetSegmentationLib.protocol.reporters import PROGRESS_MODES


def command_evaluate(args: argparse.Namespace) -> int:
    slices = parse_slice_selection(args.slices)  # bounded, before any import: a refused range bomb stays small
    from UNetSegmentationLib.backends.plan import ExecutionRequest
    from UNetSegmentationLib.evaluation.evaluate import EvaluationOptions, evaluate_cases
    from UNetSegmentationLib.evaluation.report import OUTPUT_FILES, format_table, plot_accuracy_vs_speed, write_csv, write_json
    from UNetSegmentationLib.grammar.axis_names import parse_axis
    from UNetSegmentationLib.grammar.class_lists import parse_label_map
    from UNetSegmentationLib.io.output_gate import check_output
    from UNetSegmentationLib.io.outputs import atomic_output, check_output_path, claiming_outputs
    from UNetSegmentationLib.model.checkpoint import load_checkpoint
    from UNetSegmentationLib.model.depth import parse_depth

    skipped = {need.module for need in check_needs("evaluate", args.reporter.warning)}  # before any work
    depths = None
    if args.depth and args.depth != "all":
        depths = [parse_depth(d.strip()) for d in args.depth.split(",")]
    options = EvaluationOptions(
        depths=depths,
        execution=ExecutionRequest(args.device, args.backend, args.precision, args.threads),
        batch_size=args.batch_size,
        axis=parse_axis(args.axis),
        slices=slices,
        spacing=args.spacing,
        crop=not args.no_crop,
    )
    label_map = parse_label_map(args.label_map) if args.label_map else None
    cases, _, _ = cases_from_options(args, for_training=False)
    protected = [Path(args.checkpoint)] + [Path(p) for case in cases for p in (case.image, case.label)]  # what the run reads
    output_dir = check_output(args.output_dir, what="--output-dir", overwrite=True, kind="folder", protected=protected)
    paths = {key: output_dir / name for key, name in OUTPUT_FILES.items()}
    checkpoint = load_checkpoint(args.checkpoint)
    checkpoint.metadata.check_automatic(Path(args.checkpoint).name)  # before any label is read
    volumes = labelled_volumes(cases, checkpoint.metadata.classes, args.other_labels, label_map, args.reporter.warning)  # label problems stop here
    output_dir.mkdir(parents=True, exist_ok=True)
    with claiming_outputs():  # the output gate for each result file, and one writer per file while the run goes on
        for key, path in paths.items():
            check_output_path(path, args.overwrite, what=f"evaluation {key}", extensions=(path.suffix,), protected=protected)
        evaluation = evaluate_cases(checkpoint, volumes, options, args.reporter)
        summary = evaluation.summary()
        written = [paths["csv"], paths["json"]]
        with atomic_output([paths["csv"]], overwrite=args.overwrite) as (temporary,):
            write_csv(evaluation, temporary)
        with atomic_output([paths["json"]], overwrite=args.overwrite) as (temporary,):
            write_json(evaluation, temporary)
        if len(summary) > 1 and "matplotlib" not in skipped:
            with atomic_output([paths["plot"]], overwrite=args.overwrite) as (temporary,):
                plot_accuracy_vs_speed(summary, temporary, title=f"{Path(args.checkpoint).name}: mean Dice vs speed per depth")
            written.append(paths["plot"])
    args.reporter.done(summary=summary, outputs=[str(p) for p in written])
    if args.progress != "json":  # stdout carries only events in JSON mode
        print(format_table(evaluation), end="")
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def labelled_volumes(cases: Sequence, classes, other_labels: str, label_map: Optional[Dict[str, str]] = None, warn: Optional[Callable[[str], None]] = None) -> List:
    """Every case read and checked (before the first prediction), its label mapped to the checkpoint's
    classes by the functions ``train`` uses (io/labels.py): the same ``--label-map`` and ``--other-labels``.

    Returns :class:`~UNetSegmentationLib.evaluation.evaluate.LabelledVolume` s.
    """
    from UNetSegmentationLib.evaluation.evaluate import LabelledVolume
    from UNetSegmentationLib.io.labels import channel_targets, load_case, resolve_classes

    loaded = [load_case(case) for case in cases]
    _, lookups = resolve_classes([(item.case.name, item.label) for item in loaded], declared=classes, other_labels=other_labels, label_map=label_map, warn=warn)
    return [LabelledVolume(item.case.name, Path(item.case.image), item.volume, tuple(item.direction), tuple(item.spacing), channel_targets(item.label, lookup),
                           labelled_channels_of(item.case, classes, warn))
            for item, lookup in zip(loaded, lookups)]


def labelled_channels_of(case, classes, warn: Optional[Callable[[str], None]] = None) -> Optional[frozenset]:
    """The channels (1-based, of ``classes``) a case's labels cover: its datalist ``labelled_classes``
    (names matched as training matches them, grammar/class_lists.class_key), None where it gives none
    (every class labelled). Names that are not the checkpoint's classes say nothing about it (another
    model's classes, or a class this one lacks): ``warn`` hears them once per case."""
    from UNetSegmentationLib.grammar.class_lists import class_key

    labelled = getattr(case, "labelled", None)
    if labelled is None:
        return None
    by_name = {class_key(c.name): channel for channel, c in enumerate(classes, 1)}
    strangers = [name for name in labelled if class_key(name) not in by_name]
    if strangers and warn is not None:
        warn(f"case {case.name!r}: labelled_classes {', '.join(map(repr, strangers))} are not classes of this checkpoint: not scored")
    return frozenset(by_name[class_key(name)] for name in labelled if class_key(name) in by_name)


def add_commands(commands) -> None:
    """Register this subcommand on the ``unetseg`` parser."""
    evaluate = commands.add_parser("evaluate", help="segment volumes as predict does and compare with ground truth (Dice, IoU, HD95, precision, recall, F1; every UNet++ depth)")
    evaluate.add_argument("--checkpoint", default=BUNDLED_SHORT_NAME, type=checkpoint_path, metavar="CKPT", help=f".safetensors checkpoint (default: '{BUNDLED_SHORT_NAME}', the bundled model)")
    add_data_options(evaluate, for_training=False)
    evaluate.add_argument("--depth", default="all", help="UNet++ depths to evaluate: all (default), a list like 2,4, or 'accurate'")
    evaluate.add_argument("--slices", default="all",
                          help="slices along the slice axis to score: all (default), 'checkpoint' (the held-out slices recorded when the model was trained), or e.g. 4-6,16,17")
    evaluate.add_argument("--device", default=DEFAULTS.device, help="auto (CUDA when available), cpu, cuda, cuda:N")
    evaluate.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="slices per network call (default %(default)s)")
    evaluate.add_argument("--axis", default=axis_name(DEFAULTS.axis), help="image axis to slice along: auto, i, j or k")
    evaluate.add_argument("--output-dir", default="unetseg-evaluation", help="where evaluation.csv, evaluation.json and accuracy-vs-speed.png go")
    evaluate.add_argument("--overwrite", action="store_true", help="replace existing result files")
    evaluate.add_argument("--progress", choices=PROGRESS_MODES, default="bar", help="progress bar on stderr, JSON lines on stdout, or nothing")
    evaluate.add_argument("--spacing", choices=SPACING_CHOICES, default=DEFAULTS.spacing, help="as for predict: model (default) or native")
    evaluate.add_argument("--no-crop", action="store_true", help="as for predict: the network on whole slices, not only the body's box")
    speed = evaluate.add_argument_group("speed: as for predict, so that ms/slice is what predict takes (see BENCHMARKS.md)")
    speed.add_argument("--backend", choices=BACKENDS, default=DEFAULTS.backend, help="auto: ONNX Runtime on the CPU in float32 when installed, else PyTorch")
    speed.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS.precision,
                       help="auto: bf16 where the hardware has it (CUDA; CPUs with AVX512-BF16/AMX), else float32; fp32 for the float32 numbers; int8: quantised per volume (CPU)")
    speed.add_argument("--threads", type=int, default=DEFAULTS.threads, help="CPU threads for the network in all (default: one per core)")
    evaluate.set_defaults(run=command_evaluate)

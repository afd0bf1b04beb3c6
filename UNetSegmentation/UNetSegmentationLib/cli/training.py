"""Subcommands for training, evaluation and export (``train``, ``evaluate``, ``export``).

Kept apart from :mod:`UNetSegmentationLib.cli.main` so the inference commands stay small; the parser
calls :func:`add_commands`. As in ``cli``: problems with the user's input are raised as
:class:`~UNetSegmentationLib.errors.UserError` (one line, exit 2), and heavy modules are imported
inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.networks.registry import ARCHITECTURES


# --- shared ----------------------------------------------------------------------------------------------


def _data_options(parser: argparse.ArgumentParser, for_training: bool) -> None:
    group = parser.add_argument_group("data (one of --datalist, --images/--labels, --image/--label)")
    group.add_argument("--datalist", metavar="JSON", help="MONAI decathlon-style datalist: 'training' (and 'validation') lists of {'image': ..., 'label': ...}")
    group.add_argument("--data-root", metavar="DIR", help="folder the datalist's relative paths start from (default: the datalist's folder)")
    if not for_training:
        group.add_argument("--section", default="validation", help="datalist list to evaluate (default validation)")
    group.add_argument("--images", metavar="DIR", help="folder of images; labels are matched by name in --labels")
    group.add_argument("--labels", metavar="DIR", help="folder of label maps or .seg.nrrd segmentations")
    group.add_argument("--image", metavar="FILE", help="a single image (with --label)")
    group.add_argument("--label", metavar="FILE", help="its label map or .seg.nrrd segmentation")
    if for_training:
        group.add_argument("--val-images", metavar="DIR", help="validation images (with --val-labels), instead of a datalist's 'validation' list")
        group.add_argument("--val-labels", metavar="DIR", help="validation labels, matched by name")
        group.add_argument("--val-slices", type=float, metavar="FRACTION", help="hold out this fraction of every training volume's slices for validation, in contiguous blocks (e.g. 0.2)")
        group.add_argument("--val-blocks", type=int, default=3, metavar="N", help="number of held-out blocks, spread along the volume (default 3)")
        group.add_argument("--val-gap", type=int, metavar="N", help="slices next to each held-out block used for neither training nor validation (default: --context, so no training input sees a held-out slice)")
    group.add_argument("--other-labels", choices=("error", "background"), default="error" if for_training else "background",
                       help="segments/label values not among the classes: stop with an error, or treat them as background")


def _cases(args: argparse.Namespace, for_training: bool):
    """``(primary cases, validation cases, description)`` from the data options."""
    from UNetSegmentationLib.training.data import Case, case_name, cases_from_datalist, cases_from_folders, check_files

    sources = [name for name, given in (("--datalist", args.datalist), ("--images", args.images or args.labels), ("--image", args.image or args.label)) if given]
    if len(sources) != 1:
        raise UserError("give the data as exactly one of --datalist JSON, --images DIR --labels DIR, or --image FILE --label FILE" + (f" (got {', '.join(sources)})" if sources else ""))
    validation = []
    if args.datalist:
        section = "training" if for_training else args.section
        cases = cases_from_datalist(args.datalist, section, args.data_root)
        if for_training:
            validation = cases_from_datalist(args.datalist, "validation", args.data_root, required=False)
        description = {"source": "datalist", "datalist": Path(args.datalist).name}
    elif args.images or args.labels:
        if not (args.images and args.labels):
            raise UserError("--images and --labels go together")
        cases = cases_from_folders(args.images, args.labels)
        description = {"source": "folders"}
    else:
        if not (args.image and args.label):
            raise UserError("--image and --label go together")
        cases = [Case(case_name(Path(args.image)), Path(args.image), Path(args.label))]
        check_files(cases, "--image/--label")
        description = {"source": "files"}
    if for_training and (args.val_images or args.val_labels):
        if not (args.val_images and args.val_labels):
            raise UserError("--val-images and --val-labels go together")
        if validation:
            raise UserError("the datalist already has a 'validation' list; leave out --val-images/--val-labels")
        validation = cases_from_folders(args.val_images, args.val_labels)
    if not cases:
        raise UserError("no cases to " + ("train on" if for_training else "evaluate"))
    return cases, validation, description


def _int_list(text: str, what: str) -> list:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise UserError(f"{what} must be positive, got {text!r}")
    return values


# --- train -----------------------------------------------------------------------------------------------


def command_train(args: argparse.Namespace) -> int:
    from UNetSegmentationLib.networks.registry import get_architecture, resolve_features
    from UNetSegmentationLib.training.data import AugmentOptions
    from UNetSegmentationLib.training.trainer import Trainer, TrainConfig, TrainingProgress

    if args.init:
        given = [f"--{name}" for name in ("arch", "features", "classes", "context", "norm") if getattr(args, name) is not None]
        if given:
            raise UserError(f"--init takes the architecture, features, classes, context and normalisation from the checkpoint; leave out {', '.join(given)}")
    architecture = get_architecture(args.arch or "unetplusplus")
    args.context = 1 if args.context is None else args.context
    args.norm = args.norm or "ct:-1000,1000"
    if not 0 <= args.context <= 16:
        raise UserError(f"--context must be in 0..16, got {args.context}")
    crop = _int_list(args.crop, "--crop")
    if len(crop) == 1:
        crop = crop * 2
    if len(crop) != 2:
        raise UserError(f"--crop must be one size or ROWS,COLUMNS; got {args.crop!r}")
    classes = None
    if args.classes:
        classes = [n.strip() for n in args.classes.split(",")]
        if any(not n for n in classes):
            raise UserError("--classes needs non-empty names separated by commas")
    for name in ("flip", "augment_prob"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise UserError(f"--{name.replace('_', '-')} must be a probability in [0, 1], got {value}")
    from UNetSegmentationLib.inference.slicing import parse_axis

    config = TrainConfig(
        arch=architecture.name,
        features=resolve_features(architecture, args.features) if args.features else None,
        context=args.context,
        norm=args.norm,
        classes=classes,
        init=args.init,
        other_labels=args.other_labels,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        crop=tuple(crop),
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        loss=args.loss,
        foreground=args.foreground,
        augment=AugmentOptions(flip=args.flip, rotate=args.rotate, scale=args.scale, intensity=args.intensity, prob=args.augment_prob),
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        val_every=args.val_every,
        val_slices=args.val_slices,
        val_blocks=args.val_blocks,
        val_gap=args.val_gap,
        depth_tolerance=args.depth_tolerance,
        axis=parse_axis(args.axis),
        threads=args.threads,
        stop_after=args.stop_after,
        log=args.log,
        state=args.state,
    )
    from UNetSegmentationLib.model.metadata import Normalization

    Normalization.parse(args.norm)  # a bad --norm is reported before any file is read
    if args.val_slices is not None and not 0 < args.val_slices < 1:
        raise UserError(f"--val-slices must be a fraction between 0 and 1, got {args.val_slices}")
    cases, validation, description = _cases(args, for_training=True)
    trainer = Trainer(config, cases, validation, Path(args.output), resume=args.resume, overwrite=args.overwrite,
                      progress=TrainingProgress(args.progress), data_description=description)
    trainer.run()
    return 0


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train a network on image/label volumes (writes the best checkpoint, a CSV log and a resume state)",
                                description="Train a 2.5D network. The best checkpoint by validation Dice is written atomically after each "
                                "validation; for UNet++ the Dice and ms/slice of every depth and the recommended depth are stored in it.")
    train.add_argument("output", metavar="OUT.safetensors", help="checkpoint to write (the log goes to OUT.csv, the resume state to OUT.resume.pt)")
    _data_options(train, for_training=True)
    model = train.add_argument_group("model")
    model.add_argument("--arch", choices=sorted(ARCHITECTURES), help="architecture (default unetplusplus; see 'unetseg archs')")
    model.add_argument("--features", help="channels per level, e.g. 16,32,64,128,256, or a preset (paper, wide)")
    model.add_argument("--context", type=int, help="neighbour slices on each side: 2c+1 input channels (default 1)")
    model.add_argument("--norm", help="intensity normalisation: ct:LO,HI or mr[:PLO,PHI] (default ct:-1000,1000)")
    model.add_argument("--classes", help="class names, comma-separated (default: the segments of the .seg.nrrd labels, or label values)")
    model.add_argument("--init", metavar="CKPT", help="start from this checkpoint's weights, architecture, classes and normalisation (e.g. one from 'unetseg create')")
    fit = train.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=50, help="epochs (default 50)")
    fit.add_argument("--steps-per-epoch", type=int, default=50, help="optimiser steps per epoch (default 50)")
    fit.add_argument("--batch-size", type=int, default=8, help="crops per step (default 8)")
    fit.add_argument("--crop", default="96", help="in-plane crop size, N or ROWS,COLUMNS, rounded up to the network's multiple (default 96)")
    fit.add_argument("--optimizer", choices=("adamw", "adam"), default="adamw")
    fit.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (default 1e-3)")
    fit.add_argument("--weight-decay", type=float, default=1e-4)
    fit.add_argument("--schedule", choices=("poly", "cosine", "constant"), default="poly", help="learning-rate schedule over all steps (default poly, power 0.9)")
    fit.add_argument("--loss", choices=("auto", "unetplusplus", "unet3plus", "dice-ce"), default="auto",
                     help="auto: the architecture's paper loss (UNet++: CE+Dice per head; UNet 3+: focal+MS-SSIM+IoU per head + BCE on the classification head; others: Dice+CE)")
    fit.add_argument("--foreground", type=float, default=0.5, help="fraction of crops centred on a structure, classes drawn uniformly (default 0.5)")
    fit.add_argument("--flip", type=float, default=0.0, help="probability of mirroring each in-plane axis (default 0: slices are already in one orientation, and mirroring mixes up left and right)")
    fit.add_argument("--rotate", type=float, default=15.0, help="random in-plane rotation up to ± degrees (default 15)")
    fit.add_argument("--scale", type=float, default=0.1, help="random scaling up to ± this fraction (default 0.1)")
    fit.add_argument("--intensity", type=float, default=0.1, help="random intensity shift and scale up to ± this, in normalised units (default 0.1)")
    fit.add_argument("--augment-prob", type=float, default=0.5, help="probability of each random transform (default 0.5)")
    fit.add_argument("--seed", type=int, default=0, help="random seed: the same seed, data and device give the same run")
    fit.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    fit.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    fit.add_argument("--threads", type=int, help="CPU threads for torch during this run")
    fit.add_argument("--axis", default="auto", help="image axis to slice along: auto (closest to superior-inferior), i, j or k")
    val = train.add_argument_group("validation and depth selection")
    val.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default 1)")
    val.add_argument("--depth-tolerance", type=float, default=0.01, help="UNet++: recommend the shallowest depth whose Dice is within this of the best (default 0.01)")
    out = train.add_argument_group("outputs and runs")
    out.add_argument("--log", metavar="CSV", help="epoch log (default OUT.csv)")
    out.add_argument("--state", metavar="PT", help="resume state (default OUT.resume.pt)")
    out.add_argument("--resume", action="store_true", help="continue the run whose resume state is next to OUT (more --epochs extend it)")
    out.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs of this invocation (continue later with --resume)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint, log and resume state")
    out.add_argument("--progress", choices=("bar", "json", "none"), default="bar", help="progress bar and epoch lines on stderr, JSON lines on stdout, or nothing")
    train.set_defaults(run=command_train)


# --- evaluate --------------------------------------------------------------------------------------------


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
    cases, _, _ = _cases(args, for_training=False)
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


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="segment volumes and compare with ground truth (Dice, IoU, HD95, precision, recall, F1; every UNet++ depth)")
    evaluate.add_argument("--checkpoint", required=True, metavar="CKPT", help=".safetensors checkpoint")
    _data_options(evaluate, for_training=False)
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


# --- export ----------------------------------------------------------------------------------------------


def command_export(args: argparse.Namespace) -> int:
    from UNetSegmentationLib.model.depth import parse_depth
    from UNetSegmentationLib.training.selection import export_depth

    depth = parse_depth(args.depth)
    if not isinstance(depth, int):
        raise UserError(f"export --depth needs a depth number (1..4 or L1..L4), got {args.depth!r}")
    path, full, exported = export_depth(args.checkpoint, depth, args.output, overwrite=args.overwrite)
    print(f"wrote {path}: depth-{depth} sub-network, {exported / 1e6:.3f}M of {full / 1e6:.3f}M parameters", file=sys.stderr)
    return 0


def _add_export(commands) -> None:
    export = commands.add_parser("export", help="write the depth-L sub-network of a UNet++ checkpoint as a smaller checkpoint")
    export.add_argument("--depth", required=True, help="depth to keep (1..4 or L1..L4)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output")
    export.add_argument("checkpoint", metavar="CKPT")
    export.add_argument("output", metavar="OUT.safetensors")
    export.set_defaults(run=command_export)


def add_commands(commands: "argparse._SubParsersAction") -> None:
    """Register the training-side subcommands on the ``unetseg`` parser."""
    _add_train(commands)
    _add_evaluate(commands)
    _add_export(commands)

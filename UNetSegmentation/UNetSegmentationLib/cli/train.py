"""``unetseg train``: train a 2.5D network on image/label volumes (writes the best checkpoint, a CSV log and a resume state)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

from UNetSegmentationLib.cli.data_options import add_data_options, cases_from_options, int_list
from UNetSegmentationLib.cli.needs import check_needs
from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.grammar.axis_names import parse_axis
from UNetSegmentationLib.grammar.class_lists import parse_class_names, parse_label_map, parse_partial_classes
from UNetSegmentationLib.grammar.slice_ranges import check_slice_ranges
from UNetSegmentationLib.model.metadata import Normalization
from UNetSegmentationLib.networks.registry import ARCHITECTURES, get_architecture, resolve_features
from UNetSegmentationLib.protocol.reporters import make_reporter

if TYPE_CHECKING:  # the real import is in train_config: MONAI and torch stay out of the parser
    from UNetSegmentationLib.training.config import TrainConfig


def command_train(args: argparse.Namespace) -> int:
    """``unetseg train``: check the options, list the cases, train."""
    # main() made the reporter for --progress (it reports errors through it too); a direct call makes its own
    reporter = getattr(args, "reporter", None) or make_reporter(args.progress)
    check_needs("train", reporter.warning)  # what the core install brings (cli/needs.py), before any work
    from UNetSegmentationLib.training.trainer import Trainer  # torch and MONAI: only once a run is asked for

    config = train_config(args)
    cases, validation, description = cases_from_options(args, for_training=True)
    from UNetSegmentationLib.io.outputs import claiming_outputs

    with claiming_outputs():  # the outputs' checks (training/checkpointing) also lock them for the run, as predict's are
        trainer = Trainer(config, cases, validation, Path(args.output), resume=args.resume, overwrite=args.overwrite,
                          reporter=reporter, data_description=description)
        trainer.run()
    return 0


def train_config(args: argparse.Namespace) -> "TrainConfig":
    """The run's :class:`~UNetSegmentationLib.training.config.TrainConfig` from the parsed options; a bad
    option stops here, before any file is read."""
    from UNetSegmentationLib.training.config import TrainConfig  # imports MONAI (the augmentations), hence torch
    from UNetSegmentationLib.training.finetuning import apply_defaults
    from UNetSegmentationLib.training.sampling import AugmentOptions
    from UNetSegmentationLib.training.spacing import parse_spacing

    if args.init:
        given = [f"--{name}" for name in ("arch", "features", "classes", "context", "norm", "spacing") if getattr(args, name) is not None]
        if given:
            raise UserError(f"--init takes the architecture, features, classes, context, normalisation and spacing from the checkpoint; leave out {', '.join(given)}")
    elif args.freeze_encoder:
        raise UserError("--freeze-encoder fine-tunes a checkpoint: it needs --init")
    apply_defaults(args)
    architecture = get_architecture(args.arch or "unetplusplus")
    args.context = 1 if args.context is None else args.context
    args.norm = args.norm or "ct:-1000,1000"
    if not 0 <= args.context <= 16:
        raise UserError(f"--context must be in 0..16, got {args.context}")
    crop, classes = _crop(args.crop), parse_class_names(args.classes)
    for name in ("flip", "augment_prob"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise UserError(f"--{name.replace('_', '-')} must be a probability in [0, 1], got {value}")
    config = TrainConfig(
        arch=architecture.name, features=resolve_features(architecture, args.features) if args.features else None,
        context=args.context, norm=args.norm, classes=classes, init=args.init, other_labels=args.other_labels,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, crop=crop,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule, loss=args.loss,
        foreground=args.foreground,
        augment=AugmentOptions(flip=args.flip, rotate=args.rotate, scale=args.scale, intensity=args.intensity, prob=args.augment_prob),
        seed=args.seed, device=args.device, amp=not args.no_amp,
        spacing=parse_spacing(args.spacing), label_map=parse_label_map(args.label_map) if args.label_map else None,
        train_slices=_train_slices(args.train_slices),
        partial_classes=parse_partial_classes(args.partial_classes), freeze_encoder=args.freeze_encoder, freeze_norm=bool(args.init),
        val_every=args.val_every, val_slices=args.val_slices, val_blocks=args.val_blocks, val_gap=args.val_gap,
        depth_tolerance=args.depth_tolerance, axis=parse_axis(args.axis), threads=args.threads,
        stop_after=args.stop_after, log=args.log, state=args.state,
    )
    Normalization.parse(args.norm)  # a bad --norm is reported before any file is read
    if args.val_slices is not None and not 0 < args.val_slices < 1:
        raise UserError(f"--val-slices must be a fraction between 0 and 1, got {args.val_slices}")
    return config


def _crop(text: str) -> Tuple[int, int]:
    """``--crop N`` or ``ROWS,COLUMNS``."""
    crop = int_list(text, "--crop")
    if len(crop) == 1:
        crop = crop * 2
    if len(crop) != 2:
        raise UserError(f"--crop must be one size or ROWS,COLUMNS; got {text!r}")
    return tuple(crop)


def _train_slices(text: Optional[str]) -> Optional[str]:
    """``--train-slices`` checked against the hard cap now (nothing expanded); each volume's slice count
    checks it again when the volume is read (training/dataset.marked_slices)."""
    if text is None:
        return None
    check_slice_ranges(text, None, option="--train-slices")
    return text.replace(" ", "")


def add_commands(commands) -> None:
    """Register this subcommand on the ``unetseg`` parser."""
    train = commands.add_parser("train", help="train a network on image/label volumes (writes the best checkpoint, a CSV log and a resume state)",
                                description="Train a 2.5D network. The best checkpoint by validation Dice is written atomically after each "
                                "validation; for UNet++ the Dice and ms/slice of every depth and the recommended depth are stored in it.")
    train.add_argument("output", metavar="OUT.safetensors", help="checkpoint to write (the log goes to OUT.csv, the resume state to OUT.resume.pt)")
    add_data_options(train, for_training=True)
    model = train.add_argument_group("model")
    model.add_argument("--arch", choices=sorted(ARCHITECTURES), help="architecture (default unetplusplus; see 'unetseg archs')")
    model.add_argument("--features", help="channels per level, e.g. 16,32,64,128,256, or a preset (paper, wide)")
    model.add_argument("--context", type=int, help="neighbour slices on each side: 2c+1 input channels (default 1)")
    model.add_argument("--norm", help="intensity normalisation: ct:LO,HI or mr[:PLO,PHI] (default ct:-1000,1000)")
    model.add_argument("--classes", help="class names, comma-separated (default: the segments of the .seg.nrrd labels, or label values)")
    model.add_argument("--spacing", metavar="MM", help="in-plane spacing to train at, ROW[,COLUMN] mm, or 'native' (the voxel grids as given); "
                       "default: the median in-plane spacing of the training images (recorded in the checkpoint: predict segments at it)")
    tune = train.add_argument_group("fine-tuning (--init)")
    tune.add_argument("--init", metavar="CKPT", help="fine-tune this checkpoint: its weights, architecture, classes, context, normalisation and spacing; "
                      "writes a new checkpoint whose model card records the base, its SHA-256 and the Dice before and after")
    tune.add_argument("--train-slices", metavar="SPEC", help="train only on these slices (numbers from 0 along the slice axis), e.g. 12-18,40: the ones corrected")
    tune.add_argument("--partial-classes", metavar="CLASSES", help="classes the labels do not cover, trained with a marginal loss instead of as background: "
                      "auto (default: those no training label holds), none, or names")
    tune.add_argument("--freeze-encoder", action="store_true", help="train only the decoder and heads (UNet++, U-Net)")
    fit = train.add_argument_group("training")
    fit.add_argument("--epochs", type=int, help="epochs (default 50; fine-tuning 4)")
    fit.add_argument("--steps-per-epoch", type=int, help="optimiser steps per epoch (default 50; fine-tuning 25)")
    fit.add_argument("--batch-size", type=int, help="crops per step (default 8)")
    fit.add_argument("--crop", help="in-plane crop size, N or ROWS,COLUMNS, rounded up to the network's multiple (default 96; fine-tuning 128)")
    fit.add_argument("--optimizer", choices=("adamw", "adam"), default="adamw")
    fit.add_argument("--lr", type=float, help="initial learning rate (default 1e-3; fine-tuning 3e-4)")
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
    fit.add_argument("--no-amp", action="store_true", help="no mixed precision (CUDA; bf16 on a CPU that computes it natively)")
    fit.add_argument("--threads", type=int, help="CPU threads for torch during this run (at most the CPUs this process may use)")
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

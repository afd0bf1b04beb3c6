"""``unetseg train``: train a 2.5D network on image/label volumes (writes the best checkpoint, a CSV log and a resume state)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from UNetSegmentationLib.cli.data_options import add_data_options, cases_from_options
from UNetSegmentationLib.cli.needs import check_needs
from UNetSegmentationLib.model.bundled import checkpoint_path
from UNetSegmentationLib.networks.registry import ARCHITECTURES
from UNetSegmentationLib.protocol.reporters import make_reporter
from UNetSegmentationLib.training import train_options as defaults
from UNetSegmentationLib.training.train_options import TrainOptions

if TYPE_CHECKING:  # the real import is in train_config: MONAI and torch stay out of the parser
    from UNetSegmentationLib.training.config import TrainConfig


def command_train(args: argparse.Namespace) -> int:
    """``unetseg train``: check the options (before torch is imported), list the cases, train."""
    # main() made the reporter for --progress (it reports errors through it too); a direct call makes its own
    reporter = getattr(args, "reporter", None) or make_reporter(args.progress)
    options = TrainOptions.from_namespace(args)  # every bad value stops here, before any import or file
    check_needs("train", reporter.warning)  # what the core install brings (cli/needs.py), before any work
    from UNetSegmentationLib.training.trainer import Trainer  # torch and MONAI: only once a run is asked for

    if options.interactive is not None:  # a network guided by clicks, trained by simulation (issue 26)
        from UNetSegmentationLib.training.interactive_trainer import InteractiveTrainer as Trainer

    config = options.to_config()
    cases, validation, description = cases_from_options(options, for_training=True)
    from UNetSegmentationLib.io.outputs import claiming_outputs

    with claiming_outputs():  # the outputs' checks (training/checkpointing) also lock them for the run, as predict's are
        trainer = Trainer(config, cases, validation, options.output, resume=options.resume, overwrite=options.overwrite,
                          reporter=reporter, data_description=description)
        trainer.run()
    return 0


def train_config(args: argparse.Namespace) -> "TrainConfig":
    """The run's :class:`~UNetSegmentationLib.training.config.TrainConfig` from the parsed options
    (:class:`~UNetSegmentationLib.training.train_options.TrainOptions` checks them)."""
    return TrainOptions.from_namespace(args).to_config()


def add_commands(commands) -> None:
    """Register this subcommand on the ``unetseg`` parser (defaults and choices: training/train_options.py)."""
    D, T, F = defaults.DEFAULT_VALUES, defaults.TRAINING_DEFAULTS, defaults.FINE_TUNING_DEFAULTS
    train = commands.add_parser("train", help="train a network on image/label volumes (writes the best checkpoint and a CSV log)",
                                description="Train a 2.5D network. The best checkpoint by validation Dice is written atomically after each "
                                "validation; for UNet++ the Dice and ms/slice of every depth and the recommended depth are stored in it.")
    train.add_argument("output", metavar="OUT.safetensors", help="checkpoint to write (the log goes to OUT.csv; the resume state OUT.resume.pt is removed when the run finishes)")
    add_data_options(train, for_training=True)
    model = train.add_argument_group("model")
    model.add_argument("--arch", choices=sorted(ARCHITECTURES), help=f"architecture (default {defaults.DEFAULT_ARCHITECTURE}; see 'unetseg archs')")
    model.add_argument("--features", help="channels per level, e.g. 16,32,64,128,256, or a preset (paper, wide)")
    model.add_argument("--context", type=int, help=f"neighbour slices on each side: 2c+1 input channels (default {defaults.DEFAULT_CONTEXT})")
    model.add_argument("--norm", help=f"intensity normalisation: ct:LO,HI or mr[:PLO,PHI] (default {defaults.DEFAULT_NORM})")
    model.add_argument("--classes", help="class names, comma-separated (default: the segments of the .seg.nrrd labels, or label values)")
    model.add_argument("--slice-distance", type=float, metavar="MM", help="mm between a slice and its 2.5D neighbours (default: the median slice spacing of the training images; recorded: predict takes neighbours this far away)")
    model.add_argument("--spacing", metavar="MM", help="in-plane spacing to train at, ROW[,COLUMN] mm, or 'native' (the voxel grids as given); "
                       "default: the median in-plane spacing of the training images (recorded in the checkpoint: predict segments at it)")
    tune = train.add_argument_group("fine-tuning (--init)")
    tune.add_argument("--init", metavar="CKPT", type=checkpoint_path, help="fine-tune this checkpoint ('bundled': the bundled model): its weights, architecture, classes, context, "
                      "normalisation and spacing; writes a new checkpoint whose model card records the base, its SHA-256 and the Dice before and after")
    tune.add_argument("--train-slices", metavar="SPEC", help="train only on these slices (numbers from 0 along the slice axis), e.g. 12-18,40: the ones corrected")
    tune.add_argument("--partial-classes", metavar="CLASSES", help="classes the labels do not cover, trained with a marginal loss instead of as background: "
                      "auto (default: those no training label holds), none, or names")
    tune.add_argument("--corrected-classes", metavar="CLASSES", help="the classes you changed in the labels (names, or none), "
                      "recorded in the model card; the Slicer panel measures them. Default: not recorded")
    tune.add_argument("--freeze-encoder", action="store_true", help="train only the decoder and heads (UNet++, U-Net)")
    fit = train.add_argument_group("training")
    fit.add_argument("--epochs", type=int, help=f"epochs (default {T['epochs']}; fine-tuning {F['epochs']})")
    fit.add_argument("--steps-per-epoch", type=int, help=f"optimiser steps per epoch (default {T['steps_per_epoch']}; fine-tuning {F['steps_per_epoch']})")
    fit.add_argument("--batch-size", type=int, help=f"crops per step (default {T['batch_size']})")
    fit.add_argument("--crop", help=f"in-plane crop size, N or ROWS,COLUMNS, rounded up to the network's multiple (default {T['crop'][0]}; fine-tuning {F['crop'][0]}; "
                     "the default shrinks to the training slices where they are smaller)")
    fit.add_argument("--optimizer", choices=defaults.OPTIMIZERS, default=D["optimizer"])
    fit.add_argument("--lr", type=float, help=f"initial learning rate (default {T['lr']:g}; fine-tuning {F['lr']:g})")
    fit.add_argument("--weight-decay", type=float, default=D["weight_decay"])
    fit.add_argument("--schedule", choices=defaults.SCHEDULES, default=D["schedule"], help="learning-rate schedule over all steps (default poly, power 0.9)")
    fit.add_argument("--loss", choices=defaults.LOSSES, default=D["loss"],
                     help="auto: the architecture's paper loss (UNet++: CE+Dice per head; UNet 3+: focal+MS-SSIM+IoU per head + BCE on the classification head; others: Dice+CE)")
    fit.add_argument("--foreground", type=float, default=D["foreground"], help="fraction of crops centred on a structure, classes drawn uniformly (default %(default)s)")
    fit.add_argument("--flip", type=float, default=D["flip"], help="probability of mirroring each in-plane axis (default 0: slices are already in one orientation, and mirroring mixes up left and right)")
    fit.add_argument("--rotate", type=float, default=D["rotate"], help="random in-plane rotation up to ± degrees (default %(default)s)")
    fit.add_argument("--scale", type=float, default=D["scale"], help="random scaling up to ± this fraction (default %(default)s)")
    fit.add_argument("--intensity", type=float, default=D["intensity"], help="random intensity shift and scale up to ± this, in normalised units (default %(default)s)")
    fit.add_argument("--contrast", type=float, default=D["contrast"], help="random gamma in [1-x, 1+x]: contrast phases and windows (default %(default)s: off)")
    fit.add_argument("--noise", type=float, default=D["noise"], help="Gaussian noise up to this standard deviation, normalised units (default %(default)s: off)")
    fit.add_argument("--low-resolution", type=float, default=D["low_resolution"], help="simulated lower in-plane resolution: zoom down to 1-x and back (default %(default)s: off)")
    fit.add_argument("--thickness", type=float, default=D["thickness"], help="simulated thicker slices: up to this share of the neighbours mixed into the centre slice (default %(default)s: off)")
    fit.add_argument("--cut", type=float, default=D["cut"], help="probability of a field of view that ends inside the crop (default %(default)s: off)")
    fit.add_argument("--augment-prob", type=float, default=D["augment_prob"], help="probability of each random transform (default %(default)s)")
    fit.add_argument("--seed", type=int, default=D["seed"], help="random seed: the same seed, data and device give the same run")
    fit.add_argument("--device", default=D["device"], help="auto (CUDA when available), cpu, cuda, cuda:N")
    fit.add_argument("--no-amp", action="store_true", help="no mixed precision (where the device computes bf16 natively: backends/plan.py decides)")
    fit.add_argument("--threads", type=int, help="CPU threads for torch during this run (at most the CPUs this process may use)")
    fit.add_argument("--axis", default="auto", help="image axis to slice along: auto (closest to superior-inferior), i, j or k")
    val = train.add_argument_group("validation and depth selection")
    val.add_argument("--val-every", type=int, default=D["val_every"], help="validate every N epochs (default %(default)s)")
    val.add_argument("--depth-tolerance", type=float, default=D["depth_tolerance"], help="UNet++: recommend the shallowest depth whose Dice is within this of the best (default %(default)s)")
    guided = train.add_argument_group("interactive refinement (a network guided by clicks)")
    guided.add_argument("--interactive", choices=defaults.INTERACTIVE_MODES,
                        help="train an interactive network by simulated clicks: object (class-agnostic: the object under the clicks) "
                             "or joint (the classes out, guided for one: DeepEdit's one network for both roles)")
    guided.add_argument("--no-guidance", type=float, metavar="SHARE",
                        help=f"share of samples without any guidance (default {', '.join(f'{k} {v:g}' for k, v in defaults.NO_GUIDANCE_DEFAULTS.items())})")
    guided.add_argument("--pseudo-objects", type=float, metavar="SHARE",
                        help=f"object only: share of samples whose object is the intensity-homogeneous region around a random point, "
                             f"not a labelled structure (default {defaults.PSEUDO_OBJECTS_DEFAULT:g}: measured no gain on held-out patients)")
    out = train.add_argument_group("outputs and runs")
    out.add_argument("--log", metavar="CSV", help="epoch log (default OUT.csv)")
    out.add_argument("--state", metavar="PT", help="resume state while the run goes on (default OUT.resume.pt; removed when the run finishes)")
    out.add_argument("--resume", action="store_true", help="continue a run stopped by --stop-after or killed, from the resume state next to OUT (more --epochs extend it)")
    out.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs of this invocation (continue later with --resume; the resume state is kept)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint, log and resume state")
    out.add_argument("--progress", choices=("bar", "json", "none"), default="bar", help="progress bar and epoch lines on stderr, JSON lines on stdout, or nothing")
    train.set_defaults(run=command_train)

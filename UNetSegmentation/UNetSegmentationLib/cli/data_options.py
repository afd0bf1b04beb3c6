"""Where training and evaluation data come from: ``--datalist``, ``--images/--labels`` or ``--image/--label``."""

from __future__ import annotations

import argparse
from pathlib import Path

from UNetSegmentationLib.errors import UserError
from UNetSegmentationLib.grammar.class_lists import DEFAULT_OTHER_LABELS, OTHER_LABELS
from UNetSegmentationLib.training.train_options import DEFAULT_HOLD_OUT, DEFAULT_VAL_BLOCKS, HOLD_OUT_LIMIT


def add_data_options(parser: argparse.ArgumentParser, for_training: bool) -> None:
    group = parser.add_argument_group("data (one of --datalist, --images/--labels, --image/--label)")
    group.add_argument("--datalist", metavar="JSON", help="MONAI decathlon-style datalist: 'training' (and 'validation') lists of {'image': ..., 'label': ...}")
    group.add_argument("--data-root", metavar="DIR", help="folder the datalist's relative paths start from (default: the datalist's folder)")
    if not for_training:
        group.add_argument("--section", help="datalist list to evaluate (default: validation; with --fold, training)")
    group.add_argument("--images", metavar="DIR", help="folder of images; labels are matched by name in --labels")
    group.add_argument("--labels", metavar="DIR", help="folder of label maps or .seg.nrrd segmentations")
    group.add_argument("--image", metavar="FILE", help="a single image (with --label)")
    group.add_argument("--label", metavar="FILE", help="its label map or .seg.nrrd segmentation")
    group.add_argument("--fold", type=int, metavar="K", help="validate on the --datalist cases whose 'fold' is K and train on the others "
                       "(leave one patient out with the datalist of Resources/Tools/prepare_training_data.py)" if for_training else
                       "evaluate only the --datalist cases whose 'fold' is K (the patient a model trained with --fold K never saw)")
    if for_training:
        group.add_argument("--val-images", metavar="DIR", help="validation images (with --val-labels), instead of a datalist's 'validation' list")
        group.add_argument("--val-labels", metavar="DIR", help="validation labels, matched by name")
        group.add_argument("--val-slices", type=float, metavar="FRACTION", help=f"hold out this share of every training volume's slices for validation, in contiguous blocks "
                           f"(above 0, below {HOLD_OUT_LIMIT:g}; e.g. {DEFAULT_HOLD_OUT:g})")
        group.add_argument("--val-blocks", type=int, default=DEFAULT_VAL_BLOCKS, metavar="N", help="number of held-out blocks, spread along the volume (default %(default)s; fewer where the volume is too short)")
        group.add_argument("--val-gap", type=int, metavar="N", help="slices next to each held-out block used for neither training nor validation (default: the slices the 2.5D neighbours reach, "
                           "--context x the model's slice distance / the volume's slice spacing, so no training input sees a held-out slice)")
    group.add_argument("--other-labels", choices=OTHER_LABELS, default=DEFAULT_OTHER_LABELS,
                       help="segments/label values not among the classes (or not named by --label-map): stop with an error (default), or read them as background with a warning")
    group.add_argument("--label-map", metavar="MAP", help="the labels' values or segment names → the model's classes (names or values), e.g. \"3:left lung,5:ribs\" "
                       "(default: segments by name, label values by class value); background 0 maps to no class")


def cases_from_options(args: argparse.Namespace, for_training: bool):
    """``(primary cases, validation cases, description)`` from the data options."""
    from UNetSegmentationLib.training.cases import Case, case_name, cases_from_datalist, cases_from_folders, check_files, split_fold

    sources = [name for name, given in (("--datalist", args.datalist), ("--images", args.images or args.labels), ("--image", args.image or args.label)) if given]
    if len(sources) != 1:
        raise UserError("give the data as exactly one of --datalist JSON, --images DIR --labels DIR, or --image FILE --label FILE" + (f" (got {', '.join(sources)})" if sources else ""))
    validation = []
    if not for_training and args.fold is not None and not args.datalist:
        raise UserError(f"--fold {args.fold} picks the cases of a --datalist by their 'fold'; give a --datalist")
    if args.datalist:
        section = "training" if for_training else (args.section or ("training" if args.fold is not None else "validation"))
        cases = cases_from_datalist(args.datalist, section, args.data_root)
        if for_training:
            validation = cases_from_datalist(args.datalist, "validation", args.data_root, required=False)
        description = {"source": "datalist", "datalist": Path(args.datalist).name}
        if for_training and getattr(args, "fold", None) is not None:
            if validation:
                raise UserError(f"--fold {args.fold}: the datalist already has a 'validation' list; leave out one or the other")
            cases, validation = split_fold(cases, args.fold, f"datalist {args.datalist}")
            description["fold"] = args.fold
        elif args.fold is not None:  # evaluate: that fold's cases only
            cases = split_fold(cases, args.fold, f"datalist {args.datalist} ({section})", held_out_only=True)[1]
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

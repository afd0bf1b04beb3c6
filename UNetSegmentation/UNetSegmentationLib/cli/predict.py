"""``unetseg predict`` (one volume, or a cohort with ``--output-dir``: :mod:`.cohort`) and ``unetseg demo`` (the bundled model on the slicerio chest CT)."""

from __future__ import annotations

import argparse
from pathlib import Path

from UNetSegmentationLib.cli.cohort import add_cohort_options, check_single_volume_options, predict_cohort
from UNetSegmentationLib.cli.models import add_model_options, metadata_from_options
from UNetSegmentationLib.model.bundled import BUNDLED_SHORT_NAME, checkpoint_path
from UNetSegmentationLib.inference.options import BACKENDS, DEFAULTS, PRECISIONS, SPACING_CHOICES, SegmentationOptions, axis_name
from UNetSegmentationLib.protocol.reporters import PROGRESS_MODES


def command_predict(args: argparse.Namespace) -> int:
    if args.output_dir is not None or len(args.paths) != 2:  # a cohort: several inputs, a folder, a glob, a datalist or a CSV
        return predict_cohort(args)
    check_single_volume_options(args)
    options = SegmentationOptions.from_namespace(args)
    plain_metadata = metadata_from_options(args) if args.arch else None
    from UNetSegmentationLib.inference.predict_file import predict_file  # label map, .seg.nrrd or DICOM SEG; --series picks a DICOM series

    predict_file(args.input, args.output, args.checkpoint, options, args.reporter, plain_metadata, series_uid=args.series)
    return 0


class _InputsAndOutput(argparse.Action):
    """``INPUT OUTPUT`` (one volume: ``input`` and ``output``) or ``INPUT... --output-dir DIR`` (a cohort: ``paths``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.paths = list(values)
        namespace.input = values[0]
        namespace.output = values[1] if len(values) == 2 else None


def command_demo(args: argparse.Namespace) -> int:
    from UNetSegmentationLib.cli.demo import run_demo

    return run_demo(Path(args.output_dir), args.reporter)


def add_commands(commands) -> None:
    """Register these subcommands on the ``unetseg`` parser."""
    predict = commands.add_parser("predict", help="segment a volume, or a cohort of volumes (--output-dir)")
    predict.add_argument("--checkpoint", default=BUNDLED_SHORT_NAME, type=checkpoint_path, metavar="CKPT",
                         help=f".safetensors checkpoint (or a .pt/.pth state dict with --arch ...); default '{BUNDLED_SHORT_NAME}': the bundled model")
    predict.add_argument("--depth", help="UNet++: prune depth 1..4 (default: the checkpoint's recommended depth) or 'accurate' (mean of all heads)")
    predict.add_argument("--device", default=DEFAULTS.device, help="auto (CUDA when available), cpu, cuda, cuda:N")
    predict.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="slices per network call (default %(default)s)")
    predict.add_argument("--axis", default=axis_name(DEFAULTS.axis), help="image axis to slice along: auto (closest to superior-inferior), i, j or k")
    predict.add_argument("--probabilities", metavar="PATH", help="also write the probability of the chosen label per voxel (.nrrd/.nii.gz/.mha)")
    predict.add_argument("--progress", choices=PROGRESS_MODES, default="bar", help="progress bar on stderr, JSON lines on stdout, or nothing")
    predict.add_argument("--largest-component", action="store_true", help="keep only the largest 3D connected component of each label")
    predict.add_argument("--no-cgm", action="store_true", help="UNet 3+: do not blank slices its classification-guided module judges empty")
    predict.add_argument("--overwrite", action="store_true", help="replace existing output files")
    predict.add_argument(
        "--spacing",
        choices=SPACING_CHOICES,
        default=DEFAULTS.spacing,
        help="model: segment each slice at the model's in-plane spacing (resampled there, probabilities resampled back onto the input's grid) with 2.5D neighbours at the model's slice distance in mm; native: on the input's voxel grid as it is",
    )
    predict.add_argument("--no-crop", action="store_true", help="run the network on whole slices, not only on the body's bounding box")
    predict.add_argument("--review-list", metavar="FILE", help="write every slice ranked by the model's uncertainty, most uncertain first (.json or .csv)")
    predict.add_argument("--compress", metavar="LEVEL", default="auto", help="gzip level of NRRD outputs: auto (measured: ITK's default for label maps, 1 for --probabilities), none, or 1-9")
    speed = predict.add_argument_group("speed (see BENCHMARKS.md)")
    speed.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULTS.backend,
        help="auto: ONNX Runtime on the CPU when installed (pip install 'UNetSegmentationLib[onnx]'; the export is cached next to the checkpoint), else PyTorch",
    )
    speed.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULTS.precision,
        help=(
            "auto: bf16 autocast where the hardware has it (CUDA; CPUs with AVX512-BF16/AMX), else float32; bf16 agrees with fp32 on >=99%% of labels. "
            "int8 (CPU, ONNX Runtime): the network quantised for each volume, calibrated on 8 of its slices and checked against float32 on 8 others "
            "(falls back to float32 below 99%% label agreement); pays for wide networks only (1.5-1.6x on UNet++ L4 32..512, no gain on the small bundled model)"
        ),
    )
    speed.add_argument("--threads", type=int, help="CPU threads for the network in all (default: one per core)")
    speed.add_argument(
        "--slice-workers",
        type=int,
        metavar="N",
        help="CPU: slices computed at the same time, each on threads/N threads (default 2: faster than one slice on all threads)",
    )
    add_model_options(predict, for_plain_torch=True)
    predict.add_argument("--series", metavar="UID", help="the DICOM series to segment in a folder holding several (they are listed when it is ambiguous)")
    add_cohort_options(predict)
    predict.add_argument(
        "paths",
        nargs="+",
        action=_InputsAndOutput,
        metavar="PATH",
        help=(
            "INPUT OUTPUT: a volume file (.nrrd, .nii, .nii.gz, .mha, .mhd) or DICOM series folder, and its label map (.nrrd, .nii, .nii.gz, .mha), "
            "Slicer segmentation (.seg.nrrd) or, for a DICOM series, DICOM SEG (.dcm); or INPUT... --output-dir DIR: a cohort (folders, globs, datalists, CSVs)"
        ),
    )
    predict.set_defaults(run=command_predict)

    demo = commands.add_parser("demo", help="segment the chest CT shipped with slicerio using the bundled model")
    demo.add_argument("--output-dir", default="unetseg-demo", help="where to write the segmentation and the overlay PNG")
    demo.add_argument("--progress", choices=PROGRESS_MODES, default="bar")
    demo.set_defaults(run=command_demo)
